"""Per-chunk compression for backup images: zstd (default), zlib, none.

Compression is bounded both ways: the writer stores a chunk uncompressed when compressing
does not make it smaller (so stored <= raw always holds), and the reader never produces
more than the chunk's raw length, whatever the payload claims (no decompression bombs).
Not thread-safe: one :class:`Compressor` per writer.
"""

from __future__ import annotations

import zlib

import zstandard

from lamina.backup.image_format import Codec
from lamina.errors import CorruptionError, UnsupportedError, UsageError

#: Names accepted on the command line, in order of preference.
CODEC_NAMES: dict[str, Codec] = {"zstd": Codec.ZSTD, "zlib": Codec.ZLIB, "none": Codec.NONE}
DEFAULT_LEVELS: dict[Codec, int] = {Codec.ZSTD: 3, Codec.ZLIB: 6, Codec.NONE: 0}


def parse_codec(name: str | Codec) -> Codec:
    """``"zstd"``/``"zlib"``/``"none"`` (or a :class:`Codec`) -> Codec; else UsageError."""
    if isinstance(name, Codec):
        return name
    try:
        return CODEC_NAMES[name.lower()]
    except KeyError:
        raise UsageError(f"unknown codec {name!r}; choose one of "
                         f"{', '.join(CODEC_NAMES)}") from None


class Compressor:
    """Compresses chunk payloads with one codec and level."""

    def __init__(self, codec: Codec, level: int | None = None) -> None:
        self.codec = codec
        self.level = DEFAULT_LEVELS[codec] if level is None else level
        # A zstd context is costly to build; reuse one per writer.
        self._zstd = (zstandard.ZstdCompressor(level=self.level, write_content_size=True)
                      if codec == Codec.ZSTD else None)

    def compress(self, data: bytes | bytearray | memoryview) -> tuple[Codec, bytes]:
        """Return (codec actually used, stored bytes); NONE when compression doesn't help."""
        raw = bytes(data)
        if self.codec == Codec.NONE or not raw:
            return Codec.NONE, raw
        if self._zstd is not None:
            packed = self._zstd.compress(raw)
        else:
            packed = zlib.compress(raw, self.level)
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
    if codec == Codec.NONE:
        if len(payload) != raw_length:
            raise CorruptionError("stored length differs from raw length", path=path,
                                  where=where)
        return payload
    try:
        if codec == Codec.ZLIB:
            dobj = zlib.decompressobj()
            out = dobj.decompress(payload, raw_length + 1)  # bounded output
            complete = dobj.eof and not dobj.unused_data and not dobj.unconsumed_tail
        elif codec == Codec.ZSTD:
            # The frame must declare its size; libzstd then refuses to produce more.
            if zstandard.frame_content_size(payload) != raw_length:
                raise CorruptionError("zstd frame size differs from the chunk's raw length",
                                      path=path, where=where)
            zobj = zstandard.ZstdDecompressor().decompressobj()
            out = zobj.decompress(payload)
            complete = zobj.eof and not zobj.unused_data
        else:  # pragma: no cover - the header decoder rejects unknown codecs first
            raise UnsupportedError(f"codec {codec} unknown to this build ({where})")
    except (zlib.error, zstandard.ZstdError, ValueError) as exc:
        raise CorruptionError(f"chunk payload does not decompress: {exc}", path=path,
                              where=where) from exc
    if not complete or len(out) != raw_length:
        raise CorruptionError("chunk payload decompresses to the wrong length", path=path,
                              where=where)
    return out
