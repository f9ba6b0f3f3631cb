"""The btree page stream (docs/format.md, "Btree native backup stream" and "Btree layer
stream"): its header, page records and trailer, and the one reader of it.

::

    header (256: magic, version, page size, flags, total pages, page count N, base txnid,
            the VP meta record; xxh3_64 check)
    page * N          P bytes each, in strictly increasing page order
    trailer (48: magic, page count, xxh3-128 over the N pages' bytes; xxh3_64 check)

A *full* stream (flags 0, base txnid 0) holds every allocated, non-free page of the
snapshot; a *layer* stream (flag bit 0, base txnid B) holds only its pages whose txnid is
greater than B. The trailer's hash is a fast end-to-end check of the pages as sent; the
proof that they are the VP's pages is the Merkle tree (:mod:`lamina.engines.btree.proof`
for a full stream; the checker over a chain's assembled pages for layers).

:class:`PageStreamReader` parses either kind, fed in pieces of any size; both the restore
driver (:mod:`lamina.engines.btree.restore_driver`) and the chain glue
(:mod:`lamina.online.chain`) read streams through it. Not thread-safe: a reader is used by
one thread.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from lamina.engines.btree import format as btree_format
from lamina.errors import (
    ChainError,
    CorruptionError,
    NotADatabaseError,
    UnsupportedError,
    VersionError,
)

#: Version of the stream this build writes and the newest it reads (= the btree backup
#: engine's ``version``).
STREAM_VERSION = 1
STREAM_MAGIC = b"LBTSTRM\x00"
TRAILER_MAGIC = b"LBTSEND\x00"

#: Stream header (256 bytes): magic[8], version u32, header size u32, page size u32,
#: flags u32, total pages u64, page count u64, base txnid u64, meta length u32, zero u32,
#: meta record[168], zero[24]; then xxh3_64 of the 248 bytes before it.
HEADER = struct.Struct(f"<8sIIIIQQQI4x{btree_format.META_SIZE}s24x")
HEADER_CHECK = struct.Struct("<Q")
HEADER_SIZE = HEADER.size + HEADER_CHECK.size
assert HEADER_SIZE == 256

#: Trailer (48 bytes): magic[8], page count u64, pages hash[16] (xxh3-128 over the pages'
#: bytes), zero u64, then xxh3_64 of bytes 0..39.
TRAILER = struct.Struct("<8sQ16s8x")
TRAILER_CHECK = struct.Struct("<Q")
TRAILER_SIZE = TRAILER.size + TRAILER_CHECK.size
assert TRAILER_SIZE == 48

#: Header flag bit 0: a layer (incremental) stream: only pages newer than the base txnid.
FLAG_LAYER = 1

#: Largest page count a stream may declare: page numbers are u32 in the file format.
MAX_PAGES = (1 << 32) - 1

_U32 = struct.Struct("<I")
_ZERO8 = bytes(8)
_TREE_PAGES = (btree_format.PAGE_BRANCH, btree_format.PAGE_LEAF, btree_format.PAGE_OVERFLOW)


def max_total_pages(base_total_pages: int, pages_sent: int, page_size: int) -> int:
    """The largest page count a snapshot can have if it was ``base_total_pages`` pages at
    the base and a stream of it sends ``pages_sent`` pages (docs/format.md, "Bounds").

    Every page at or past the base's page count was allocated after the base, so at the VP
    it is either live — then written after the base and sent — or free, listed in a
    free-list leaf written after the base (the record that lists it was), which is sent;
    a page lists at most ``page_size / 4`` page numbers. A full stream is the case of a
    base with only the two meta pages. Pure."""
    return base_total_pages + pages_sent * (1 + page_size // 4)


def encode_header(meta: btree_format.Meta, page_count: int, *,
                  base_txnid: int | None = None) -> bytes:
    """The 256-byte stream header of ``meta``'s snapshot followed by ``page_count`` pages: a
    full stream, or with ``base_txnid`` a layer stream (flag bit 0) of the pages newer than
    that txnid. Pure; never raises for valid arguments."""
    flags, base = (0, 0) if base_txnid is None else (FLAG_LAYER, base_txnid)
    body = HEADER.pack(STREAM_MAGIC, STREAM_VERSION, HEADER_SIZE, meta.page_size, flags,
                       meta.total_pages, page_count, base, btree_format.META_SIZE,
                       meta.encode())
    return body + HEADER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


def encode_trailer(page_count: int, pages_hash: bytes) -> bytes:
    """The 48-byte trailer: the page count and ``pages_hash``, the xxh3-128 digest over the
    pages' bytes in stream order (from :func:`new_pages_hasher`). Pure."""
    body = TRAILER.pack(TRAILER_MAGIC, page_count, pages_hash)
    return body + TRAILER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


def new_pages_hasher() -> xxhash.xxh3_128:
    """The running hash of a stream's pages, stored in its trailer: XXH3-128 over the page
    bytes in stream order (``update(page)`` per page, then ``digest()``)."""
    return xxhash.xxh3_128()


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """A decoded btree stream header: the VP meta record, the page count N that follows,
    and for a layer the base txnid (None for a full stream)."""

    meta: btree_format.Meta
    page_count: int
    base_txnid: int | None


def _check_prefix(raw: bytes | bytearray, where: str) -> None:
    """The checks a header's first bytes allow: magic (8 bytes), then version (12)."""
    if len(raw) >= 8 and bytes(raw[:8]) != STREAM_MAGIC:
        raise CorruptionError("not a btree backup stream (bad magic)", where=where)
    if len(raw) >= 12:
        version = _U32.unpack_from(raw, 8)[0]
        if version > STREAM_VERSION:
            raise VersionError(f"btree backup stream version {version}; this build reads "
                               f"up to {STREAM_VERSION}")


def decode_stream_header(raw: bytes, where: str) -> StreamHeader:
    """Validate a 256-byte btree stream header, in this order: magic, version, checksum,
    then the fields (sizes, flags, the meta record and its agreement with page size and
    page count; a full stream's unsent pages must fit in its free list).

    Pure. Raises CorruptionError (naming ``where``), VersionError (a newer stream version),
    UnsupportedError (unknown flag bits).
    """
    if len(raw) < HEADER_SIZE:
        raise CorruptionError("btree stream header truncated", where=where)
    _check_prefix(raw, where)
    body = bytes(raw[:HEADER.size])
    if HEADER_CHECK.unpack_from(raw, HEADER.size)[0] != xxhash.xxh3_64_intdigest(body):
        raise CorruptionError("btree stream header checksum mismatch", where=where)
    (_m, version, hsize, page_size, flags, total, count, base, mlen, record) = HEADER.unpack(body)
    if version != STREAM_VERSION or hsize != HEADER_SIZE or mlen != btree_format.META_SIZE:
        raise CorruptionError("btree stream header has impossible fields", where=where)
    if flags & ~FLAG_LAYER:
        raise UnsupportedError(f"btree stream header flags {flags:#x} unknown")
    layer = bool(flags & FLAG_LAYER)
    if not layer and base:
        raise CorruptionError("a full btree stream names a base txnid", where=where)
    try:
        meta = btree_format.Meta.decode(record, "btree stream meta")
    except NotADatabaseError as exc:  # in a stream, a bad meta magic is damage
        raise CorruptionError(str(exc), where=where) from exc
    except CorruptionError as exc:
        raise CorruptionError(exc.what, where=where) from exc
    if (meta.page_size != page_size or meta.total_pages != total or total > MAX_PAGES
            or count > total - btree_format.FIRST_DATA_PAGE
            or (layer and base > meta.txnid)):
        raise CorruptionError("btree stream header disagrees with its meta record", where=where)
    if not layer and total > max_total_pages(btree_format.FIRST_DATA_PAGE, count, page_size):
        # Every page a full stream does not send is free, and free pages are listed (4 bytes
        # each) in free-list pages that are sent: so a small stream cannot claim a huge
        # file, and no work of a reader scales with what a hostile header declares.
        raise CorruptionError(f"btree stream declares {total} pages but sends {count}: more "
                              "unsent pages than its free list could hold", where=where)
    return StreamHeader(meta, count, base if layer else None)


class PageStreamReader:
    """Parses one btree stream (full or layer) fed in pieces of any size and hands every
    verified page to ``on_page(pgno, page)``.

    Checks, in order: the header (magic and version as soon as their bytes arrive, then
    :func:`decode_stream_header`; a full stream when ``expect_base`` is None, else a layer
    on exactly that base txnid); each page's checksum (first: no page field is trusted
    before it), page number (strictly increasing, inside the snapshot), txnid (in
    ``(base, VP txnid]``, ``[1, VP txnid]`` for a full stream) and type (a tree page); then
    the trailer (magic, checksum, page count and the xxh3-128 over the pages' bytes) and
    that nothing follows it. It does not prove the Merkle tree (the restore driver does,
    with :class:`~lamina.engines.btree.proof.MerkleProof`; a single layer holds only part
    of the tree, so a chain's assembled pages are proven as a whole).

    ``base_total_pages`` (a layer's base's page count, when known) bounds the page count a
    layer header may declare: at most the base's plus ``1 + P/4`` per page it sends.
    ``on_header(header)`` is called once, before the first page. ``where`` prefixes every
    error location (``"{where}, btree stream offset O"``; just the offset when empty).
    Raises CorruptionError, VersionError, UnsupportedError, ChainError (a layer on another
    base than expected, or a stream of the other kind); whatever the callbacks raise
    passes through. After ``feed`` raised, the reader must not be used again.

    Attributes: ``header`` (once parsed), ``pages`` (pages handed over so far),
    ``page_offset`` (stream offset of the page last handed to ``on_page``), ``pages_hash``
    (the trailer's verified digest, once :attr:`done`).
    """

    def __init__(self, where: str, *, expect_base: int | None,
                 on_page: Callable[[int, bytes], None],
                 on_header: Callable[[StreamHeader], None] | None = None,
                 base_total_pages: int | None = None) -> None:
        self.where = where
        self.expect_base = expect_base
        self.base_total_pages = base_total_pages
        self.on_page = on_page
        self.on_header = on_header
        self.header: StreamHeader | None = None
        self.pages = 0
        self.page_offset = 0
        self.pages_hash = b""
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._state = "header"
        self._last_pgno = btree_format.FIRST_DATA_PAGE - 1
        self._hasher = new_pages_hasher()

    @property
    def done(self) -> bool:
        """True once the trailer was verified."""
        return self._state == "done"

    def location(self, offset: int) -> str:
        """The error location of stream offset ``offset`` (see the class doc)."""
        at = f"btree stream offset {offset}"
        return f"{self.where}, {at}" if self.where else at

    def _at(self, extra: int = 0) -> str:
        return self.location(self._offset + extra)

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the stream (``last``: the stream's final piece); every
        complete record in it is checked and handed over before this returns."""
        if self._state == "done" and len(data):
            raise CorruptionError("bytes after the btree stream trailer", where=self._at())
        self._buf += data
        if self._state == "header":
            _check_prefix(self._buf, self._at())
            if len(self._buf) >= HEADER_SIZE:
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

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def _parse_header(self) -> None:
        header = decode_stream_header(bytes(self._buf[:HEADER_SIZE]), self._at())
        prefix = f"{self.where}: " if self.where else ""
        if (header.base_txnid is None) != (self.expect_base is None):
            kind = "layer" if header.base_txnid is not None else "full"
            raise ChainError(f"{prefix}the btree stream is a {kind} stream, the image's "
                             "place in the chain needs the other kind")
        if header.base_txnid != self.expect_base:
            raise ChainError(f"{prefix}the btree layer is based on txnid "
                             f"{header.base_txnid}, its base image's VP is txnid "
                             f"{self.expect_base}")
        if header.base_txnid is not None and self.base_total_pages is not None:
            meta = header.meta
            limit = max_total_pages(self.base_total_pages, header.page_count, meta.page_size)
            if meta.total_pages > limit:
                raise CorruptionError(
                    f"btree layer declares {meta.total_pages} pages; its base's "
                    f"{self.base_total_pages} pages and the {header.page_count} it sends "
                    f"can hold at most {limit}", where=self._at())
        self.header = header
        self._consume(HEADER_SIZE)
        self._state = "pages" if header.page_count else "trailer"
        if self.on_header is not None:
            self.on_header(header)

    def _parse_pages(self) -> None:
        header = self.header
        assert header is not None
        meta = header.meta
        ps = meta.page_size
        low = 1 if header.base_txnid is None else header.base_txnid + 1
        high, total = meta.txnid, meta.total_pages
        count = min(header.page_count - self.pages, len(self._buf) // ps)
        if not count:
            return
        unpack, on_page, last = btree_format.HEADER.unpack_from, self.on_page, self._last_pgno
        xxh3_64, zero8 = xxhash.xxh3_64, _ZERO8
        view = memoryview(self._buf)
        used = 0
        try:
            for used in range(0, count * ps, ps):
                page = bytes(view[used:used + ps])  # the one copy: the callbacks keep it
                # Checksum first: no header field is trusted before it passed.
                h = xxh3_64(zero8)
                h.update(view[used + 8:used + ps])
                cs, ptxn, pgno, ptype, _f, _n, _a, _x = unpack(page)
                if cs != h.intdigest():
                    raise CorruptionError("page checksum mismatch", where=self._at(used))
                if pgno <= last or pgno >= total:
                    raise CorruptionError(f"page number {pgno} out of order or outside the "
                                          f"snapshot (after page {last})",
                                          where=self._at(used))
                if not low <= ptxn <= high:
                    raise CorruptionError(f"page {pgno} has txnid {ptxn}, outside "
                                          f"{low}..{high}", where=self._at(used))
                if ptype not in _TREE_PAGES:
                    raise CorruptionError(f"page {pgno} has type {ptype}, not a tree page",
                                          where=self._at(used))
                last = self._last_pgno = pgno
                self.pages += 1
                self.page_offset = self._offset + used
                on_page(pgno, page)
            used += ps
        finally:
            # The trailer's hash covers exactly the pages handed over, in order.
            self._hasher.update(view[:used])
            view.release()
            self._consume(used)
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
        self.pages_hash = digest
        self._consume(TRAILER_SIZE)
        self._state = "done"


__all__ = [
    "FLAG_LAYER",
    "HEADER",
    "HEADER_CHECK",
    "HEADER_SIZE",
    "MAX_PAGES",
    "STREAM_MAGIC",
    "STREAM_VERSION",
    "TRAILER",
    "TRAILER_CHECK",
    "TRAILER_MAGIC",
    "TRAILER_SIZE",
    "PageStreamReader",
    "StreamHeader",
    "decode_stream_header",
    "encode_header",
    "encode_trailer",
    "max_total_pages",
    "new_pages_hasher",
]
