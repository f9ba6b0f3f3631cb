"""Reading a snapshot's pages in large runs for a full backup, each page verified.

A full backup sends every allocated, non-free page in page order. Read one page at a time,
the Python loop around each page (slice, verify, hash, hand over) costs more than the bytes;
:func:`iter_page_runs` cuts the page range into runs of consecutive non-free pages (at most
``max_pages`` each), reads each run as one slice of the data file's map, and verifies every
page of it (checksum, page number) through a memoryview, without copying a page. The caller
hashes and sends a run as one piece.

Pure reading: no lock is taken; the caller's read transaction pins the snapshot, so the
bytes of the pages it names cannot change while they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Set
from pathlib import Path

import xxhash

from lamina.engines.btree import format as btree_format
from lamina.errors import CorruptionError

_ZERO8 = bytes(8)


def verify_run(run: bytes, first: int, page_size: int, path: Path | None) -> None:
    """Check every page of ``run`` (pages ``first``, ``first + 1``, ...): its length, its
    checksum, then the page number its header names. Raises CorruptionError naming the
    first bad page (a damaged source page would make an image that never restores)."""
    if len(run) % page_size:
        raise CorruptionError("page is past the end of the file", path=path,
                              where=f"page {first + len(run) // page_size}")
    view = memoryview(run)
    unpack = btree_format.HEADER.unpack_from
    xxh3_64, zero8 = xxhash.xxh3_64, _ZERO8
    try:
        for i, off in enumerate(range(0, len(run), page_size)):
            h = xxh3_64(zero8)
            h.update(view[off + 8:off + page_size])
            cs, _t, pgno, _ty, _f, _n, _a, _x = unpack(run, off)
            if cs != h.intdigest():
                raise CorruptionError("page checksum mismatch", path=path,
                                      where=f"page {first + i}")
            if pgno != first + i:
                raise CorruptionError(f"page header names page {pgno}", path=path,
                                      where=f"page {first + i}")
    finally:
        view.release()


def iter_page_runs(read_run: Callable[[int, int], bytes], total_pages: int, free: Set[int],
                   page_size: int, path: Path | None, *, max_pages: int,
                   check: Callable[[], None] | None = None) -> Iterator[tuple[int, bytes]]:
    """Every page from :data:`~lamina.engines.btree.format.FIRST_DATA_PAGE` to
    ``total_pages`` that is not in ``free``, as ``(first pgno, bytes of the run)`` in page
    order, each run at most ``max_pages`` consecutive pages, each page verified
    (:func:`verify_run`). ``read_run(pgno, count)`` returns the bytes of ``count`` pages;
    ``check()`` runs before each read (a closed transaction raises there)."""
    pgno = btree_format.FIRST_DATA_PAGE
    while pgno < total_pages:
        if pgno in free:
            pgno += 1
            continue
        end = pgno + 1
        limit = min(total_pages, pgno + max_pages)
        while end < limit and end not in free:
            end += 1
        if check is not None:
            check()
        run = read_run(pgno, end - pgno)
        verify_run(run, pgno, page_size, path)
        yield pgno, run
        pgno = end


__all__ = ["iter_page_runs", "verify_run"]
