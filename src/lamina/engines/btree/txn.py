"""Transactions and tables: snapshot reads, the single writer, and commit.

Concurrency contract:

* A :class:`ReadTxn` sees the snapshot that was current when it began, for as long as it is
  open, whatever writers in any process do meanwhile: it pins its snapshot txnid in a reader
  slot of the lock file, so no writer reuses a page that snapshot can reach.
* One :class:`WriteTxn` at a time across all processes (the lock file's btree writer lock).
  Its changes are invisible to everyone else until :meth:`WriteTxn.commit` publishes them.
* A transaction, its tables and cursors belong to one thread.
"""

from __future__ import annotations

import contextlib
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from lamina.core.catalog import ENGINE_BTREE, ENGINE_CODES, CatalogEntry
from lamina.core.failpoints import failpoint
from lamina.core.lockfile import LockFile, Slot
from lamina.core.names import validate_table_name
from lamina.core.table_locks import TableBackupLock, table_backup_lock
from lamina.engines.btree import format as btree_format
from lamina.engines.btree import tree
from lamina.engines.btree.cursor import Cursor, bytes_arg
from lamina.engines.btree.freelist import PageSpace, decode_free_value
from lamina.engines.btree.page import (
    Branch,
    Leaf,
    OverflowRef,
    Value,
    decode_node,
    page_hash,
    verify_header,
)
from lamina.engines.btree.page_runs import iter_page_runs
from lamina.errors import (
    AlreadyExistsError,
    CorruptionError,
    ReadOnlyError,
    TableNotFoundError,
    TransactionClosedError,
    UsageError,
)

if TYPE_CHECKING:
    from types import TracebackType

    from lamina.engines.btree.pager import Pager


class ReadTxn:
    """A read-only snapshot. Use as a context manager or call :meth:`close`.

    Attributes: ``txnid`` and ``commit_seq`` of the snapshot, ``root_hash`` (the Merkle
    root authenticating every table), ``meta`` (the decoded meta record). Any use after
    close raises TransactionClosedError.
    """

    readonly = True

    def __init__(self, pager: Pager, meta: btree_format.Meta, slot: Slot | None) -> None:
        self._pager = pager
        self._slot = slot
        self.meta = meta
        self.txnid = meta.txnid
        self.commit_seq = meta.commit_seq
        self.root_hash = meta.root_hash
        self._closed = False
        self._load = self._pager.node
        self._catalog = tree.TreeState(meta.catalog)
        self._states: dict[str, tuple[CatalogEntry, tree.TreeState]] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> ReadTxn:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """End the transaction and unpin its snapshot (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    @property
    def closed(self) -> bool:
        """True once the transaction ended."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise TransactionClosedError("transaction already ended")

    # ---------------------------------------------------------------- catalog
    def catalog(self) -> list[CatalogEntry]:
        """Every table of the snapshot (both engines), ordered by name."""
        self._check_open()
        return [CatalogEntry.decode(k, _plain(v)) for k, v in
                tree.iter_items(self._load, self._catalog)]

    def catalog_get(self, name: str) -> CatalogEntry | None:
        """The catalog entry of ``name``, or None."""
        self._check_open()
        raw = tree.lookup(self._load, self._catalog, name.encode("utf-8"))
        if raw is None:
            return None
        return CatalogEntry.decode(name.encode("utf-8"), _plain(raw))

    def table(self, name: str) -> Table:
        """The btree table ``name``; TableNotFoundError if absent, UsageError if the table
        belongs to another engine."""
        self._check_open()
        got = self._states.get(name)
        if got is None:
            entry = self.catalog_get(name)
            if entry is None:
                raise TableNotFoundError(f"no table {name!r}")
            if entry.engine != ENGINE_BTREE:
                raise UsageError(f"table {name!r} is an {entry.engine} table, not btree")
            desc = btree_format.RootDesc.decode(entry.state, f"table {name!r}")
            got = (entry, tree.TreeState(desc))
            self._states[name] = got
        return Table(self, got[0], got[1])

    # ---------------------------------------------------------------- values
    def _page(self, pgno: int, txnid: int) -> bytes:
        return self._pager.read(pgno)

    def _read_value(self, ref: OverflowRef) -> bytes:
        """Read and verify an overflow value (length, page checksums, value hash)."""
        self._check_open()
        parts: list[bytes] = []
        pgno = ref.pgno
        path = self._pager.path
        if not btree_format.overflow_ref_valid(ref.length, ref.npages, self._pager.page_size):
            raise CorruptionError(f"overflow reference of {ref.length} bytes names "
                                  f"{ref.npages} pages", path=path, where=f"page {ref.pgno}")
        for _ in range(ref.npages):
            page = self._page(pgno, ref.txnid)
            _t, ptype, _f, _n, aux, nxt = verify_header(page, pgno, ref.txnid, path)
            if ptype != btree_format.PAGE_OVERFLOW or aux > len(page) - btree_format.HEADER_SIZE:
                raise CorruptionError("bad overflow page", path=path, where=f"page {pgno}")
            parts.append(page[btree_format.HEADER_SIZE:btree_format.HEADER_SIZE + aux])
            pgno = nxt
        value = b"".join(parts)
        if len(value) != ref.length or tree_hash(value) != ref.hash:
            raise CorruptionError("overflow value length or hash mismatch", path=path,
                                  where=f"page {ref.pgno}")
        return value

    # ---------------------------------------------------------------- backup support
    def free_pages(self) -> set[int]:
        """Page numbers free in this snapshot (its free-list records)."""
        self._check_open()
        free: set[int] = set()
        for _k, v in tree.iter_items(self._load, tree.TreeState(self.meta.freelist)):
            free.update(decode_free_value(_plain(v)))
        return free

    def iter_pages(self, free: set[int] | None = None) -> Iterator[tuple[int, bytes]]:
        """Every allocated, non-free page of the snapshot in page order, as (pgno, bytes).

        Meta pages (0, 1) are not included: the snapshot's meta record is ``meta.encode()``.
        The snapshot stays pinned while the transaction is open, so the bytes are exactly
        the snapshot's. ``free`` is this snapshot's :meth:`free_pages` if the caller already
        has it (a backup needs the count before the pages), so it is not read twice.
        """
        if free is None:
            free = self.free_pages()
        for pgno in range(btree_format.FIRST_DATA_PAGE, self.meta.total_pages):
            if pgno not in free:
                self._check_open()
                yield pgno, self._pager.read(pgno)

    def iter_page_runs(self, free: set[int], max_pages: int) -> Iterator[tuple[int, bytes]]:
        """The pages of :meth:`iter_pages` in runs of consecutive page numbers (at most
        ``max_pages`` each), as (first pgno, bytes), every page verified (checksum, page
        number): :func:`lamina.engines.btree.page_runs.iter_page_runs`. Raises
        CorruptionError naming a damaged page, StorageError."""
        return iter_page_runs(self._pager.read_run, self.meta.total_pages, free,
                              self.meta.page_size, self._pager.path, max_pages=max_pages,
                              check=self._check_open)

    def walk_changed_pages(self, since_txnid: int) -> Iterator[tuple[int, bytes]]:
        """Every page of the snapshot written by a transaction newer than ``since_txnid``,
        as (pgno, bytes), found by walking from the roots and descending only into children
        (and overflow chains) whose recorded txnid is newer. Cost O(changed pages).
        Includes the catalog, every btree table and the free-list tree."""
        self._check_open()
        stack: list[tuple[int, int, int]] = []  # (pgno, txnid, kind 0 tree / 1 catalog)
        for desc, kind in ((self.meta.catalog, 1), (self.meta.freelist, 0)):
            if desc.pgno and desc.txnid > since_txnid:
                stack.append((desc.pgno, desc.txnid, kind))
        while stack:
            pgno, txnid, kind = stack.pop()
            self._check_open()
            page = self._pager.read(pgno)
            if (kind == 0 and len(page) > 21 and page[20] == btree_format.PAGE_LEAF
                    and not page[21] & 1):
                # A tree leaf without overflow values references nothing: verifying its
                # header (checksum, page number, txnid) is enough; decoding it is not needed.
                verify_header(page, pgno, txnid, self._pager.path)
                yield pgno, page
                continue
            # Decode the bytes just read (checksum, page number and txnid are verified):
            # one read per page, whether or not the node cache holds it.
            node = decode_node(page, pgno, txnid, self._pager.path)
            yield pgno, page
            if isinstance(node, Branch):
                for kid in reversed(node.kids):
                    assert type(kid) is tuple
                    if kid[1] > since_txnid:
                        stack.append((kid[0], kid[1], kind))
                continue
            assert isinstance(node, Leaf)
            for key, v in zip(node.keys, node.vals):
                if isinstance(v, OverflowRef):
                    if v.txnid > since_txnid:
                        yield from self._overflow_pages(v)
                elif kind == 1:
                    entry = CatalogEntry.decode(key, v)
                    if entry.engine == ENGINE_BTREE:
                        d = btree_format.RootDesc.decode(entry.state, f"table {entry.name!r}")
                        if d.pgno and d.txnid > since_txnid:
                            stack.append((d.pgno, d.txnid, 0))

    def _overflow_pages(self, ref: OverflowRef) -> Iterator[tuple[int, bytes]]:
        pgno = ref.pgno
        for _ in range(ref.npages):
            page = self._pager.read(pgno)
            _t, _p, _f, _n, _aux, nxt = verify_header(page, pgno, ref.txnid, self._pager.path)
            yield pgno, page
            pgno = nxt

    def _writable(self) -> PageSpace:
        raise ReadOnlyError("write through a read transaction")


def tree_hash(value: bytes) -> bytes:
    """blake2b-128 of a value (overflow values are authenticated by it)."""
    return page_hash(value)


def _plain(v: Value) -> bytes:
    if type(v) is not bytes:
        raise CorruptionError("an engine record is stored as an overflow value")
    return v


class WriteTxn(ReadTxn):
    """The single write transaction. As a context manager it commits on normal exit and
    aborts on an exception. Holding it blocks other writers (all processes), never readers.
    """

    readonly = False

    def __init__(self, pager: Pager, meta: btree_format.Meta, space: PageSpace,
                 lockfile: LockFile, *, sync: bool, on_failed: Callable[[str], None]) -> None:
        """Created by ``BtreeStore.begin_write`` with the writer lock of ``lockfile`` held
        (released when the transaction ends). ``sync``: the store's meta-sync setting;
        ``on_failed(why)``: called when a failed meta write cannot be undone (the store
        then stops every writer)."""
        super().__init__(pager, meta, None)
        self._lockfile = lockfile
        self._sync = sync
        self._on_failed = on_failed
        self._space = space
        self._load = space.load
        self._free = tree.TreeState(meta.freelist)
        self._next_table_id = meta.next_table_id
        self._created: set[str] = set()
        self._modified: set[str] = set()
        self._dirty = False
        self.new_txnid = space.txnid
        #: How long a first write to a table waits while a default backup driver holds the
        #: table (then LockedError); ``Database.write`` sets the database's lock timeout.
        self.table_lock_timeout: float | None = 5.0
        # Backup locks of the tables this transaction changed, held shared until it ends.
        self._backup_locks: dict[int, TableBackupLock] = {}

    def __enter__(self) -> WriteTxn:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._closed:
            return
        if t is None:
            self.commit()
        else:
            self.abort()

    @property
    def dirty(self) -> bool:
        """True if the transaction changed anything (commit will write)."""
        return self._dirty

    def _writable(self) -> PageSpace:
        self._check_open()
        return self._space

    def _page(self, pgno: int, txnid: int) -> bytes:
        if txnid == self._space.txnid:
            return self._space.own_page(pgno)
        return self._pager.read(pgno)

    # ---------------------------------------------------------------- catalog changes
    def _put_entry(self, entry: CatalogEntry) -> None:
        tree.insert(self._space, self._catalog, entry.name.encode("utf-8"), entry.encode_value())

    def create_table(self, name: str, engine: str = ENGINE_BTREE, *,
                     table_id: int | None = None) -> CatalogEntry:
        """Create a table (either engine) with a new table id. Its ``created_seq`` becomes
        this transaction's commit seq at commit (0 in the entry returned now).

        ``table_id`` (for restores, which keep the source's ids) uses that id instead of the
        next one; later tables get ids above it. Raises AlreadyExistsError (name or id in
        use), InvalidNameError, UsageError (unknown engine, id out of range)."""
        self._writable()
        validate_table_name(name)
        if engine not in ENGINE_CODES:
            raise UsageError(f"unknown engine {engine!r}")
        if self.catalog_get(name) is not None:
            raise AlreadyExistsError(f"table {name!r} already exists")
        if table_id is None:
            table_id = self._next_table_id
        elif not 0 < table_id < 2**32:
            raise UsageError(f"table id must be in 1..{2**32 - 1}, not {table_id}")
        elif table_id < self._next_table_id and any(
                e.table_id == table_id for e in self.catalog()):
            raise AlreadyExistsError(f"table id {table_id} is already in use")
        state = btree_format.EMPTY_ROOT.encode() if engine == ENGINE_BTREE else b""
        entry = CatalogEntry(name, engine, table_id, 0, state)
        self._next_table_id = max(self._next_table_id, table_id + 1)
        self._put_entry(entry)
        self._created.add(name)
        self._states.pop(name, None)
        self._dirty = True
        return entry

    def drop_table(self, name: str) -> CatalogEntry:
        """Remove a table from the catalog, freeing a btree table's pages; returns the
        removed entry. Raises TableNotFoundError."""
        space = self._writable()
        entry = self.catalog_get(name)
        if entry is None:
            raise TableNotFoundError(f"no table {name!r}")
        self._lock_table(entry.table_id, name)
        if entry.engine == ENGINE_BTREE:
            got = self._states.get(name)
            st = got[1] if got else tree.TreeState(btree_format.RootDesc.decode(entry.state))
            tree.free_tree(space, st)
        tree.delete(space, self._catalog, name.encode("utf-8"))
        self._states.pop(name, None)
        self._created.discard(name)
        self._modified.discard(name)
        self._dirty = True
        return entry

    # ---------------------------------------------------------------- end
    def abort(self) -> None:
        """Discard every change and release the writer lock (idempotent)."""
        if self._closed:
            return
        self._end()

    def _end(self) -> None:
        self._closed = True
        # After the commit published (or the abort): a default backup driver waiting for
        # these tables may now freeze them.
        locks, self._backup_locks = self._backup_locks, {}
        try:
            for lock in locks.values():
                lock.release_shared()
        finally:
            self._lockfile.btree_writer.release()

    def _lock_table(self, table_id: int, name: str) -> None:
        """Hold table ``table_id``'s backup lock shared until this transaction ends (taken
        at its first change of the table). Waits ``table_lock_timeout`` while a default
        backup driver holds it, then raises LockedError; one ``fcntl`` call otherwise."""
        if table_id in self._backup_locks:
            return
        lock = table_backup_lock(self._lockfile, table_id)
        lock.acquire_shared(self.table_lock_timeout, f"table {name!r}")
        self._backup_locks[table_id] = lock

    def commit(self) -> int:
        """Make the changes durable and visible; returns this commit's seq.

        A transaction that changed nothing writes nothing and returns the snapshot's
        ``commit_seq`` unchanged. Raises TransactionClosedError if already ended,
        StorageError on I/O failure (the transaction is then aborted; the database keeps
        its previous state). Always ends the transaction.
        """
        self._check_open()
        try:
            if not self._dirty:
                return self.commit_seq
            return self._do_commit()
        finally:
            self._end()

    def _do_commit(self) -> int:
        lf = self._lockfile
        pager = self._pager
        sp = self._space
        with contextlib.ExitStack() as publishing:
            seq: int | None = None
            if self._created:
                # created_seq must equal this commit's seq: take it before serializing.
                publishing.enter_context(lf.publishing_commit())
                seq = lf.next_commit_seq()
                for name in sorted(self._created):
                    entry = self.catalog_get(name)
                    assert entry is not None
                    self._put_entry(CatalogEntry(entry.name, entry.engine, entry.table_id,
                                                 seq, entry.state))
            for name in sorted(self._modified):
                _entry, st = self._states[name]
                desc = tree.serialize(sp, st, sp.alloc)
                current = self.catalog_get(name)
                assert current is not None
                self._put_entry(current.with_state(desc.encode()))
            catalog = tree.serialize(sp, self._catalog, sp.alloc)
            reserved = sp.settle(self._free)
            freelist = tree.serialize(sp, self._free, reserved.pop)
            assert not reserved
            failpoint("btree.before_page_write")
            pager.write_pages(sp.pending)
            pager.ensure_size(sp.next_pgno)
            failpoint("btree.after_page_write")
            # Always: a meta must never reach the disk before the pages it points at. This
            # sync also makes the previous commit's (unsynced, sync=False) meta durable.
            pager.sync()
            failpoint("btree.after_data_sync")
            if seq is None:
                publishing.enter_context(lf.publishing_commit())
                seq = lf.next_commit_seq()
            meta = btree_format.Meta(pager.page_size, sp.txnid, seq, sp.txnid % 2,
                                     sp.next_pgno, self._next_table_id, catalog, freelist,
                                     time.time_ns())
            record = meta.encode()
            try:
                pager.write_meta(meta.slot, record)
                if self._sync:
                    pager.sync()
            except BaseException as exc:
                # The new meta may be on disk, valid, though the caller sees a failure: put
                # the previous one back in its slot, or no writer may go on (its txnid and
                # pages would be this one's).
                self._undo_meta(meta.slot, exc)
                raise
            lf.publish_btree_meta(record)
            lf.set_btree_meta_unsynced(not self._sync)
        failpoint("btree.after_meta_write")
        for ref, node in sp.new_nodes().items():
            pager.cache_put(ref, node.frozen())
        return seq

    def _undo_meta(self, slot: int, exc: BaseException) -> None:
        """After a failed meta write or sync: rewrite ``slot`` with the snapshot's meta (so
        the failed commit never happened) and sync it. If even that fails, mark the store
        failed for every process (see ``BtreeStore.begin_write``)."""
        m = self.meta
        previous = btree_format.Meta(m.page_size, m.txnid, m.commit_seq, slot, m.total_pages,
                                     m.next_table_id, m.catalog, m.freelist, m.commit_ns)
        try:
            self._pager.write_meta(slot, previous.encode())
            self._pager.sync()
        except BaseException:
            self._on_failed(f"a commit failed while writing its meta page ({exc}) "
                                    "and the previous meta could not be restored")

    def _touch(self, name: str) -> None:
        self._modified.add(name)
        self._dirty = True


class Table:
    """A btree table inside one transaction. Reads see the transaction's snapshot (plus its
    own writes in a write transaction); writes through a read transaction raise
    ReadOnlyError. Keys and values are bytes: every key, value, bound and prefix may be
    any bytes-like object (copied to ``bytes``); anything else, ``str`` included, raises
    UsageError naming the argument, whatever the table holds."""

    __slots__ = ("_entry", "_st", "_txn", "name")

    def __init__(self, txn: ReadTxn, entry: CatalogEntry, st: tree.TreeState) -> None:
        self._txn = txn
        self._entry = entry
        self._st = st
        self.name = entry.name

    @property
    def entry(self) -> CatalogEntry:
        """The table's catalog entry as of the transaction start (or creation)."""
        return self._entry

    # ---------------------------------------------------------------- reads
    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        """The value of ``key``, or ``default``."""
        txn = self._txn
        if txn._closed:
            raise TransactionClosedError("transaction already ended")
        if type(key) is not bytes:
            key = bytes_arg(key, "key", self.name)
        v = tree.lookup(txn._load, self._st, key)
        if v is None:
            return default
        return v if type(v) is bytes else txn._read_value(v)  # type: ignore[arg-type]

    def __contains__(self, key: bytes) -> bool:
        self._txn._check_open()
        if type(key) is not bytes:
            key = bytes_arg(key, "key", self.name)
        return tree.lookup(self._txn._load, self._st, key) is not None

    def __len__(self) -> int:
        """Number of keys (O(1): the root's subtree count)."""
        self._txn._check_open()
        return self._st.count

    def cursor(self) -> Cursor:
        """A new unpositioned cursor."""
        self._txn._check_open()
        return Cursor(self)

    def count(self, lo: bytes | None = None, hi: bytes | None = None) -> int:
        """Number of keys in ``[lo, hi)`` (None = unbounded), O(log n) via subtree counts."""
        self._txn._check_open()
        lo, hi = self._bound(lo, "lo"), self._bound(hi, "hi")
        load, st = self._txn._load, self._st
        a = 0 if lo is None else tree.rank(load, st, lo)
        b = st.count if hi is None else tree.rank(load, st, hi)
        return max(0, b - a)

    def items(self, start: bytes | None = None, stop: bytes | None = None, *,
              reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs with ``start <= key < stop`` in key order (or reversed).

        Safe to interleave with writes in a write transaction: iteration continues after
        the last key it returned.
        """
        self._txn._check_open()
        start, stop = self._bound(start, "start"), self._bound(stop, "stop")
        if reverse:
            return self._backward(start, stop)
        return self._forward(start, stop)

    def prefix(self, p: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs whose key starts with ``p``, in key order."""
        if type(p) is not bytes:
            p = bytes_arg(p, "prefix", self.name)
        return self.items(p, _prefix_end(p))

    def _bound(self, b: bytes | None, what: str) -> bytes | None:
        return b if b is None or type(b) is bytes else bytes_arg(b, what, self.name)

    def _forward(self, start: bytes | None, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        c = Cursor(self)
        st = self._st
        read = self._txn._read_value
        ok = c.first() if start is None else c.seek(start)
        while ok:
            leaf = c._leaf
            assert leaf is not None
            keys, vals, i = leaf.keys, leaf.vals, c._i
            ver = st.version
            end = len(keys)
            finished = False
            if stop is not None and keys[-1] >= stop:
                end = bisect_left(keys, stop, i)
                finished = True
            last = b""
            while i < end:
                last = keys[i]
                v = vals[i]
                yield last, (v if type(v) is bytes else read(v))  # type: ignore[arg-type]
                i += 1
                if st.version != ver:
                    break
            if st.version != ver:
                ok = c.seek(last)
                if ok and c.key() == last:
                    ok = c.next()
                if ok and stop is not None and c.key() >= stop:
                    return
                continue
            if finished:
                return
            c._i = end - 1
            ok = c.next()

    def _backward(self, start: bytes | None, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        c = Cursor(self)
        # Start at the last key < stop.
        ok = c.last() if stop is None or not c.seek(stop) else c.prev()
        while ok:
            k = c.key()
            if start is not None and k < start:
                return
            yield k, c.value()
            ok = c.prev()

    # ---------------------------------------------------------------- writes
    def put(self, key: bytes, value: bytes) -> None:
        """Insert or replace. Raises KeyTooLargeError, ValueTooLargeError, ReadOnlyError."""
        if type(key) is not bytes:
            key = bytes_arg(key, "key", self.name)
        if type(value) is not bytes:
            value = bytes_arg(value, "value", self.name)
        txn = self._txn
        space = txn._writable()
        txn._lock_table(self._entry.table_id, self.name)  # type: ignore[attr-defined]
        v = space.make_value(key, value)
        tree.insert(space, self._st, bytes(key), v)
        txn._touch(self.name)  # type: ignore[attr-defined]

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; returns whether it existed. Raises ReadOnlyError."""
        if type(key) is not bytes:
            key = bytes_arg(key, "key", self.name)
        txn = self._txn
        space = txn._writable()
        txn._lock_table(self._entry.table_id, self.name)  # type: ignore[attr-defined]
        if tree.delete(space, self._st, key):
            txn._touch(self.name)  # type: ignore[attr-defined]
            return True
        return False

    def bulk_load(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Load strictly increasing (key, value) pairs into this EMPTY table, building full
        pages bottom-up; returns the number loaded. UsageError if the table is not empty or
        the keys are not strictly increasing (the table is then left empty).

        Memory is bounded whatever the size: ``items`` is consumed as an iterator and each
        full page is written to the file at once (O(tree height) pages held), not kept
        until commit. Copy-on-write as any write: the pages are beyond the committed page
        count or free in the committed snapshot, so nothing is visible before
        :meth:`WriteTxn.commit` and an abort (or a crash) leaves the committed state
        intact (the pages stay free space)."""
        txn = self._txn
        space = txn._writable()
        txn._lock_table(self._entry.table_id, self.name)  # type: ignore[attr-defined]
        st = self._st
        if st.count or st.root is not None:
            raise UsageError(f"bulk_load needs an empty table; {self.name!r} has {st.count}")
        st.version += 1
        # Streaming: every full leaf, branch and overflow page goes to the file as it is
        # built (memory O(tree height) pages, whatever the size). Nothing is visible
        # before commit; if the load fails, its pages become reusable in this txn.
        with space.streaming():
            desc = tree.bulk_build(space, _bytes_pairs(items, self.name), space.alloc,
                                   space.make_value)
        st.root = None if desc.pgno == 0 else (desc.pgno, desc.txnid)
        st.root_hash = desc.hash
        st.count = desc.count
        st.depth = desc.depth
        txn._touch(self.name)  # type: ignore[attr-defined]
        return desc.count


def _bytes_pairs(items: Iterable[tuple[bytes, bytes]], table: str,
                 ) -> Iterator[tuple[bytes, bytes]]:
    """``items`` with each key and value checked by :func:`bytes_arg` (bulk_load)."""
    for pair in items:
        key, value = pair
        if type(key) is not bytes or type(value) is not bytes:
            pair = (bytes_arg(key, "key", table), bytes_arg(value, "value", table))
        yield pair


def _prefix_end(p: bytes) -> bytes | None:
    """Smallest key greater than every key starting with ``p`` (None: no such key)."""
    b = bytearray(p)
    while b:
        if b[-1] != 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return None

