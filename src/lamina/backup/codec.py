"""Per-chunk compression for backup images: zstd (default), zlib, none.

Compression is bounded both ways: the writer stores a chunk uncompressed when compressing
does not make it smaller (so stored <= raw always holds), and the reader never produces
more than the chunk's raw length, whatever the payload claims (no decompression bombs).
Not thread-safe: one :class:`Compressor` per writer.
"""

from __future__ import annotations

from lamina.backup.image_format import Codec
from lamina.core import compression
from lamina.errors import CorruptionError, UnsupportedError, UsageError

#: Names accepted on the command line, in order of preference.
CODEC_NAMES: dict[str, Codec] = {"zstd": Codec.ZSTD, "zlib": Codec.ZLIB, "none": Codec.NONE}
#: zstd level 1 by default: on backup data it was 2.2x faster than level 3 for a ratio as
#: good (bench/backup.py); a backup competes with the application for CPU.
DEFAULT_LEVELS: dict[Codec, int] = {Codec.ZSTD: 1, Codec.ZLIB: 6, Codec.NONE: 0}


def parse_codec(name: str | Codec) -> Codec:
    """``"zstd"``/``"zlib"``/``"none"`` (or a :class:`Codec`) -> Codec; else UsageError."""
    if isinstance(name, Codec):
        return name
    try:
        return CODEC_NAMES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown codec {name!r}; choose one of "
                         f"{', '.join(CODEC_NAMES)}") from None


_NAMES: dict[Codec, str] = {Codec.ZSTD: compression.ZSTD, Codec.ZLIB: compression.ZLIB,
                            Codec.NONE: compression.NONE}


def check_level(codec: Codec, level: int | None) -> None:
    """Raise UsageError unless ``codec`` accepts ``level`` (None: its default), by the one
    table of levels, :data:`lamina.core.compression.LEVEL_RANGES` (``none`` takes none).
    Pure."""
    compression.check_level(_NAMES[codec], level)


class Compressor:
    """Compresses chunk payloads with one codec and level (UsageError for a level the
    codec does not accept)."""

    def __init__(self, codec: Codec, level: int | None = None) -> None:
        check_level(codec, level)
        self.codec = codec
        self.level = DEFAULT_LEVELS[codec] if level is None else level

    def compress(self, data: bytes | bytearray | memoryview) -> tuple[Codec, bytes]:
        """Return (codec actually used, stored bytes); NONE when compression doesn't help."""
        raw = bytes(data)
        if self.codec == Codec.NONE or not raw:
            return Codec.NONE, raw
        packed = compression.compress(_NAMES[self.codec], self.level, raw)
        if len(packed) >= len(raw):
            return Codec.NONE, raw
        return self.codec, packed


def decompress(codec: Codec, payload: bytes, raw_length: int, *, path: object = None,
               where: str = "") -> bytes:
    """Decompress one chunk payload to exactly ``raw_length`` bytes.

    Raises CorruptionError if the payload is not one complete frame of exactly that size
    (checked without ever producing more than ``raw_length + 1`` bytes), UnsupportedError
    for a codec this build lacks. Never raises zlib/zstd errors.
    """
    name = _NAMES.get(codec)
    if name is None:  # pragma: no cover - the header decoder rejects unknown codecs first
        raise UnsupportedError(f"codec {codec} unknown to this build ({where})")
    try:
        return compression.decompress_exact(name, payload, raw_length)
    except ValueError as exc:
        raise CorruptionError(f"chunk payload does not decompress: {exc}", path=path,
                              where=where) from exc
