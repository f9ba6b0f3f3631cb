"""Btree side of backup chains: parse full and layer page streams, assemble the pages of a
chain's last validity point in one pass, and re-emit an assembled snapshot as a full stream.

The one-pass rule (docs/format.md, "Layer streams and chains"). A chain is a full image
and layers L1..Ln, layer *i* holding the pages whose txnid lies in (txnid of VP i-1, txnid
of VP i]. A page reachable at the last VP with txnid *t* was written at *t* and never
changed since (copy-on-write), so it is in exactly the image whose interval holds *t*, and
no later image has that page number unless it was rewritten (then its txnid would be
later). So reading the images newest first and writing each page number the first time it
is seen, if it is below the last VP's page count, writes every live page once, with its
content at the last VP. Page numbers that are free at the last VP may receive an older
image's stale bytes: nothing references them and the checker never reads free pages.

Classes here do no image I/O: :mod:`lamina.online.chain` reads the images and feeds the
stream bytes. Not thread-safe: each object is used by one thread.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.engines.btree import format as F
from lamina.engines.btree import tree
from lamina.engines.btree.backup import (
    FLAG_LAYER,
    HEADER,
    HEADER_CHECK,
    HEADER_SIZE,
    MAX_PAGES,
    STREAM_MAGIC,
    STREAM_VERSION,
    TRAILER,
    TRAILER_CHECK,
    TRAILER_MAGIC,
    TRAILER_SIZE,
    encode_header,
    encode_trailer,
    new_pages_hasher,
    write_meta_file,
)
from lamina.engines.btree.freelist import decode_free_value
from lamina.engines.btree.page import checksum as page_checksum
from lamina.engines.btree.page import verify_header
from lamina.engines.btree.pager import Pager
from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    NotADatabaseError,
    UnsupportedError,
    VersionError,
)

#: Pages written by one pwrite at most when coalescing a run of consecutive pages.
_RUN_PAGES = 256


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """A decoded btree stream header: the VP meta record, the page count N that follows,
    and for a layer the base txnid (None for a full stream)."""

    meta: F.Meta
    page_count: int
    base_txnid: int | None


def decode_stream_header(raw: bytes, where: str) -> StreamHeader:
    """Validate a 256-byte btree stream header: magic, version, checksum, then the fields
    (sizes, flags, the meta record and its agreement with page size and page count).

    Raises CorruptionError (naming ``where``), VersionError (a newer stream version),
    UnsupportedError (unknown flag bits).
    """
    if len(raw) < HEADER_SIZE or raw[:8] != STREAM_MAGIC:
        raise CorruptionError("not a btree backup stream (bad magic)", where=where)
    version = struct.unpack_from("<I", raw, 8)[0]
    if version > STREAM_VERSION:
        raise VersionError(f"btree backup stream version {version}; this build reads up to "
                           f"{STREAM_VERSION}")
    body = bytes(raw[:HEADER.size])
    if HEADER_CHECK.unpack_from(raw, HEADER.size)[0] != xxhash.xxh3_64_intdigest(body):
        raise CorruptionError("btree stream header checksum mismatch", where=where)
    (_m, version, hsize, page_size, flags, total, count, base, mlen, record) = HEADER.unpack(body)
    if version != STREAM_VERSION or hsize != HEADER_SIZE or mlen != F.META_SIZE:
        raise CorruptionError("btree stream header has impossible fields", where=where)
    if flags & ~FLAG_LAYER:
        raise UnsupportedError(f"btree stream header flags {flags:#x} unknown")
    layer = bool(flags & FLAG_LAYER)
    if not layer and base:
        raise CorruptionError("a full btree stream names a base txnid", where=where)
    try:
        meta = F.Meta.decode(record, "btree stream meta")
    except NotADatabaseError as exc:  # in a stream, a bad meta magic is damage
        raise CorruptionError(str(exc), where=where) from exc
    except CorruptionError as exc:
        raise CorruptionError(exc.what, where=where) from exc
    if (meta.page_size != page_size or meta.total_pages != total or total > MAX_PAGES
            or count > total - F.FIRST_DATA_PAGE or (layer and base > meta.txnid)):
        raise CorruptionError("btree stream header disagrees with its meta record", where=where)
    if not layer and total - F.FIRST_DATA_PAGE - count > count * (page_size // 4):
        # A full stream's unsent pages are free and listed in sent free-list pages.
        raise CorruptionError(f"btree stream declares {total} pages but sends {count}: more "
                              "unsent pages than its free list could hold", where=where)
    return StreamHeader(meta, count, base if layer else None)


class PageStreamReader:
    """Parses one btree stream (full or layer) fed in pieces of any size and hands every
    verified page to ``on_page(pgno, page)``.

    Checks, in order: the header (:func:`decode_stream_header`; a full stream when
    ``expect_base`` is None, else a layer on exactly that base txnid); each page's checksum,
    page number (strictly increasing, inside the snapshot), type (a tree page) and txnid
    (in ``(base, VP txnid]``, ``[1, VP txnid]`` for a full stream); then the trailer (page
    count and the blake2b-128 over the pages' hashes). It does not prove the Merkle tree:
    a single layer holds only part of it; the assembled chain is proven as a whole.
    ``on_header(header)`` is called once, before the first page. Raises CorruptionError
    naming ``where`` and the stream offset, VersionError, UnsupportedError, ChainError (a
    layer on another base than expected).
    """

    def __init__(self, where: str, *, expect_base: int | None,
                 on_page: Callable[[int, bytes], None],
                 on_header: Callable[[StreamHeader], None] | None = None) -> None:
        self.where = where
        self.expect_base = expect_base
        self.on_page = on_page
        self.on_header = on_header
        self.header: StreamHeader | None = None
        self.pages = 0
        self._buf = bytearray()
        self._offset = 0
        self._state = "header"
        self._last_pgno = F.FIRST_DATA_PAGE - 1
        self._hasher = new_pages_hasher()

    @property
    def done(self) -> bool:
        """True once the trailer was verified."""
        return self._state == "done"

    def _at(self, extra: int = 0) -> str:
        return f"{self.where}, btree stream offset {self._offset + extra}"

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the stream (``last``: the stream's final piece)."""
        if self._state == "done" and len(data):
            raise CorruptionError("bytes after the btree stream trailer", where=self._at())
        self._buf += data
        if self._state == "header" and len(self._buf) >= HEADER_SIZE:
            self._parse_header()
        if self._state == "pages":
            self._parse_pages()
        if self._state == "trailer" and len(self._buf) >= TRAILER_SIZE:
            self._parse_trailer()
        if self._state == "done" and self._buf:
            raise CorruptionError("bytes after the btree stream trailer", where=self._at())
        if last and self._state != "done":
            raise CorruptionError(f"btree stream ends in its {self._state}",
                                  where=self._at(len(self._buf)))

    def finish(self) -> StreamHeader:
        """Require a complete stream; returns its header. CorruptionError otherwise."""
        if self._state != "done" or self.header is None:
            raise CorruptionError("btree stream incomplete: no trailer received",
                                  where=self._at(len(self._buf)))
        return self.header

    def _parse_header(self) -> None:
        header = decode_stream_header(bytes(self._buf[:HEADER_SIZE]), self._at())
        if (header.base_txnid is None) != (self.expect_base is None):
            kind = "layer" if header.base_txnid is not None else "full"
            raise ChainError(f"{self.where}: the btree stream is a {kind} stream, the image's "
                             "place in the chain needs the other kind")
        if header.base_txnid != self.expect_base:
            raise ChainError(f"{self.where}: the btree layer is based on txnid "
                             f"{header.base_txnid}, its base image's VP is txnid "
                             f"{self.expect_base}")
        self.header = header
        del self._buf[:HEADER_SIZE]
        self._offset += HEADER_SIZE
        self._state = "pages" if header.page_count else "trailer"
        if self.on_header is not None:
            self.on_header(header)

    def _parse_pages(self) -> None:
        header = self.header
        assert header is not None
        meta = header.meta
        ps = meta.page_size
        low = 1 if header.base_txnid is None else header.base_txnid + 1
        used = 0
        buf = self._buf
        try:
            while self.pages < header.page_count and len(buf) - used >= ps:
                page = bytes(buf[used:used + ps])
                where = self._at(used)
                # Checksum first: no header field is trusted before it passed.
                if struct.unpack_from("<Q", page)[0] != page_checksum(page):
                    raise CorruptionError("page checksum mismatch", where=where)
                _c, ptxn, pgno, ptype, _f, _n, _a, _x = F.HEADER.unpack_from(page)
                if pgno <= self._last_pgno or pgno >= meta.total_pages:
                    raise CorruptionError(f"page number {pgno} out of order or outside the "
                                          f"snapshot (after page {self._last_pgno})",
                                          where=where)
                if not low <= ptxn <= meta.txnid:
                    raise CorruptionError(f"page {pgno} has txnid {ptxn}, outside "
                                          f"{low}..{meta.txnid}", where=where)
                if ptype not in (F.PAGE_BRANCH, F.PAGE_LEAF, F.PAGE_OVERFLOW):
                    raise CorruptionError(f"page {pgno} has type {ptype}, not a tree page",
                                          where=where)
                self._hasher.update(page)
                self._last_pgno = pgno
                self.pages += 1
                used += ps
                self.on_page(pgno, page)
        finally:
            del buf[:used]
            self._offset += used
        if self.pages == header.page_count:
            self._state = "trailer"

    def _parse_trailer(self) -> None:
        buf = self._buf
        if bytes(buf[:8]) != TRAILER_MAGIC:
            raise CorruptionError("btree stream trailer expected (bad magic)", where=self._at())
        body = bytes(buf[:TRAILER.size])
        if TRAILER_CHECK.unpack_from(buf, TRAILER.size)[0] != xxhash.xxh3_64_intdigest(body):
            raise CorruptionError("btree stream trailer checksum mismatch", where=self._at())
        _m, count, digest = TRAILER.unpack(body)
        if count != self.pages:
            raise CorruptionError(f"trailer counts {count} pages, the stream has {self.pages}",
                                  where=self._at())
        if digest != self._hasher.digest():
            raise CorruptionError("btree stream pages hash mismatch", where=self._at())
        del buf[:TRAILER_SIZE]
        self._offset += TRAILER_SIZE
        self._state = "done"


class PageAssembler:
    """Writes the data file of a chain's last VP (``meta``) from pages offered newest image
    first: a page number is written the first time it is offered if it is below the page
    count, and never again (a bitmap of one byte per page remembers it).

    ``path`` is created exclusively (AlreadyExistsError if it exists). :meth:`finish` extends
    the file to the page count, syncs the pages, then writes ``meta`` into both meta slots
    (as a single-image restore does) and syncs again. :meth:`abort` closes and removes the
    file. Raises StorageError on I/O failure.
    """

    def __init__(self, path: Path, meta: F.Meta) -> None:
        self.path = path
        self.meta = meta
        self.page_size = meta.page_size
        self.pages_written = 0
        self.pages_offered = 0
        self._seen = bytearray(meta.total_pages)
        self._run_start = -1
        self._run: list[bytes] = []
        try:
            self._fd: int | None = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise AlreadyExistsError(f"{path} already exists") from None

    def offer(self, pgno: int, page: bytes) -> bool:
        """Write ``page`` as page ``pgno`` unless that number was written already or lies
        past the last VP's page count; returns whether it was written."""
        self.pages_offered += 1
        if pgno >= len(self._seen) or self._seen[pgno]:
            return False
        self._seen[pgno] = 1
        if self._run and (pgno != self._run_start + len(self._run)
                          or len(self._run) >= _RUN_PAGES):
            self.flush()
        if not self._run:
            self._run_start = pgno
        self._run.append(page)
        self.pages_written += 1
        return True

    def flush(self) -> None:
        """Write the pending run of consecutive pages (call at the end of each stream)."""
        if self._run:
            assert self._fd is not None
            fileio.pwrite(self._fd, b"".join(self._run), self._run_start * self.page_size,
                          self.path)
            self._run = []

    def finish(self) -> None:
        """Make the file a complete, durable snapshot of ``meta`` (see the class doc)."""
        self.flush()
        fd = self._fd
        assert fd is not None
        write_meta_file(fd, self.path, self.meta)
        os.close(fd)
        self._fd = None

    def abort(self) -> None:
        """Close and remove the file (idempotent, never raises)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


class FullStreamWriter:
    """Re-emits the snapshot ``meta`` of the page file at ``path`` as a *full* btree stream
    (header, every non-free page in page order, trailer), e.g. to turn an assembled chain
    into one full image. The free pages are read from ``meta``'s free-list tree.

    Iterate :meth:`pieces` once; afterwards ``pages_sent`` and ``pages_hash`` hold the
    trailer's figures. Raises CorruptionError (a page fails its checksum), StorageError.
    """

    def __init__(self, path: Path, meta: F.Meta) -> None:
        self.path = path
        self.meta = meta
        self.pages_sent = 0
        self.pages_hash = b""

    def pieces(self) -> Iterator[bytes]:
        """Header, pages, trailer, lazily."""
        meta = self.meta
        fd = fileio.open_fd(self.path, os.O_RDONLY)
        pager = Pager(self.path, fd, meta.page_size, readonly=True, cache_bytes=0)
        try:
            free: set[int] = set()
            for _k, v in tree.iter_items(pager.node, tree.TreeState(meta.freelist)):
                if not isinstance(v, bytes):
                    raise CorruptionError("a free-list record is an overflow value",
                                          path=self.path)
                free.update(decode_free_value(v))
            pgnos = [p for p in range(F.FIRST_DATA_PAGE, meta.total_pages) if p not in free]
            yield encode_header(meta, len(pgnos))
            hasher = new_pages_hasher()
            for pgno in pgnos:
                page = pager.read(pgno)
                verify_header(page, pgno, None, self.path)
                hasher.update(page)
                self.pages_sent += 1
                yield page
            self.pages_hash = hasher.digest()
            yield encode_trailer(self.pages_sent, self.pages_hash)
        finally:
            pager.close()


__all__ = [
    "FullStreamWriter",
    "PageAssembler",
    "PageStreamReader",
    "StreamHeader",
    "decode_stream_header",
]
