"""A seekable read-only stream over ranged reads of a remote object, with read-ahead.

An image reader reads a few small pieces first (header, footer, manifest: probes) and
then, for a restore or a verification, the whole image front to back. :class:`RangedReader`
serves both: a read that does not continue the previous one fetches just
``max(asked, PROBE_SIZE)`` bytes; once reads are sequential it fetches whole blocks of
``block_size`` bytes, ``parallel`` of them ahead at once on a small thread pool (a few
parallel connections), so a sequential pass reads every byte of the object exactly once
and keeps at most ``block_size x (parallel + 1)`` bytes in memory.

``fetch(offset, length)`` must return exactly ``length`` bytes (the object's bytes
``[offset, offset + length)``) or raise a Lamina error; the reader never asks beyond the
size it was given.

Concurrency: one reader is used by one thread (its read-ahead threads are its own).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

#: Bytes fetched by a read that does not continue the previous one.
PROBE_SIZE = 256 * 1024
#: Default read-ahead block and number of blocks in flight.
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
DEFAULT_PARALLEL = 4

Fetch = Callable[[int, int], bytes]


class RangedReader(io.RawIOBase):
    """A readable, seekable binary stream of an object of ``size`` bytes (module doc)."""

    def __init__(self, fetch: Fetch, size: int, name: str, *,
                 block_size: int = DEFAULT_BLOCK_SIZE, parallel: int = DEFAULT_PARALLEL
                 ) -> None:
        super().__init__()
        if block_size < 1 or parallel < 1:
            raise ValueError("block_size and parallel must be positive")
        self._fetch = fetch
        self._size = size
        self.name = name
        self._block = block_size
        self._parallel = parallel
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._last_end = -1
        self._sequential = 0
        self._ahead: dict[int, Future[bytes]] = {}
        self._pool: ThreadPoolExecutor | None = None

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._size

    def readable(self) -> bool:
        """Always True."""
        return True

    def seekable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """The current offset."""
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` (relative to ``whence``); returns the new offset."""
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fill ``b`` from the current offset; 0 at the end of the object."""
        view = memoryview(b).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        if not (self._buf_start <= self._pos < self._buf_start + len(self._buf)):
            self._load(len(view))
        start = self._pos - self._buf_start
        n = min(len(view), len(self._buf) - start)
        view[:n] = self._buf[start:start + n]
        self._sequential = self._sequential + n if self._pos == self._last_end else n
        self._pos += n
        self._last_end = self._pos
        return n

    def _load(self, wanted: int) -> None:
        """Make the buffer hold the current offset: a probe, or a read-ahead block."""
        if self._pos != self._last_end or self._sequential < PROBE_SIZE:
            length = min(max(wanted, PROBE_SIZE), self._size - self._pos)
            self._buf, self._buf_start = self._fetch(self._pos, length), self._pos
            return
        index = self._pos // self._block
        blocks = -(-self._size // self._block)
        for stale in [i for i in self._ahead if i < index]:
            self._ahead.pop(stale).cancel()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._parallel, thread_name_prefix="lamina-read")
        for i in range(index, min(blocks, index + self._parallel)):
            if i not in self._ahead:
                offset = i * self._block
                self._ahead[i] = self._pool.submit(
                    self._fetch, offset, min(self._block, self._size - offset))
        self._buf, self._buf_start = self._ahead.pop(index).result(), index * self._block

    def close(self) -> None:
        """Drop the buffers and stop the read-ahead threads (pending fetches cancelled)."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        self._buf = b""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        super().close()
