"""The image writer's pipeline: chunks compressed on a pool come out in submission order
with exactly the bytes of compressing them one by one (so an image does not depend on the
number of threads), and the flush-behind thread syncs in steps and reports a failed sync."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from lamina.backup.chunk_pool import ChunkPool
from lamina.backup.codec import Compressor
from lamina.backup.flush_behind import FlushBehind
from lamina.backup.image_format import Codec
from lamina.errors import StorageError


def _chunks(n: int) -> list[bytes]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        size = rng.randrange(1, 300_000)
        # Alternate random (slow, incompressible) and repetitive (fast) chunks, so the
        # workers finish out of order.
        out.append(rng.randbytes(size) if i % 2 else bytes([i % 251]) * size)
    return out


@pytest.mark.parametrize("codec", [Codec.ZSTD, Codec.ZLIB, Codec.NONE])
@pytest.mark.parametrize("threads", [0, 1, 2, 3])
def test_pool_emits_in_order_the_inline_bytes(codec: Codec, threads: int) -> None:
    chunks = _chunks(24)
    compressor = Compressor(codec)
    inline = [compressor.compress(c) for c in chunks]
    got: list[tuple[int, Codec, bytes]] = []
    pool: ChunkPool[int] = ChunkPool(compressor, lambda t, c, s: got.append((t, c, s)),
                                     threads)
    try:
        for i, c in enumerate(chunks):
            pool.submit(i, bytearray(c))  # a reusable buffer: the pool copies it
            assert len(got) >= i - threads  # bounded: at most threads + 1 in flight
        pool.drain()
    finally:
        pool.close()
    assert [t for t, _c, _s in got] == list(range(len(chunks)))
    assert [(c, s) for _t, c, s in got] == inline


def test_pool_passes_an_emit_error_on() -> None:
    def emit(tag: int, _codec: Codec, _stored: bytes) -> None:
        if tag == 3:
            raise StorageError("disk full")

    pool: ChunkPool[int] = ChunkPool(Compressor(Codec.ZSTD), emit, 2)
    with pytest.raises(StorageError, match="disk full"):
        for i, c in enumerate(_chunks(10)):
            pool.submit(i, c)
        pool.drain()
    pool.close()
    pool.close()  # idempotent


def test_flush_behind_syncs_in_steps(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    flusher = FlushBehind(fd, path, step=1 << 16, max_behind=1)
    try:
        written = 0
        for _ in range(20):
            written += os.write(fd, os.urandom(40_000))
            flusher.written(written)
        flusher.close()
        flusher.close()  # idempotent
    finally:
        os.close(fd)
    assert path.stat().st_size == written


def test_flush_behind_reports_a_failed_sync(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = 1 << 20  # far above any open descriptor: every sync fails (EBADF)
    flusher = FlushBehind(fd, path, step=1, max_behind=1)
    with pytest.raises(StorageError):
        for end in range(1, 1000):
            flusher.written(end)
        flusher.close()
    flusher.abandon()
