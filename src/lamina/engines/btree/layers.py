"""Btree side of backup chains: assemble the pages of a chain's last validity point in one
pass, and re-emit an assembled snapshot as a full stream.

The one-pass rule (docs/format.md, "Layer streams and chains"). A chain is a full image
and layers L1..Ln, layer *i* holding the pages whose txnid lies in (txnid of VP i-1, txnid
of VP i]. A page reachable at the last VP with txnid *t* was written at *t* and never
changed since (copy-on-write), so it is in exactly the image whose interval holds *t*, and
no later image has that page number unless it was rewritten (then its txnid would be
later). So reading the images newest first and writing each page number the first time it
is seen, if it is below the last VP's page count, writes every live page once, with its
content at the last VP. Page numbers that are free at the last VP may receive an older
image's stale bytes: nothing references them and the checker never reads free pages.

Classes here do no image I/O: :mod:`lamina.online.chain` reads the images, parses each
btree stream with :class:`~lamina.engines.btree.stream.PageStreamReader` and offers its
pages to a :class:`PageAssembler`. Not thread-safe: each object is used by one thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lamina.core import fileio
from lamina.engines.btree import format as btree_format
from lamina.engines.btree import tree
from lamina.engines.btree.freelist import decode_free_value
from lamina.engines.btree.page import verify_header
from lamina.engines.btree.pager import Pager, write_meta_file
from lamina.engines.btree.stream import encode_header, encode_trailer, new_pages_hasher
from lamina.errors import AlreadyExistsError, CorruptionError, StorageError

#: Pages written by one pwrite at most when coalescing a run of consecutive pages.
_RUN_PAGES = 256
#: Page numbers per block of the "written" bitmap (one bit each; a block is allocated when
#: a page in it is first written, so memory follows the pages received, not a declared
#: page count).
_BITMAP_BLOCK = 1 << 16


class PageAssembler:
    """Writes the data file of a chain's last VP (``meta``) from pages offered newest image
    first: a page number is written the first time it is offered if it is below the page
    count, and never again (a bitmap of one bit per page remembers it, allocated in blocks
    of 65,536 pages as pages arrive: memory follows the pages received, never the page
    count a header declares).

    ``path`` is created exclusively (AlreadyExistsError if it exists). :meth:`finish` extends
    the file to the page count, syncs the pages, then writes ``meta`` into both meta slots
    (as a single-image restore does) and syncs again. :meth:`abort` closes and removes the
    file. Raises StorageError on I/O failure.
    """

    def __init__(self, path: Path, meta: btree_format.Meta) -> None:
        self.path = path
        self.meta = meta
        self.page_size = meta.page_size
        self.pages_written = 0
        self.pages_offered = 0
        self._seen: dict[int, bytearray] = {}
        self._provisional: set[int] = set()
        self._run_start = -1
        self._run: list[bytes] = []
        try:
            self._fd: int | None = fileio.open_fd(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise AlreadyExistsError(f"{path} already exists") from None

    def offer(self, pgno: int, page: bytes, *, provisional: bool = False) -> bool:
        """Write ``page`` as page ``pgno`` unless that number was written already or lies
        past the last VP's page count; returns whether it was written.

        ``provisional``: the page comes from an "at end" image's initial section, which
        the same image's final section (offered next, after :meth:`flush`) may replace
        with a newer copy of that page number: a provisional page is overwritten once by a
        non-provisional offer before :meth:`settle`."""
        self.pages_offered += 1
        if pgno >= self.meta.total_pages:
            return False
        block = self._seen.get(pgno // _BITMAP_BLOCK)
        if block is None:
            block = self._seen[pgno // _BITMAP_BLOCK] = bytearray(_BITMAP_BLOCK // 8)
        bit = pgno % _BITMAP_BLOCK
        if block[bit >> 3] & (1 << (bit & 7)):
            if provisional or pgno not in self._provisional:
                return False
            self._provisional.discard(pgno)  # the newer page of the same image wins
        else:
            block[bit >> 3] |= 1 << (bit & 7)
            self.pages_written += 1
            if provisional:
                self._provisional.add(pgno)
        if self._run and (pgno != self._run_start + len(self._run)
                          or len(self._run) >= _RUN_PAGES):
            self.flush()
        if not self._run:
            self._run_start = pgno
        self._run.append(page)
        return True

    def settle(self) -> None:
        """An image was read whole: its provisional pages are final (older images never
        replace them)."""
        self._provisional.clear()

    def retarget(self, meta: btree_format.Meta) -> None:
        """Assemble ``meta``'s snapshot instead (an "at end" last image: the assembler is
        made with the initial section's meta, read first, and retargeted at the final
        section's). CorruptionError for another page size or a smaller page count."""
        if meta.page_size != self.page_size or meta.total_pages < self.meta.total_pages:
            raise CorruptionError("the final section's snapshot has another page size or "
                                  "fewer pages than the initial section's", path=self.path)
        self.meta = meta

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
        self._fd = None
        fileio.close_fd(fd, self.path)

    def abort(self) -> None:
        """Close and remove the file (idempotent, never raises)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(StorageError):
                fileio.close_fd(fd, self.path)
        with contextlib.suppress(StorageError):
            fileio.unlink(self.path)


class FullStreamWriter:
    """Re-emits the snapshot ``meta`` of the page file at ``path`` as a *full* btree stream
    (header, every non-free page in page order, trailer), e.g. to turn an assembled chain
    into one full image. The free pages are read from ``meta``'s free-list tree.

    Iterate :meth:`pieces` once; afterwards ``pages_sent`` and ``pages_hash`` hold the
    trailer's figures. Raises CorruptionError (a page fails its checksum), StorageError.
    """

    def __init__(self, path: Path, meta: btree_format.Meta) -> None:
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
            pgnos = [p for p in range(btree_format.FIRST_DATA_PAGE, meta.total_pages)
                     if p not in free]
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
]
