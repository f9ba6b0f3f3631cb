"""Logical access to btree tables for the generic backup drivers (snapshot and default),
and the bulk loader their restore side writes through.

Implements :class:`lamina.backup.logical.LogicalProvider` structurally: it imports nothing
from the backup layer (:mod:`lamina.online` wires it to the generic drivers):

* :class:`BtreeSnapshotSource`: ``begin()`` owns a reader slot; ``pin()`` (inside the
  driver's ``lock()``, commit blocker held) decodes the published meta and pins its txnid
  as a *backup* slot — memory only, O(1). Rows are then read from that snapshot in key order
  while writers go on; the pin keeps every page it reaches from being reused.
* :class:`BtreeLockingSource`: per table, the table backup lock held exclusively
  (:mod:`lamina.core.table_locks`) makes the table's write transactions wait; rows are read
  from a snapshot begun after the lock was taken, which therefore holds the table exactly as
  at the VP.
* :func:`load_table`: one write transaction that (re)creates the table with its original
  table id and bulk-loads the rows into full pages (a fresh, compact tree), streaming them
  to the file (memory bounded whatever the table's size).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lamina.core.catalog import ENGINE_BTREE
from lamina.core.driver import TableSpec, require_engine
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.core.table_locks import HeldTableLocks
from lamina.engines.btree import format as btree_format
from lamina.errors import CorruptionError, TableNotFoundError, UsageError

if TYPE_CHECKING:
    from lamina.core.lockfile import Slot
    from lamina.engines.btree.store import BtreeStore
    from lamina.engines.btree.txn import ReadTxn




def _estimates(store: BtreeStore, tables: Sequence[TableSpec],
               ) -> dict[str, tuple[int, int]]:
    """(rows, bytes) per table from the current snapshot: O(1) row counts; bytes estimated
    as rows times the file's average bytes per key (no scan)."""
    out: dict[str, tuple[int, int]] = {}
    with store.begin_read() as txn:
        meta = txn.meta
        entries = [e for e in txn.catalog() if e.engine == ENGINE_BTREE]
        total_keys = sum(btree_format.RootDesc.decode(e.state).count for e in entries)
        per_key = (meta.total_pages * meta.page_size) // total_keys if total_keys else 0
        for t in tables:
            rows = len(_table(txn, t))
            out[t.name] = (rows, rows * per_key)
    return out


def _table(txn: ReadTxn, spec: TableSpec) -> Any:
    entry = txn.catalog_get(spec.name)
    if entry is None or entry.engine != ENGINE_BTREE or entry.table_id != spec.table_id:
        raise TableNotFoundError(f"btree table {spec.name!r} (id {spec.table_id}) is not in "
                                 f"the snapshot")
    return txn.table(spec.name)


class BtreeLogical:
    """The btree engine's :class:`~lamina.backup.logical.LogicalProvider`."""

    def __init__(self, store: BtreeStore) -> None:
        self.store = store

    def snapshot_source(self, tables: Sequence[TableSpec]) -> BtreeSnapshotSource:
        """A source reading ``tables`` from the snapshot pinned at the VP."""
        require_engine(tables, ENGINE_BTREE)
        return BtreeSnapshotSource(self.store, tables)

    def locking_source(self, tables: Sequence[TableSpec]) -> BtreeLockingSource:
        """A source reading ``tables`` under their table backup locks."""
        require_engine(tables, ENGINE_BTREE)
        return BtreeLockingSource(self.store, tables)


class BtreeSnapshotSource:
    """Rows of btree tables as of the VP snapshot (see the module doc). One thread."""

    def __init__(self, store: BtreeStore, tables: Sequence[TableSpec]) -> None:
        self.store = store
        self.tables = list(tables)
        self._slot: Slot | None = None
        self._meta: btree_format.Meta | None = None
        self._txn: ReadTxn | None = None
        self._estimates: dict[str, tuple[int, int]] = {}

    def begin(self) -> None:
        """Own a reader slot (pinned by :meth:`pin`) and note size estimates. Raises
        LockedError (every slot taken), TableNotFoundError."""
        self._slot = self.store._lockfile.acquire_slot()
        self._estimates = _estimates(self.store, self.tables)

    def pin(self) -> None:
        """Pin the published meta's txnid (commit blocker held): memory only, O(1)."""
        if self._slot is None:
            raise UsageError("btree snapshot source: pin() before begin()")
        meta = btree_format.Meta.decode(self.store._lockfile.btree_meta(), "published btree meta")
        if meta.txnid:
            self._slot.set(meta.txnid, SLOT_BACKUP)
        self._meta = meta

    def try_lock(self, spec: TableSpec) -> bool:
        """Not used by the snapshot driver: nothing to lock."""
        return True

    def unlock(self, spec: TableSpec) -> None:
        """Nothing to unlock."""

    def _snapshot(self) -> ReadTxn:
        if self._meta is None:
            raise UsageError("btree snapshot source: rows() before pin()")
        if self._txn is None:
            self._txn = self.store.read_pinned(self._meta)
        return self._txn

    def table_info(self, spec: TableSpec) -> dict[str, Any]:
        """Nothing is needed to recreate a btree table but its name and id."""
        return {}

    def rows(self, spec: TableSpec) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order from the VP snapshot. Raises TableNotFoundError (not
        in the snapshot), CorruptionError."""
        if self._meta is not None and self._meta.txnid == 0:
            raise TableNotFoundError(f"btree table {spec.name!r} is not in the snapshot")
        yield from _table(self._snapshot(), spec).items()

    def estimate(self, spec: TableSpec) -> tuple[int, int] | None:
        """(rows, bytes) noted by ``begin()``."""
        return self._estimates.get(spec.name)

    def facts(self) -> dict[str, Any]:
        """The VP snapshot's txnid, commit seq and page size."""
        m = self._meta
        if m is None:
            return {}
        return {"txnid": m.txnid, "commit_seq": m.commit_seq, "page_size": m.page_size}

    def close(self) -> None:
        """Unpin and release the slot (writers may reuse the snapshot's pages). Never
        raises."""
        txn, self._txn = self._txn, None
        if txn is not None:
            txn.close()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


class BtreeLockingSource:
    """Rows of btree tables read under their table backup locks (see the module doc)."""

    def __init__(self, store: BtreeStore, tables: Sequence[TableSpec]) -> None:
        self.store = store
        self.tables = list(tables)
        self._locks = HeldTableLocks(self.store._lockfile)
        self._estimates: dict[str, tuple[int, int]] = {}
        self._page_size = store.page_size

    def begin(self) -> None:
        """Note size estimates (one short read transaction). Raises TableNotFoundError."""
        self._estimates = _estimates(self.store, self.tables)

    def pin(self) -> None:
        """Nothing to pin: the locks freeze the tables."""

    def try_lock(self, spec: TableSpec) -> bool:
        """One non-blocking try for ``spec``'s backup lock, exclusive."""
        return self._locks.try_lock(spec.table_id)

    def unlock(self, spec: TableSpec) -> None:
        """Release ``spec``'s lock if held."""
        self._locks.unlock(spec.table_id)

    def table_info(self, spec: TableSpec) -> dict[str, Any]:
        """Nothing is needed to recreate a btree table but its name and id."""
        return {}

    def rows(self, spec: TableSpec) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) in key order from a snapshot begun now; the caller holds the lock,
        so no commit changed the table since the VP. Raises UsageError if not locked."""
        if not self._locks.holds(spec.table_id):
            raise UsageError(f"btree table {spec.name!r} read without its backup lock")
        with self.store.begin_read() as txn:
            yield from _table(txn, spec).items()

    def estimate(self, spec: TableSpec) -> tuple[int, int] | None:
        """(rows, bytes) noted by ``begin()``."""
        return self._estimates.get(spec.name)

    def facts(self) -> dict[str, Any]:
        """The page size of the source."""
        return {"page_size": self._page_size}

    def close(self) -> None:
        """Release every lock still held. Never raises."""
        self._locks.release_all()


def load_table(store: BtreeStore, spec: TableSpec, rows: Iterable[tuple[bytes, bytes]]) -> int:
    """(Re)create btree table ``spec`` (same name and id; a copy restored by another driver
    is replaced) and bulk-load ``rows`` (strictly increasing keys) in one transaction;
    returns the number of rows. Streams: ``rows`` is consumed as an iterator and every
    full page goes to the file as it is built (``Table.bulk_load``), so memory stays
    bounded whatever the table's size; nothing is visible (and a failure leaves nothing)
    before the commit. Raises CorruptionError (keys out of order),
    KeyTooLargeError (a key too long for this file's page size), AlreadyExistsError."""
    with store.begin_write(None) as txn:
        entry = txn.catalog_get(spec.name)
        if entry is not None:
            txn.drop_table(spec.name)
        txn.create_table(spec.name, ENGINE_BTREE, table_id=spec.table_id)
        try:
            return txn.table(spec.name).bulk_load(rows)
        except UsageError as exc:
            if "strictly increasing" in str(exc):
                raise CorruptionError(f"btree table {spec.name!r}: keys in the stream are "
                                      f"not strictly increasing") from exc
            raise


__all__ = ["BtreeLockingSource", "BtreeLogical", "BtreeSnapshotSource", "load_table"]
