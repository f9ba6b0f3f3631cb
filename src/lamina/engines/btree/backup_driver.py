"""The btree native backup driver ("at begin"): sends the VP snapshot's pages.

Every btree table, the catalog and the free list share one data file, so the driver sends
the whole page image of the validity point's (VP) snapshot on its *common* stream (local
stream 0) in the stream format of :mod:`lamina.engines.btree.stream`; the tables' own
streams stay empty.

How the snapshot is frozen without I/O and kept intact while writers go on:

* ``begin()`` takes a reader slot of the lock file (not pinning yet).
* ``lock()`` runs with the commit blocker held exclusively: it reads the last committed
  meta record from the lock file's shared memory (so it is exactly the VP's btree state),
  decodes it and publishes its txnid in the slot, kind ``SLOT_BACKUP``. Memory only, O(1)
  whatever the number of tables.
* Writers reuse a page freed at txnid *T* only when every slot pins a snapshot >= *T*
  (:mod:`lamina.engines.btree.freelist`), so no page of the pinned snapshot is overwritten
  until ``end()``/``cancel()`` clear the slot; ``get_data`` reads the pages after the VP.

Layers (incremental images, a ``base_txnid``): the same header (flag bit 0 set, the base
image's btree txnid) and trailer around only the pages written after the base:
``ReadTxn.walk_changed_pages(base_txnid)`` walks from the VP roots and descends only into
children whose recorded txnid is newer, so the pages read are the pages sent (plus nothing
but the catalog lookups of ``begin``), never a scan of the file. The pages are sent in page
order; the walk keeps up to :data:`LAYER_RETAIN_BYTES` of them in memory and re-reads the
rest from the pinned snapshot.

Concurrency: a driver is used by one thread (the kernel's). Writers in any process go on
while ``get_data`` runs; only ``lock()``/``unlock()`` run under the commit blocker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lamina.core.catalog import ENGINE_BTREE
from lamina.core.driver import AtBeginDriver, Buffer, DriverKind, Result, TableSpec
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.page import verify_header
from lamina.engines.btree.stream import (
    HEADER_SIZE,
    TRAILER_SIZE,
    encode_header,
    encode_trailer,
    new_pages_hasher,
)
from lamina.errors import (
    ChainError,
    CorruptionError,
    DataError,
    TableNotFoundError,
    UsageError,
)

if TYPE_CHECKING:
    from lamina.core.lockfile import LockFile, Slot
    from lamina.engines.btree.store import BtreeStore
    from lamina.engines.btree.txn import ReadTxn

#: Bytes of changed pages a layer backup keeps in memory between its walk (which must finish
#: before the header, since the header carries the page count) and sending them in page
#: order; pages beyond it are read a second time from the pinned snapshot.
LAYER_RETAIN_BYTES = 64 << 20

#: Bytes of consecutive pages a full backup reads, verifies and sends as one piece when
#: the kernel named no buffer size.
RUN_BYTES = 1 << 20

#: Tries at reading a published meta record that validates (a torn read retries).
META_TRIES = 1000


def read_published_meta(lockfile: LockFile) -> tuple[bytes, btree_format.Meta]:
    """The btree meta record published in ``lockfile``'s shared memory, raw and decoded.

    A record that fails its checksum (a read torn by a concurrent commit) is read again, up
    to :data:`META_TRIES` times. Memory only. Raises CorruptionError when no read validates.
    """
    for _ in range(META_TRIES):
        record = lockfile.btree_meta()
        try:
            return record, btree_format.Meta.decode(record, "published btree meta")
        except CorruptionError:
            continue
    raise CorruptionError("published btree meta record does not validate")


class PieceReader:
    """Hands out the pieces of a stream (an iterator of ``bytes``, read lazily) as buffers
    of at most ``cap`` bytes, whatever the pieces' sizes."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._piece: memoryview | None = None  # the unsent rest of the current piece

    def _next(self) -> memoryview | None:
        while self._piece is None or not len(self._piece):
            nxt = next(self._pieces, None)
            if nxt is None:
                self._piece = None
                return None
            self._piece = memoryview(nxt)
        return self._piece

    def fill(self, cap: int) -> tuple[bytes, bool]:
        """Up to ``cap`` bytes (fewer only at the end) and whether the stream is now
        exhausted (looked ahead: True with the final bytes). Raises what the iterator
        raises."""
        out = bytearray()
        while len(out) < cap:
            piece = self._next()
            if piece is None:
                break
            take = min(cap - len(out), len(piece))
            out += piece[:take]
            self._piece = piece[take:]
        return bytes(out), self._next() is None


class SlotOwner:
    """Mixin of the btree backup drivers that own a lock-file reader slot in ``_slot``."""

    _slot: Slot | None

    @property
    def slot_index(self) -> int | None:
        """Index of the lock-file slot this driver owns, or None (not begun / released)."""
        return None if self._slot is None else self._slot.index

    def _release_slot(self) -> None:
        """Release the slot, if owned (idempotent): clears the pin, so writers may reuse
        the snapshot's pages again."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()


class BtreeBackupDriver(SlotOwner, AtBeginDriver):
    """Sends the VP snapshot's pages on local stream 0 ("at begin": all of it after the VP).

    States: created -> begun (slot owned) -> locked (slot pins the VP txnid) -> sending ->
    done -> ended; ``cancel()`` from any state releases the slot. Errors are raised as
    LaminaError (the kernel cancels the driver and reports them).

    ``base_txnid`` (not None) makes it a layer driver: only pages whose txnid is newer are
    sent, found by :meth:`changed_pages`.
    """

    label = "btree"

    kind = DriverKind.AT_BEGIN

    def __init__(self, store: BtreeStore, tables: Sequence[TableSpec], *,
                 base_txnid: int | None = None) -> None:
        self._store = store
        self._base_txnid = base_txnid
        self._lockfile = store._lockfile
        self._tables = list(tables)
        self._buf_size = 0
        self._slot: Slot | None = None
        self._meta: btree_format.Meta | None = None
        self._txn: ReadTxn | None = None
        self._pieces: PieceReader | None = None
        self._done = False
        self.pages_sent = 0
        self._page_count = 0
        self._pages_hash = b""

    # ---------------------------------------------------------------- introspection
    @property
    def vp_meta(self) -> btree_format.Meta | None:
        """The meta record frozen by ``lock()`` (None before)."""
        return self._meta

    @property
    def pages_hash(self) -> bytes:
        """The trailer's xxh3-128 over the pages sent (b"" until the trailer was made)."""
        return self._pages_hash

    def stream_of(self, meta: btree_format.Meta) -> Iterator[bytes]:
        """The pieces (header, pages, trailer) of the stream of the snapshot ``meta``,
        read lazily; the *caller* pins that snapshot until it has read them (the "at end"
        driver composes two such streams, :mod:`lamina.engines.btree.at_end`). Afterwards
        ``pages_sent`` and ``pages_hash`` describe what was sent; :meth:`close_snapshot`
        ends the read. Raises as :meth:`get_data`."""
        self._meta = meta
        return self._generate()

    def close_snapshot(self) -> None:
        """End the read of :meth:`stream_of` (idempotent; unpins nothing)."""
        self._close_txn()

    # ---------------------------------------------------------------- protocol
    def begin(self, buf_size: int) -> Result:
        """Own a reader slot (pinning happens in ``lock()``). Raises LockedError when every
        slot is in use."""
        self._buf_size = buf_size
        self._slot = self._lockfile.acquire_slot()
        return Result.OK

    def prelock(self) -> Result:
        """Nothing to prepare: READY."""
        return Result.READY

    def lock(self) -> Result:
        """Freeze the VP: decode the published meta and pin its txnid. Memory only.

        With the commit blocker held the record cannot change under us; without it (a
        caller driving the driver by hand) a torn read fails the checksum and is retried.
        """
        if self._slot is None:
            raise UsageError("btree backup driver: lock() before begin()")
        _record, meta = read_published_meta(self._lockfile)
        if meta.txnid:
            self._slot.set(meta.txnid, SLOT_BACKUP)
        # txnid 0 is a never-written file (meta pages only): there is nothing to pin.
        self._meta = meta
        return Result.OK

    def pin_facts(self) -> dict[str, Any] | None:
        """The frozen VP meta record (hex): all :meth:`relock` needs. None before lock()."""
        return None if self._meta is None else {"meta": self._meta.encode().hex()}

    def relock(self, facts: Mapping[str, Any]) -> Result:
        """Freeze the VP of an interrupted backup: decode its meta record and pin its txnid
        in this driver's slot. The caller's durable pin kept the snapshot's pages from
        reuse. Raises CorruptionError (facts that do not decode, or a snapshot newer than
        the database's), UsageError before ``begin()``."""
        if self._slot is None:
            raise UsageError("btree backup driver: relock() before begin()")
        raw = facts.get("meta") if isinstance(facts, Mapping) else None
        try:
            record = bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError:
            record = b""
        meta = btree_format.Meta.decode(record, "pinned btree meta")
        current = self._store.current_meta()
        if meta.txnid > current.txnid or meta.page_size != current.page_size:
            raise CorruptionError(f"the pinned btree snapshot (txnid {meta.txnid}) is not "
                                  f"one of this database's (txnid {current.txnid})")
        if meta.txnid:
            self._slot.set(meta.txnid, SLOT_BACKUP)
        self._meta = meta
        return Result.OK

    def unlock(self) -> Result:
        """Nothing to undo: OK."""
        return Result.OK

    def get_data(self, buffer: Buffer) -> Result:
        """Fill ``buffer`` (stream 0) with the next bytes of the stream; DONE with ``last``
        set on the final buffer. Raises CorruptionError if a snapshot page fails its
        checksum, TableNotFoundError if a table handed to the driver is not in the VP
        snapshot, StorageError on I/O failure."""
        if self._meta is None:
            raise UsageError("btree backup driver: get_data() before lock()")
        if self._done:
            raise UsageError("btree backup driver: get_data() after DONE")
        if self._pieces is None:
            self._pieces = PieceReader(self._generate())
        cap = min(buffer.capacity, self._buf_size or buffer.capacity)
        data, finished = self._pieces.fill(cap)
        buffer.stream = 0
        buffer.data = data
        if finished:  # looked ahead: mark the final buffer last
            buffer.last = True
            self._done = True
            self._close_txn()
            return Result.DONE
        return Result.OK

    def _generate(self) -> Iterator[bytes]:
        """Header, pages, trailer: the pieces of the stream, read lazily from the snapshot."""
        meta = self._meta
        assert meta is not None
        txn = self._txn = self._store.read_pinned(meta)
        self._check_tables(txn)
        if self._base_txnid is not None:
            yield from self._generate_layer(txn, meta, self._base_txnid)
            return
        free = txn.free_pages()
        count = sum(1 for p in free if btree_format.FIRST_DATA_PAGE <= p < meta.total_pages)
        self._page_count = meta.total_pages - btree_format.FIRST_DATA_PAGE - count
        yield encode_header(meta, self._page_count)
        hasher = new_pages_hasher()
        path = self._store.path
        ps = meta.page_size
        # Runs of one buffer, every page verified at the source (an image of a corrupt page
        # would not restore), hashed and sent as one piece.
        for _first, run in txn.iter_page_runs(free, max(1, (self._buf_size or RUN_BYTES) // ps)):
            hasher.update(run)
            self.pages_sent += len(run) // ps
            yield run
        if self.pages_sent != self._page_count:  # pragma: no cover - a bug, never data
            raise CorruptionError(f"sent {self.pages_sent} pages, expected {self._page_count}",
                                  path=path)
        self._pages_hash = hasher.digest()
        yield encode_trailer(self.pages_sent, self._pages_hash)

    def changed_pages(self, txn: ReadTxn, base_txnid: int) -> Iterator[tuple[int, bytes]]:
        """The pages of ``txn``'s snapshot written after ``base_txnid``, as (pgno, bytes), in
        any order, each once: the Merkle walk (cost O(pages yielded)). A subclass may find
        them another way (the benchmark's scan baseline)."""
        return txn.walk_changed_pages(base_txnid)

    def _generate_layer(self, txn: ReadTxn, meta: btree_format.Meta, base: int) -> Iterator[bytes]:
        """A layer stream: every page newer than ``base``, in page order.

        Raises ChainError when the base is newer than this snapshot (a base image from a
        later state, e.g. of a database this one was restored from).
        """
        if base > meta.txnid:
            raise ChainError(f"the base image's btree state (txnid {base}) is newer than this "
                             f"database's (txnid {meta.txnid}): it cannot be this layer's base")
        # The header carries the page count, so the walk finishes before anything is sent;
        # it keeps what fits the budget and re-reads the rest (the snapshot is pinned).
        found: dict[int, bytes | None] = {}
        budget = LAYER_RETAIN_BYTES
        path = self._store.path
        for pgno, page in self.changed_pages(txn, base):
            if pgno in found or not btree_format.FIRST_DATA_PAGE <= pgno < meta.total_pages:
                raise CorruptionError("the snapshot reaches a page twice or outside the file",
                                      path=path, where=f"page {pgno}")
            keep = budget >= len(page)
            found[pgno] = page if keep else None
            budget -= len(page) if keep else 0
        order = sorted(found)
        self._page_count = len(order)
        yield encode_header(meta, self._page_count, base_txnid=base)
        hasher = new_pages_hasher()
        pager = self._store._pager
        for pgno in order:
            kept = found.pop(pgno)
            if kept is None:
                page = pager.read(pgno)
                verify_header(page, pgno, None, path)
            else:
                page = kept
            hasher.update(page)
            self.pages_sent += 1
            yield page
        self._pages_hash = hasher.digest()
        yield encode_trailer(self.pages_sent, self._pages_hash)

    def _check_tables(self, txn: ReadTxn) -> None:
        for t in self._tables:
            entry = txn.catalog_get(t.name)
            if entry is None or entry.engine != ENGINE_BTREE or entry.table_id != t.table_id:
                raise TableNotFoundError(f"btree table {t.name!r} (id {t.table_id}) is not in "
                                         f"the snapshot of the validity point")

    def vp_info(self) -> BtreeVpFacts:
        """The VP's btree facts: the frozen meta's txnid, commit seq (of the last btree
        commit <= the VP), root hash, page size and total pages; the pages sent and their
        trailer hash; a layer adds the base txnid. Memory only. Raises UsageError before
        ``lock()``."""
        meta = self._meta
        if meta is None:
            raise UsageError("btree backup driver: vp_info() before lock()")
        return BtreeVpFacts.of_meta(meta, self.pages_sent, self._pages_hash,
                                    base_txnid=self._base_txnid)

    def _close_txn(self) -> None:
        if self._txn is not None:
            self._txn.close()
            self._txn = None

    def _release(self) -> None:
        self._close_txn()
        self._pieces = None
        self._release_slot()

    def size(self) -> int | None:
        """Estimate: total pages x page size of the VP snapshot (of the current one before
        the VP). A layer: None until its walk counted the pages, then their size. Memory
        only."""
        if self._base_txnid is not None:
            if self._pieces is None or self._meta is None:
                return None
            return self._page_count * self._meta.page_size + HEADER_SIZE + TRAILER_SIZE
        meta = self._meta
        if meta is None:
            try:
                meta = self._store.current_meta()
            except DataError:
                return None
        return meta.total_pages * meta.page_size + HEADER_SIZE + TRAILER_SIZE


__all__ = [
    "LAYER_RETAIN_BYTES",
    "META_TRIES",
    "RUN_BYTES",
    "BtreeBackupDriver",
    "PieceReader",
    "SlotOwner",
    "read_published_meta",
]
