"""The one compression layer every format uses: zstd, zlib, none — bounded both ways.

Formats name codecs by their own ids (a ``.ARZ`` block, an image chunk); they map them to
the names here. Decompression never produces more than the expected raw length, whatever
the stored bytes claim (no decompression bombs), and refuses trailing or missing bytes.
Thread-safe: zstd contexts are kept per thread.
"""

from __future__ import annotations

import threading
import zlib

import zstandard

from lamina.errors import UsageError

ZSTD, ZLIB, NONE = "zstd", "zlib", "none"
CODECS = (ZSTD, ZLIB, NONE)
#: The compression levels each codec accepts: the one table for every format (archive
#: blocks, backup image chunks) and the CLI. ``none`` takes no level (None).
LEVEL_RANGES: dict[str, tuple[int, int] | None] = {ZSTD: (-7, 22), ZLIB: (0, 9), NONE: None}
#: Codecs this build can use. A format naming any other codec is refused with
#: UnsupportedError by its reader (tests remove entries to simulate a lacking build).
AVAILABLE: set[str] = set(CODECS)
_local = threading.local()


def check_level(codec: str, level: int | None) -> None:
    """Raise UsageError unless ``codec`` (a name in :data:`CODECS`) accepts ``level``
    (None, the codec's default, always does). Pure."""
    if level is None:
        return
    if codec not in LEVEL_RANGES:
        raise UsageError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    bounds = LEVEL_RANGES[codec]
    if bounds is None:
        raise UsageError(f"codec {codec} takes no compression level (given {level})")
    low, high = bounds
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise UsageError(f"codec {codec} level must be in {low}..{high}, not {level!r}")


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        # The frame records its content size, so a reader can bound its output.
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def compress(codec: str, level: int, raw: bytes | bytearray | memoryview) -> bytes:
    """``raw`` compressed with ``codec`` at ``level`` (``none`` returns it unchanged)."""
    if codec == ZSTD:
        return bytes(_compressor(level).compress(raw))
    if codec == ZLIB:
        return zlib.compress(raw, level)
    if codec == NONE:
        return bytes(raw)
    raise ValueError(f"unknown codec {codec!r}")


def decompress_exact(codec: str, stored: bytes, raw_length: int) -> bytes:
    """Decompress ``stored`` to exactly ``raw_length`` bytes.

    Raises ValueError (the caller names the block or chunk in its CorruptionError) when the
    bytes do not decompress, are not one complete stream, or expand to another length —
    checked without ever producing more than ``raw_length + 1`` bytes.
    """
    if codec == NONE:
        if len(stored) != raw_length:
            raise ValueError("stored length differs from raw length")
        return stored
    try:
        if codec == ZLIB:
            dobj = zlib.decompressobj()
            out = dobj.decompress(stored, raw_length + 1)
            complete = dobj.eof and not dobj.unused_data and not dobj.unconsumed_tail
        elif codec == ZSTD:
            if zstandard.frame_content_size(stored) != raw_length:
                raise ValueError("zstd frame size differs from the raw length")
            zobj = _decompressor().decompressobj()
            out = zobj.decompress(stored)
            complete = zobj.eof and not zobj.unused_data
        else:
            raise ValueError(f"unknown codec {codec!r}")
    except (zlib.error, zstandard.ZstdError) as exc:
        raise ValueError(f"{codec}: {exc}") from exc
    if not complete or len(out) != raw_length:
        raise ValueError(f"{codec} data decompresses to the wrong length "
                         f"(expected {raw_length} bytes)")
    return out
