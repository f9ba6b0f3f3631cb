"""Hashing and writing a restore's pages on a second thread, one batch behind the parse.

A full restore spends most of its CPU in three places: decompressing and checking the
stream (the kernel's thread), hashing every page (blake2b-128, the Merkle proof) and
writing the pages. blake2b, zstd and ``pwrite`` release the GIL, so
:class:`PagePipeline` runs the hashing and the writes of batch *k* on one worker thread
while the kernel's thread parses batch *k + 1*, and hands batch *k*'s digests to the
proof (in stream order) only after that: the proof sees every page, in order, with its
digest, exactly as if it were computed inline — it is just computed elsewhere.

Each page is hashed once. Pages are written where they belong (``pgno * page_size``), one
``pwrite`` per run of consecutive page numbers; a write failure surfaces as the
StorageError of the batch, raised by the next :meth:`PagePipeline.submit` or by
:meth:`PagePipeline.drain`.

Concurrency: one pipeline is driven by one thread (the restore driver's); it owns one
worker thread, stopped by :meth:`PagePipeline.close` (idempotent, never raises).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from lamina.core import fileio
from lamina.engines.btree import format as btree_format

#: Pages per batch: about 4 MiB at the default page size (one chunk of a backup image).
BATCH_PAGES = 1024

#: A received page: page number, bytes, and the stream offset it came from.
Received = tuple[int, bytes, int]
#: Receives each page, in stream order, with its blake2b-128 digest.
Consumer = Callable[[int, bytes, bytes, int], None]


def _hash_and_write(batch: list[Received], fd: int | None, path: Path | None,
                    page_size: int) -> list[bytes]:
    """The worker's half: the digests of ``batch`` and (with ``fd``) its runs written."""
    blake2b, size = hashlib.blake2b, btree_format.HASH_SIZE
    digests = [blake2b(page, digest_size=size).digest() for _pgno, page, _off in batch]
    if fd is not None:
        start = 0
        for i in range(1, len(batch) + 1):
            if i == len(batch) or batch[i][0] != batch[i - 1][0] + 1:
                data = b"".join(page for _pgno, page, _off in batch[start:i])
                fileio.pwrite(fd, data, batch[start][0] * page_size, path)
                start = i
    return digests


class PagePipeline:
    """Hashes (and, with ``fd``, writes) pages on a worker thread and hands them, with
    their digests, to ``consume(pgno, page, digest, offset)`` in stream order, one batch
    behind :meth:`add`. Raises what ``consume`` raises and the workers' StorageError."""

    def __init__(self, consume: Consumer, page_size: int, fd: int | None,
                 path: Path | None) -> None:
        self._consume = consume
        self._page_size = page_size
        self._fd = fd
        self._path = path
        self._batch: list[Received] = []
        self._inflight: deque[tuple[list[Received], Future[list[bytes]]]] = deque()
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            1, thread_name_prefix="lamina-restore-hash")

    def add(self, pgno: int, page: bytes, offset: int) -> None:
        """Queue one checked page (page numbers increasing)."""
        self._batch.append((pgno, page, offset))
        if len(self._batch) >= BATCH_PAGES:
            self.submit()

    def submit(self) -> None:
        """Send the queued pages to the worker; then hand over every finished batch but
        the newest (which runs while the caller parses on)."""
        if self._batch:
            assert self._pool is not None, "pipeline used after close()"
            batch, self._batch = self._batch, []
            self._inflight.append((batch, self._pool.submit(
                _hash_and_write, batch, self._fd, self._path, self._page_size)))
        while len(self._inflight) > 1:
            self._deliver()

    def drain(self) -> None:
        """Hash, write and hand over everything queued; on return every page added has
        been written and consumed."""
        self.submit()
        while self._inflight:
            self._deliver()

    def _deliver(self) -> None:
        batch, future = self._inflight.popleft()
        digests = future.result()
        consume = self._consume
        for (pgno, page, offset), digest in zip(batch, digests):
            consume(pgno, page, digest, offset)

    def close(self) -> None:
        """Stop the worker (waiting for a batch in flight) and drop what is queued."""
        pool, self._pool = self._pool, None
        self._batch = []
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()


__all__ = ["BATCH_PAGES", "PagePipeline"]
