"""The pager: page reads through an ``mmap``, page writes through ``fileio``, decoded-page cache;
and the meta pages of a data file (:func:`read_metas`, :func:`write_meta_file`).

A committed page never changes while any snapshot that can reach it is alive, and its
content is fixed by ``(pgno, txnid)`` (the parent records the child's txnid). So decoded
nodes are cached process-wide under that pair: a hit needs no I/O, no checksum and no decode.
Pages of a transaction that has not committed are never put in the cache (its txnid may be
reused after an abort or crash).

Thread safety: reads and cache lookups may run in any number of threads; the map is replaced
(never closed while in use) under a lock when the file has grown.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from pathlib import Path

from lamina.core import fileio
from lamina.core.failpoints import failpoint
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.page import Node, Ref, decode_node
from lamina.errors import CorruptionError, DataError, NotADatabaseError, VersionError

#: Default budget of the decoded-page cache, in page-size units times page size.
DEFAULT_CACHE_BYTES = 256 << 20

_PROBE = 512  # bytes read to find a meta record (it is 168 bytes, at a page start)


def _decode_slot(raw: bytes, slot: int, path: Path,
                 file_size: int) -> btree_format.Meta | DataError:
    try:
        meta = btree_format.Meta.decode(raw, f"meta {slot}")
    except DataError as exc:
        return exc
    if meta.slot != slot:
        return CorruptionError(f"meta {slot} says it is meta {meta.slot}", path=path,
                               where=f"meta {slot}")
    if meta.total_pages > file_size // meta.page_size:
        # A commit extends the file to its page count before its meta is written (a restore
        # before it writes the metas), so a meta naming pages the file does not hold is
        # damage: never let it size a check, a page bitmap or the next allocation.
        return CorruptionError(f"meta {slot} names {meta.total_pages} pages; the file holds "
                               f"{file_size // meta.page_size} of {meta.page_size} bytes",
                               path=path, where=f"meta {slot}")
    return meta


@dataclass(frozen=True, slots=True)
class MetaSlots:
    """What :func:`read_meta_slots` found: the current meta, each slot (a Meta, or the
    error that makes it invalid) and each slot's first bytes as read (up to 512; the
    whole record when the slot holds one)."""

    current: btree_format.Meta
    slots: list[btree_format.Meta | DataError]
    raw: list[bytes]


def read_metas(fd: int, path: Path,
               ) -> tuple[btree_format.Meta, list[btree_format.Meta | DataError]]:
    """Both meta slots of the data file open at ``fd`` (each a Meta, or the error that
    makes it invalid) and the current one (the valid slot with the highest txnid); see
    :func:`read_meta_slots`."""
    found = read_meta_slots(fd, path)
    return found.current, found.slots


def read_meta_slots(fd: int, path: Path) -> MetaSlots:
    """Both meta slots of the data file open at ``fd``, and the current one.

    A slot is valid if its record validates (magic, version, checksum, fields), sits at its
    own position and names no more pages than the file holds. Reads the file (two small
    preads, more when meta 0 is invalid and the page size must be guessed, and one fstat);
    takes no lock, so a caller that needs a stable answer holds the writer lock.
    Raises NotADatabaseError (neither slot has the magic), VersionError (a slot is from a
    newer format), CorruptionError (no valid slot), StorageError.
    """
    size = fileio.file_size(fd)
    first = fileio.pread(fd, _PROBE, 0, path)
    m0 = _decode_slot(first, 0, path, size)
    # Meta 1 sits one page in; without a valid meta 0 the page size is unknown: try all.
    candidates = ([m0.page_size] if isinstance(m0, btree_format.Meta)
                  else [1 << s for s in range(10, 17)])
    m1: btree_format.Meta | DataError = NotADatabaseError(f"{path}: meta 1 not found")
    raw1 = b""
    for ps in candidates:
        probe = fileio.pread(fd, _PROBE, ps, path)
        got = _decode_slot(probe, 1, path, size)
        if isinstance(got, btree_format.Meta) and got.page_size != ps:
            got = CorruptionError("meta 1 page size disagrees with its position", path=path)
        if not raw1 or probe[:8] == btree_format.MAGIC:
            raw1 = probe  # the slot's bytes: at the guessed page size that holds a record
        if isinstance(got, btree_format.Meta) or not isinstance(got, NotADatabaseError):
            m1 = got
            raw1 = probe
            if isinstance(got, btree_format.Meta):
                break
    slots = [m0, m1]
    for s in slots:
        if isinstance(s, VersionError):
            raise s
    valid = [s for s in slots if isinstance(s, btree_format.Meta)]
    if len(valid) == 2 and valid[0].page_size != valid[1].page_size:
        raise CorruptionError("meta pages disagree on the page size", path=path)
    if not valid:
        if all(isinstance(s, NotADatabaseError) for s in slots):
            raise NotADatabaseError(f"{path} is not a Lamina btree data file")
        raise CorruptionError("no valid meta page", path=path, where="meta 0, meta 1")
    current = max(valid, key=lambda m: (m.txnid, -m.slot))
    return MetaSlots(current, slots, [first, raw1])


def write_meta_file(fd: int, path: Path, meta: btree_format.Meta) -> None:
    """Finish a data file written page by page (a restore, a chain's assembly): extend the
    file at ``fd`` to ``meta``'s page count (sparse), sync its pages, write ``meta`` into
    both meta slots (slot fields 0 and 1, same txnid) and sync again, so the pages are
    durable before any meta names them. For a file no other process uses. Raises
    StorageError."""
    ps = meta.page_size
    if fileio.file_size(fd) < meta.total_pages * ps:
        fileio.truncate(fd, meta.total_pages * ps, path)
    fileio.fdatasync(fd, path)
    for slot in (0, 1):
        copy = btree_format.Meta(ps, meta.txnid, meta.commit_seq, slot, meta.total_pages,
                                 meta.next_table_id, meta.catalog, meta.freelist,
                                 meta.commit_ns)
        rec = copy.encode()
        fileio.pwrite(fd, rec + bytes(ps - len(rec)), slot * ps, path)
    fileio.fsync(fd, path)


class Pager:
    """Page I/O for one open data file; owns ``fd`` (closed by :meth:`close`)."""

    def __init__(self, path: Path, fd: int, page_size: int, *, readonly: bool,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.path = path
        self.fd = fd
        self.page_size = page_size
        self.readonly = readonly
        self._map: mmap.mmap | None = None
        self._map_pages = 0
        self._map_lock = threading.Lock()
        self._cache: dict[Ref, Node] = {}
        self._cache_lock = threading.Lock()
        self._cache_max = max(64, cache_bytes // page_size)

    # ------------------------------------------------------------------ reading
    def _remap(self, need_pages: int) -> None:
        with self._map_lock:
            if need_pages <= self._map_pages:
                return
            size = fileio.file_size(self.fd)
            pages = size // self.page_size
            if pages == 0:
                return
            # Read-only map even for writers: every write goes through fileio.pwrite.
            new = fileio.map_readonly(self.fd, pages * self.page_size, self.path)
            # The old map is not closed: other threads may be slicing it; it is released
            # when its last reference goes.
            self._map = new
            self._map_pages = pages

    def read(self, pgno: int) -> bytes:
        """The raw bytes of page ``pgno`` (shorter than a page if past the end of file)."""
        if pgno >= self._map_pages:
            self._remap(pgno + 1)
            if pgno >= self._map_pages:
                return fileio.pread(self.fd, self.page_size, pgno * self.page_size, self.path)
        m = self._map
        assert m is not None
        off = pgno * self.page_size
        return m[off: off + self.page_size]

    def read_run(self, pgno: int, count: int) -> bytes:
        """The raw bytes of ``count`` pages from ``pgno`` on, in one ``pread`` (shorter if
        the file ends first). Not through the map: a whole-file pass (a full backup) would
        otherwise keep every page it touched resident in this process."""
        return fileio.pread(self.fd, count * self.page_size, pgno * self.page_size, self.path)

    def node(self, ref: Ref) -> Node:
        """The decoded clean node for ``ref = (pgno, txnid)``; CorruptionError if damaged."""
        node = self._cache.get(ref)
        if node is not None:
            return node
        node = decode_node(self.read(ref[0]), ref[0], ref[1], self.path)
        self.cache_put(ref, node)
        return node

    def cache_put(self, ref: Ref, node: Node) -> None:
        """Cache a committed node (FIFO eviction within the byte budget)."""
        with self._cache_lock:
            cache = self._cache
            cache[ref] = node
            if len(cache) > self._cache_max:
                drop = len(cache) - self._cache_max + self._cache_max // 16
                it = iter(cache)
                victims = [next(it) for _ in range(drop)]
                for victim in victims:
                    del cache[victim]

    def cache_clear(self) -> None:
        """Forget every cached node (tests; after a failed commit nothing needs this)."""
        with self._cache_lock:
            self._cache.clear()

    # ------------------------------------------------------------------ writing
    def write_pages(self, pages: dict[int, bytes]) -> None:
        """Write pages, coalescing runs of consecutive page numbers into one pwrite each."""
        if not pages:
            return
        ps = self.page_size
        order = sorted(pages)
        start = prev = order[0]
        run = [pages[start]]
        for pgno in order[1:]:
            if pgno == prev + 1 and len(run) < 256:
                run.append(pages[pgno])
            else:
                fileio.pwrite(self.fd, b"".join(run), start * ps, self.path)
                start = pgno
                run = [pages[pgno]]
            prev = pgno
        fileio.pwrite(self.fd, b"".join(run), start * ps, self.path)

    def ensure_size(self, total_pages: int) -> None:
        """Extend the file to ``total_pages`` pages if it is shorter (never shrinks it)."""
        want = total_pages * self.page_size
        if fileio.file_size(self.fd) < want:
            fileio.truncate(self.fd, want, self.path)

    def sync(self) -> None:
        """fdatasync the data file."""
        fileio.fdatasync(self.fd, self.path)

    def write_meta(self, slot: int, record: bytes) -> None:
        """Write meta page ``slot``: first half of the record, failpoint, then the rest.

        The checksum sits at the end of the record, so a write torn at the failpoint leaves
        a meta that fails validation and is never chosen.
        """
        page = record + bytes(self.page_size - len(record))
        half = len(record) // 2
        base = slot * self.page_size
        fileio.pwrite(self.fd, page[:half], base, self.path)
        failpoint("btree.mid_meta_write")
        fileio.pwrite(self.fd, page[half:], base + half, self.path)

    def close(self) -> None:
        """Drop the map and the cache and close the descriptor. Raises StorageError if the
        close reports an error (the descriptor is released all the same)."""
        self._map = None
        self._map_pages = 0
        self._cache.clear()
        fileio.close_fd(self.fd, self.path)
