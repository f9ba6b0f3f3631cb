"""Native online backup and restore of the btree data file ("at begin" driver).

Every btree table, the catalog and the free list share one data file, so the driver sends
the whole page image of the validity point's (VP) snapshot on its *common* stream (local
stream 0); the tables' own streams stay empty. Stream format: docs/format.md, "Btree native
backup stream"::

    header (256: magic, version, page size, total pages, page count, the VP meta record)
    page * N          every allocated, non-free page of the snapshot, in page order
    trailer (48: page count, blake2b-128 over the pages' blake2b-128 hashes)

How the snapshot is frozen without I/O and kept intact while writers go on:

* ``begin()`` takes a reader slot of the lock file (not pinning yet).
* ``lock()`` runs with the commit blocker held exclusively: it reads the last committed
  meta record from the lock file's shared memory (so it is exactly the VP's btree state),
  decodes it and publishes its txnid in the slot, kind ``SLOT_BACKUP``. Memory only, O(1)
  whatever the number of tables.
* Writers reuse a page freed at txnid *T* only when every slot pins a snapshot >= *T*
  (:mod:`lamina.engines.btree.freelist`), so no page of the pinned snapshot is overwritten
  until ``end()``/``cancel()`` clear the slot; ``get_data`` reads the pages after the VP.

The restore driver parses the stream incrementally (any buffer boundaries), checks every
page (checksum, page number, order, txnid), proves the Merkle tree while streaming (every
branch record's hash and txnid, the catalog's table roots, overflow chains, every page
referenced exactly once, the root hash against the meta and the VP facts) and writes the
pages at ``pgno * page_size``; ``end()`` writes the meta record into both meta slots and
syncs. With ``RestoreFlags.destination`` None it proves the same and writes nothing
(``lamina verify --deep``). Not proven while streaming: key order, subtree counts and
overflow value hashes (the checker that runs on the restored database proves those).

Layers (incremental images, ``BackupFlags.layer``): the same header (flag bit 0 set, the
base image's btree txnid) and trailer around only the pages written after the base:
``ReadTxn.walk_changed_pages(base_txnid)`` walks from the VP roots and descends only into
children whose recorded txnid is newer, so the pages read are the pages sent (plus nothing
but the catalog lookups of ``begin``), never a scan of the file. The pages are sent in page
order; the walk keeps up to :data:`LAYER_RETAIN_BYTES` of them in memory and re-reads the
rest from the pinned snapshot. Layer streams are restored only as part of a chain
(:mod:`lamina.engines.btree.layers`, :mod:`lamina.online.chain`).

Concurrency: a driver is used by one thread (the kernel's). Writers in any process go on
while ``get_data`` runs; only ``lock()``/``unlock()`` run under the commit blocker.
"""

from __future__ import annotations

import contextlib
import os
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from lamina.core import fileio
from lamina.core.catalog import ENGINE_BTREE, CatalogEntry
from lamina.core.driver import (
    AtBeginDriver,
    BackupDriver,
    BackupEngine,
    BackupFlags,
    Buffer,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
)
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.btree import format as F
from lamina.engines.btree.page import (
    Branch,
    Leaf,
    OverflowRef,
    decode_node,
    page_hash,
    verify_header,
)
from lamina.engines.btree.page import checksum as page_checksum
from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    DataError,
    DriverChoiceError,
    LaminaError,
    NotADatabaseError,
    NotFoundError,
    TableNotFoundError,
    UnsupportedError,
    UsageError,
    VersionError,
    storage_error,
)

if TYPE_CHECKING:
    from lamina.core.lockfile import Slot
    from lamina.engines.btree.store import BtreeStore
    from lamina.engines.btree.txn import ReadTxn

#: Version of the stream this build writes and the newest it reads (= engine ``version``).
STREAM_VERSION = 1
STREAM_MAGIC = b"LBTSTRM\x00"
TRAILER_MAGIC = b"LBTSEND\x00"

#: Stream header (256 bytes): magic[8], version u32, header size u32, page size u32,
#: flags u32, total pages u64, page count u64, base txnid u64, meta length u32, zero u32,
#: meta record[168], zero[24]; then xxh3_64 of the 248 bytes before it.
HEADER = struct.Struct(f"<8sIIIIQQQI4x{F.META_SIZE}s24x")
HEADER_CHECK = struct.Struct("<Q")
HEADER_SIZE = HEADER.size + HEADER_CHECK.size
assert HEADER_SIZE == 256

#: Trailer (48 bytes): magic[8], page count u64, pages hash[16], zero u64, xxh3_64 of 0..39.
TRAILER = struct.Struct("<8sQ16s8x")
TRAILER_CHECK = struct.Struct("<Q")
TRAILER_SIZE = TRAILER.size + TRAILER_CHECK.size
assert TRAILER_SIZE == 48

#: Header flag bit 0: a layer (incremental) stream: only pages newer than the base txnid.
FLAG_LAYER = 1

#: Bytes of changed pages a layer backup keeps in memory between its walk (which must finish
#: before the header, since the header carries the page count) and sending them in page
#: order; pages beyond it are read a second time from the pinned snapshot.
LAYER_RETAIN_BYTES = 64 << 20

#: Largest page count a stream may declare: page numbers are u32 in the file format.
MAX_PAGES = (1 << 32) - 1


def encode_header(meta: F.Meta, page_count: int, *, base_txnid: int | None = None) -> bytes:
    """The 256-byte stream header of ``meta``'s snapshot: a full stream, or with
    ``base_txnid`` a layer stream (flag bit 0) of the pages newer than that txnid."""
    flags, base = (0, 0) if base_txnid is None else (FLAG_LAYER, base_txnid)
    body = HEADER.pack(STREAM_MAGIC, STREAM_VERSION, HEADER_SIZE, meta.page_size, flags,
                       meta.total_pages, page_count, base, F.META_SIZE, meta.encode())
    return body + HEADER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


def base_txnid_of(facts: Mapping[str, Any] | None) -> int:
    """The btree txnid at the base image's VP, from that image's btree VP facts.

    Raises ChainError when the facts lack a valid ``txnid`` (the base image has no btree
    driver data, so no layer can be taken on it).
    """
    txnid = None if facts is None else facts.get("txnid")
    if not isinstance(txnid, int) or isinstance(txnid, bool) or txnid < 0:
        raise ChainError("the base image records no btree txnid at its validity point, so "
                         "a layer cannot be taken on it")
    return txnid


def encode_trailer(page_count: int, pages_hash: bytes) -> bytes:
    """The 48-byte trailer: page count and blake2b-128 over the pages' hashes."""
    body = TRAILER.pack(TRAILER_MAGIC, page_count, pages_hash)
    return body + TRAILER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


def write_meta_file(fd: int, path: Path, meta: F.Meta) -> None:
    """Extend the data file at ``fd`` to ``meta``'s page count (sparse), sync its pages,
    write ``meta`` into both meta slots (slot fields 0 and 1, same txnid) and sync again:
    the pages are durable before any meta names them. Raises StorageError."""
    ps = meta.page_size
    if fileio.file_size(fd) < meta.total_pages * ps:
        fileio.truncate(fd, meta.total_pages * ps, path)
    fileio.fdatasync(fd, path)
    for slot in (0, 1):
        copy = F.Meta(ps, meta.txnid, meta.commit_seq, slot, meta.total_pages,
                      meta.next_table_id, meta.catalog, meta.freelist, meta.commit_ns)
        rec = copy.encode()
        fileio.pwrite(fd, rec + bytes(ps - len(rec)), slot * ps, path)
    fileio.fsync(fd, path)


def new_pages_hasher() -> Any:
    """The running hash of a stream's pages, stored in its trailer: XXH3-128 over the page
    bytes in stream order. A fast end-to-end check of the pages as sent; the proof that
    they are the VP's pages is the Merkle tree (page hashes in the branch entries and the
    root hash), which the restore checks."""
    return xxhash.xxh3_128()


# ====================================================================== backup side
class BtreeBackupEngine(BackupEngine):
    """Backup engine of the btree data file (``name = "btree"``, ``version = 1``).

    ``store`` is the open store to back up; restore-only users (no open database) pass
    None, and then :meth:`get_backup` raises UsageError.
    """

    name = "btree"
    version = STREAM_VERSION

    def __init__(self, store: BtreeStore | None = None) -> None:
        self.store = store

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (all btree tables). Holds no resources until ``begin``.

        With ``flags.layer`` the driver sends a layer: the pages newer than the base image's
        btree txnid (``flags.base_vp_info["txnid"]``). Raises UsageError (no store),
        DriverChoiceError (a table of another engine), ChainError (a layer whose base facts
        lack the txnid).
        """
        if self.store is None:
            raise UsageError("this btree backup engine has no open store to back up")
        for t in tables:
            if t.engine != ENGINE_BTREE:
                raise DriverChoiceError(f"table {t.name!r} is an {t.engine} table; the btree "
                                        "driver backs up btree tables only")
        if flags.layer:
            return BtreeBackupDriver(self.store, tables,
                                     base_txnid=base_txnid_of(flags.base_vp_info))
        return BtreeBackupDriver(self.store, tables)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for a stream of ``version``. Raises VersionError (newer than
        ours), ChainError (a layer: it is restored only with its chain, by
        :mod:`lamina.online.chain`), DriverChoiceError (a non-btree table)."""
        if version > self.version:
            raise VersionError(f"btree backup data version {version}; this build reads up "
                               f"to {self.version}")
        if flags.layer:
            raise ChainError("a layer image holds only what changed after its base: restore "
                             "it with its chain (lamina restore FULL LAYER... --to DEST)")
        for t in tables:
            if t.engine != ENGINE_BTREE:
                raise DriverChoiceError(f"table {t.name!r} is an {t.engine} table, not btree")
        return BtreeRestoreDriver(tables, flags)


class BtreeBackupDriver(AtBeginDriver):
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
        self._meta: F.Meta | None = None
        self._txn: ReadTxn | None = None
        self._pieces: Iterator[bytes] | None = None
        self._piece: memoryview | None = None  # the unsent rest of the current piece
        self._done = False
        self.pages_sent = 0
        self._page_count = 0
        self._pages_hash = b""

    # ---------------------------------------------------------------- introspection
    @property
    def slot_index(self) -> int | None:
        """Index of the lock-file slot this driver owns, or None (not begun / released)."""
        return None if self._slot is None else self._slot.index

    @property
    def vp_meta(self) -> F.Meta | None:
        """The meta record frozen by ``lock()`` (None before)."""
        return self._meta

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
        for _ in range(1000):
            try:
                meta = F.Meta.decode(self._lockfile.btree_meta(), "published btree meta")
                break
            except CorruptionError:
                continue
        else:
            raise CorruptionError("published btree meta record does not validate")
        if meta.txnid:
            self._slot.set(meta.txnid, SLOT_BACKUP)
        # txnid 0 is a never-written file (meta pages only): there is nothing to pin.
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
            self._pieces = self._generate()
        cap = min(buffer.capacity, self._buf_size or buffer.capacity)
        out = bytearray()
        while len(out) < cap:
            piece = self._next_piece()
            if piece is None:
                break
            take = min(cap - len(out), len(piece))
            out += piece[:take]
            self._piece = piece[take:]
        buffer.stream = 0
        buffer.data = bytes(out)
        if self._next_piece() is None:  # look ahead: mark the final buffer last
            buffer.last = True
            self._done = True
            self._close_txn()
            return Result.DONE
        return Result.OK

    def _next_piece(self) -> memoryview | None:
        while self._piece is None or not len(self._piece):
            assert self._pieces is not None
            nxt = next(self._pieces, None)
            if nxt is None:
                self._piece = None
                return None
            self._piece = memoryview(nxt)
        return self._piece

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
        count = sum(1 for p in free if F.FIRST_DATA_PAGE <= p < meta.total_pages)
        self._page_count = meta.total_pages - F.FIRST_DATA_PAGE - count
        yield encode_header(meta, self._page_count)
        hasher = new_pages_hasher()
        path = self._store.path
        for pgno, page in txn.iter_pages(free):
            # Catch damage at the source: an image of a corrupt page would not restore.
            verify_header(page, pgno, None, path)
            hasher.update(page)
            self.pages_sent += 1
            yield page
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

    def _generate_layer(self, txn: ReadTxn, meta: F.Meta, base: int) -> Iterator[bytes]:
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
            if pgno in found or not F.FIRST_DATA_PAGE <= pgno < meta.total_pages:
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

    def vp_info(self) -> Mapping[str, Any]:
        """txnid, commit_seq (of the last btree commit <= the VP), root_hash (hex),
        page_size, total_pages, pages_sent, pages_hash (hex, as in the trailer); a layer
        adds base_txnid (the base image's btree txnid)."""
        meta = self._meta
        if meta is None:
            return {}
        facts: dict[str, Any] = {
            "txnid": meta.txnid, "commit_seq": meta.commit_seq,
            "root_hash": meta.root_hash.hex(), "page_size": meta.page_size,
            "total_pages": meta.total_pages, "pages_sent": self.pages_sent,
            "pages_hash": self._pages_hash.hex()}
        if self._base_txnid is not None:
            facts["base_txnid"] = self._base_txnid
        return facts

    def _close_txn(self) -> None:
        if self._txn is not None:
            self._txn.close()
            self._txn = None

    def _release(self) -> None:
        self._close_txn()
        self._pieces = None
        self._piece = None
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()  # clears the pin: writers may reuse the snapshot's pages again

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


# ====================================================================== restore side
class _PageIndex:
    """Received pages in page order (pgno, txnid, hash, referenced flag), about 30 bytes
    per page, so the Merkle proof can match references made before or after a page."""

    def __init__(self) -> None:
        self.pgnos = array("I")
        self.txnids = array("Q")
        self.types = bytearray()
        self.hashes = bytearray()
        self.claimed = bytearray()

    def add(self, pgno: int, txnid: int, ptype: int, digest: bytes) -> None:
        self.pgnos.append(pgno)
        self.txnids.append(txnid)
        self.types.append(ptype)
        self.hashes += digest
        self.claimed.append(0)

    def find(self, pgno: int) -> int | None:
        i = bisect_left(self.pgnos, pgno)
        if i < len(self.pgnos) and self.pgnos[i] == pgno:
            return i
        return None

    def digest(self, i: int) -> bytes:
        return bytes(self.hashes[i * F.HASH_SIZE:(i + 1) * F.HASH_SIZE])


class _MerkleProof:
    """Proves, while pages stream by in page order, that they form exactly the snapshot the
    meta record authenticates: every reference (meta roots, branch records, catalog table
    roots, overflow chains) names a received page with that txnid (and hash, where the
    format records one), and every received page is referenced exactly once."""

    def __init__(self, meta: F.Meta, where: str) -> None:
        self.meta = meta
        self.where = where
        self.index = _PageIndex()
        #: References to pages not received yet: pgno -> (txnid, hash or None, by whom).
        self.pending: dict[int, tuple[int, bytes | None, str]] = {}
        self.branch_kids: dict[int, list[int]] = {}
        self.catalog_candidates: dict[int, list[CatalogEntry]] = {}
        self.chains: list[tuple[OverflowRef, str]] = []
        self.overflow_next: dict[int, int] = {}
        #: The catalog's entries (filled by :meth:`finish`), by table name.
        self.catalog: dict[str, CatalogEntry] = {}
        for desc, by in ((meta.catalog, "meta catalog root"),
                         (meta.freelist, "meta free-list root")):
            if desc.pgno:
                self.claim(desc.pgno, desc.txnid, desc.hash, by)

    def bad(self, what: str, pgno: int, where: str | None = None) -> CorruptionError:
        return CorruptionError(what, where=f"{where or self.where}, page {pgno}")

    def claim(self, pgno: int, txnid: int, digest: bytes | None, by: str) -> None:
        """Record a reference to page ``pgno``."""
        if not F.FIRST_DATA_PAGE <= pgno < self.meta.total_pages:
            raise self.bad(f"{by} references a page outside the snapshot", pgno)
        i = self.index.find(pgno)
        if i is None:
            if pgno in self.pending:
                raise self.bad(f"page referenced twice ({self.pending[pgno][2]}, {by})", pgno)
            self.pending[pgno] = (txnid, digest, by)
            return
        if self.index.claimed[i]:
            raise self.bad(f"page referenced twice (second: {by})", pgno)
        self.index.claimed[i] = 1
        self._match(i, pgno, txnid, digest, by)

    def _match(self, i: int, pgno: int, txnid: int, digest: bytes | None, by: str) -> None:
        if self.index.txnids[i] != txnid:
            raise self.bad(f"page txnid {self.index.txnids[i]} differs from {by}'s record "
                           f"{txnid}", pgno)
        if digest is not None and self.index.digest(i) != digest:
            raise self.bad(f"page hash differs from {by}'s record (Merkle mismatch)", pgno)

    def page(self, pgno: int, page: bytes, digest: bytes, where: str) -> None:
        """Account for one received page whose checksum and page number were verified;
        ``where`` locates it in the stream for error messages."""
        _c, ptxn, _p, ptype, flags, nkeys, _aux, nxt = F.HEADER.unpack_from(page)
        if ptxn > self.meta.txnid or ptxn == 0:
            raise self.bad(f"page txnid {ptxn} outside 1..{self.meta.txnid}", pgno, where)
        if ptype not in (F.PAGE_BRANCH, F.PAGE_LEAF, F.PAGE_OVERFLOW):
            raise self.bad(f"page type {ptype} is not a tree page", pgno, where)
        self.index.add(pgno, ptxn, ptype, digest)
        ref = self.pending.pop(pgno, None)
        if ref is not None:
            self.index.claimed[-1] = 1
            self._match(len(self.index.pgnos) - 1, pgno, ref[0], ref[1], ref[2])
        if ptype == F.PAGE_OVERFLOW:
            self.overflow_next[pgno] = nxt
            return
        if ptype == F.PAGE_LEAF and not flags & 1 and not self._maybe_catalog(page, nkeys):
            return  # a plain user leaf: no references, nothing more to learn
        try:
            node = decode_node(page, pgno, ptxn, None)
        except CorruptionError as exc:
            raise self.bad(exc.what, pgno, where) from exc
        if isinstance(node, Branch):
            kids: list[int] = []
            for kid, h in zip(node.kids, node.hashes):
                assert type(kid) is tuple
                if kid[1] > ptxn:
                    raise self.bad(f"child {kid[0]} txnid {kid[1]} is newer than its parent",
                                   pgno)
                self.claim(kid[0], kid[1], h, f"branch page {pgno}")
                kids.append(kid[0])
            self.branch_kids[pgno] = kids
            return
        assert isinstance(node, Leaf)
        entries: list[CatalogEntry] | None = [] if not flags & 1 else None
        for key, val in zip(node.keys, node.vals):
            if isinstance(val, OverflowRef):
                if val.txnid > ptxn:
                    raise self.bad("overflow chain newer than its leaf", pgno)
                self.chains.append((val, f"leaf page {pgno}"))
                self.claim(val.pgno, val.txnid, None, f"leaf page {pgno}")
            elif entries is not None:
                try:
                    entries.append(CatalogEntry.decode(key, val))
                except LaminaError:
                    entries = None
        if entries is not None:
            self.catalog_candidates[pgno] = entries

    @staticmethod
    def _maybe_catalog(page: bytes, n: int) -> bool:
        """Cheap filter: every value is as long as a catalog entry (20 or 20 + 40 bytes)."""
        if n == 0 or F.HEADER_SIZE + 4 * n > len(page):
            return False
        vlens = struct.unpack_from(f"<{n}H", page, F.HEADER_SIZE + 2 * n)
        return all(v in (20, 20 + F.ROOT_SIZE) for v in vlens)

    def finish(self) -> None:
        """After the last page: resolve the catalog's table roots and overflow chains, then
        require every reference satisfied and every page referenced exactly once."""
        self._catalog(self.meta.catalog)
        for ref, by in self.chains:
            pgno = ref.pgno
            for k in range(ref.npages):
                i = self.index.find(pgno)
                if i is None or self.index.types[i] != F.PAGE_OVERFLOW:
                    raise self.bad(f"overflow chain of {by} reaches a missing or non-overflow "
                                   "page", pgno)
                if k:
                    self.claim(pgno, ref.txnid, None, f"overflow chain of {by}")
                pgno = self.overflow_next[pgno]
            if pgno != 0:
                raise self.bad(f"overflow chain of {by} is longer than its reference", pgno)
        if self.pending:
            pgno, (_t, _h, by) = min(self.pending.items())
            raise self.bad(f"page referenced by {by} is not in the stream", pgno)
        for i, claimed in enumerate(self.index.claimed):
            if not claimed:
                raise self.bad("page is not referenced by any tree", self.index.pgnos[i])

    def _catalog(self, root: F.RootDesc) -> None:
        stack = [root.pgno] if root.pgno else []
        while stack:
            pgno = stack.pop()
            kids = self.branch_kids.get(pgno)
            if kids is not None:
                stack.extend(kids)
                continue
            entries = self.catalog_candidates.get(pgno)
            if entries is None:
                raise self.bad("catalog leaf does not decode as catalog entries", pgno)
            for e in entries:
                self.catalog[e.name] = e
                if e.engine != ENGINE_BTREE:
                    continue
                try:
                    desc = F.RootDesc.decode(e.state, f"table {e.name!r}")
                except CorruptionError as exc:
                    raise self.bad(exc.what, pgno) from exc
                if desc.pgno:
                    self.claim(desc.pgno, desc.txnid, desc.hash, f"table {e.name!r}")


class BtreeRestoreDriver(RestoreDriver):
    """Rebuilds ``data.lamina`` in ``RestoreFlags.destination`` from a btree stream (or, with
    destination None, proves the stream and writes nothing).

    Parsing is incremental: buffers may split the header, pages and trailer anywhere. Every
    check names the stream offset of the failing record. Errors are raised (CorruptionError,
    VersionError, UnsupportedError, AlreadyExistsError, StorageError); the kernel then
    calls ``cancel()``, which removes the data file.
    """

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        self._tables = list(tables)
        self._dest = flags.destination
        self.path: Path | None = None if self._dest is None else self._dest / F.DATA_FILE_NAME
        self._fd: int | None = None
        self._created = False
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._state = "header"
        self.meta: F.Meta | None = None
        self._page_size = 0
        self._page_count = 0
        self.pages_received = 0
        self._last_pgno = F.FIRST_DATA_PAGE - 1
        self._hasher = new_pages_hasher()
        self._proof: _MerkleProof | None = None
        self._root_page: bytes | None = None

    # ---------------------------------------------------------------- protocol
    def begin(self) -> Result:
        """Create the data file (exclusively; AlreadyExistsError if it exists)."""
        if self.path is None:
            return Result.OK
        try:
            self._fd = fileio.open_fd(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise AlreadyExistsError(f"{self.path} already exists") from None
        except FileNotFoundError:
            raise NotFoundError(f"restore destination {self._dest} does not exist") from None
        self._created = True
        return Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        """Consume one block: stream 0 carries the page stream; table streams must be
        empty. Raises CorruptionError (naming the stream offset), VersionError (a newer
        stream version), UnsupportedError (a layer stream), StorageError."""
        if buffer.stream != 0:
            if len(buffer.data):
                raise CorruptionError(f"{len(buffer.data)} bytes on btree table stream "
                                      f"{buffer.stream}, which is always empty")
            return Result.OK
        if self._state == "done" and len(buffer.data):
            raise CorruptionError("bytes after the btree stream trailer",
                                  where=f"btree stream offset {self._offset}")
        self._buf += buffer.data
        self._parse()
        if buffer.last and self._state != "done":
            raise CorruptionError(f"btree stream ends in its {self._state}",
                                  where=f"btree stream offset {self._offset + len(self._buf)}")
        return Result.OK

    def _where(self, extra: int = 0) -> str:
        return f"btree stream offset {self._offset + extra}"

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _parse(self) -> None:
        if self._state == "header" and not self._parse_header():
            return
        if self._state == "pages":
            self._parse_pages()
        if self._state == "trailer" and len(self._buf) >= TRAILER_SIZE:
            self._parse_trailer()
        if self._state == "done" and self._buf:
            raise CorruptionError("bytes after the btree stream trailer", where=self._where())

    def _parse_header(self) -> bool:
        buf = self._buf
        # Order: magic, then version, then (checksummed) lengths.
        if len(buf) >= 8 and bytes(buf[:8]) != STREAM_MAGIC:
            raise CorruptionError("not a btree backup stream (bad magic)", where=self._where())
        if len(buf) >= 12:
            version = struct.unpack_from("<I", buf, 8)[0]
            if version > STREAM_VERSION:
                raise VersionError(f"btree backup stream version {version}; this build reads "
                                   f"up to {STREAM_VERSION}")
        if len(buf) < HEADER_SIZE:
            return False
        body = bytes(buf[:HEADER.size])
        if HEADER_CHECK.unpack_from(buf, HEADER.size)[0] != xxhash.xxh3_64_intdigest(body):
            raise CorruptionError("btree stream header checksum mismatch", where=self._where())
        (_m, version, hsize, page_size, flags, total, count, base, mlen,
         record) = HEADER.unpack(body)
        if version != STREAM_VERSION or hsize != HEADER_SIZE or mlen != F.META_SIZE:
            raise CorruptionError("btree stream header has impossible fields",
                                  where=self._where())
        if flags & FLAG_LAYER or base:
            raise UnsupportedError("btree layer streams are not supported by this build")
        if flags:
            raise UnsupportedError(f"btree stream header flags {flags:#x} unknown")
        try:
            meta = F.Meta.decode(record, "btree stream meta")
        except NotADatabaseError as exc:  # in a stream, a bad meta magic is damage
            raise CorruptionError(str(exc), where=self._where(56)) from exc
        except CorruptionError as exc:
            raise CorruptionError(exc.what, where=self._where(56)) from exc
        if (meta.page_size != page_size or meta.total_pages != total or total > MAX_PAGES
                or count > total - F.FIRST_DATA_PAGE):
            raise CorruptionError("btree stream header disagrees with its meta record",
                                  where=self._where())
        # Every page not sent is free, and free pages are listed (4 bytes each) in
        # free-list pages that are sent: so a small stream cannot claim a huge file, and
        # no work below scales with what a hostile header declares.
        if total - F.FIRST_DATA_PAGE - count > count * (page_size // 4):
            raise CorruptionError(f"btree stream declares {total} pages but sends {count}: "
                                  "more unsent pages than its free list could hold",
                                  where=self._where())
        self.meta = meta
        self._page_size = page_size
        self._page_count = count
        self._proof = _MerkleProof(meta, "btree stream")
        self._consume(HEADER_SIZE)
        self._state = "pages" if count else "trailer"
        return True

    def _parse_pages(self) -> None:
        ps = self._page_size
        proof = self._proof
        assert proof is not None and self.meta is not None
        run_start = -1
        run: list[bytes] = []
        used = 0
        view = memoryview(self._buf)
        try:
            while self.pages_received < self._page_count and len(self._buf) - used >= ps:
                page = bytes(view[used:used + ps])
                where = self._where(used)
                # Checksum first: no header field is trusted before it passed.
                if struct.unpack_from("<Q", page)[0] != page_checksum(page):
                    raise CorruptionError("page checksum mismatch", where=where)
                pgno = struct.unpack_from("<I", page, 16)[0]
                if pgno <= self._last_pgno or pgno >= self.meta.total_pages:
                    raise CorruptionError(f"page number {pgno} out of order or outside the "
                                          f"snapshot (after page {self._last_pgno})", where=where)
                digest = page_hash(page)
                proof.page(pgno, page, digest, where)
                self._hasher.update(page)
                if pgno == self.meta.catalog.pgno:
                    self._root_page = page
                if run and pgno != run_start + len(run):
                    self._write_run(run_start, run)
                    run = []
                if not run:
                    run_start = pgno
                run.append(page)
                self._last_pgno = pgno
                self.pages_received += 1
                used += ps
        finally:
            view.release()
        if run:
            self._write_run(run_start, run)
        self._consume(used)
        if self.pages_received == self._page_count:
            self._state = "trailer"

    def _write_run(self, start: int, pages: list[bytes]) -> None:
        if self._fd is not None:
            assert self.path is not None
            fileio.pwrite(self._fd, b"".join(pages), start * self._page_size, self.path)

    def _parse_trailer(self) -> None:
        buf = self._buf
        if bytes(buf[:8]) != TRAILER_MAGIC:
            raise CorruptionError("btree stream trailer expected (bad magic)", where=self._where())
        body = bytes(buf[:TRAILER.size])
        if TRAILER_CHECK.unpack_from(buf, TRAILER.size)[0] != xxhash.xxh3_64_intdigest(body):
            raise CorruptionError("btree stream trailer checksum mismatch", where=self._where())
        _m, count, digest = TRAILER.unpack(body)
        if count != self.pages_received:
            raise CorruptionError(f"trailer counts {count} pages, the stream has "
                                  f"{self.pages_received}", where=self._where())
        if digest != self._hasher.digest():
            raise CorruptionError("btree stream pages hash mismatch", where=self._where())
        self._consume(TRAILER_SIZE)
        self._state = "done"

    def end(self) -> Result:
        """Prove the snapshot (Merkle references, root hash against the meta and the VP
        facts), then write the meta record into both meta slots, extend the file to the
        snapshot's size and sync. Raises CorruptionError, StorageError."""
        if self._state != "done" or self.meta is None or self._proof is None:
            raise CorruptionError("btree stream incomplete: no trailer received",
                                  where=self._where(len(self._buf)))
        meta = self.meta
        self._proof.finish()
        self._check_facts(meta)
        for t in self._tables:
            entry = self._proof.catalog.get(t.name)
            if entry is None or entry.engine != ENGINE_BTREE or entry.table_id != t.table_id:
                raise CorruptionError(f"the image lists btree table {t.name!r} (id "
                                      f"{t.table_id}), the restored catalog does not have it",
                                      path=self.path)
        root = self._root_page
        if self._fd is not None and meta.catalog.pgno:
            # The root hash is recomputed from the page as it is on disk now.
            assert self.path is not None
            root = fileio.pread(self._fd, meta.page_size, meta.catalog.pgno * meta.page_size,
                                self.path)
        got = page_hash(root) if root is not None else F.ZERO_HASH
        if got != meta.root_hash:
            raise CorruptionError(f"restored root hash {got.hex()} differs from the meta's "
                                  f"{meta.root_hash.hex()}", path=self.path)
        if self._fd is not None:
            self._write_file(meta)
        return Result.OK

    def _check_facts(self, meta: F.Meta) -> None:
        facts = self.vp_facts
        if not facts:
            return  # no VP facts (a driver called by hand): the meta is the only reference
        expect = {"txnid": meta.txnid, "root_hash": meta.root_hash.hex(),
                  "page_size": meta.page_size, "total_pages": meta.total_pages,
                  "pages_sent": self.pages_received, "commit_seq": meta.commit_seq}
        for key, value in expect.items():
            if key in facts and facts[key] != value:
                raise CorruptionError(f"btree {key} {value!r} differs from the VP facts' "
                                      f"{facts[key]!r}", path=self.path)
        if "root_hash" not in facts:
            raise CorruptionError("the VP facts of the btree driver lack the root hash",
                                  path=self.path)

    def _write_file(self, meta: F.Meta) -> None:
        fd, path = self._fd, self.path
        assert fd is not None and path is not None
        # Trailing free pages were not sent: write_meta_file extends the file (sparse).
        write_meta_file(fd, path, meta)
        os.close(fd)
        self._fd = None
        assert self._dest is not None
        fileio.fsync_dir(self._dest)

    def cancel(self) -> Result:
        """Close and remove the data file this driver created; never raises."""
        result = Result.OK
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._created and self.path is not None:
            self._created = False
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                self.error = storage_error(exc, "remove", self.path)
                result = Result.ERROR
        return result
