"""Block payload compression: ``zstd`` (default), ``zlib`` (the seed's), ``none``.

A codec is named in the ``.ARM``, the ``.ARZ`` header and every block header by its id
(``format.CODEC_*``). An id this build does not know, or a known codec whose library is
missing (``zstandard`` not installed), raises :class:`UnsupportedError`.

Thread safety: ``zstandard`` compressor/decompressor objects must not be shared between
threads, so each thread keeps its own (created on first use).
"""

from __future__ import annotations

import threading
import zlib
from types import ModuleType

from lamina.engines.archive import format as F
from lamina.errors import UnsupportedError, UsageError

_zstd: ModuleType | None
try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - zstandard is a declared dependency
    _zstd = None

_local = threading.local()


def available(codec_id: int) -> bool:
    """True if this build can compress and decompress ``codec_id``."""
    if codec_id == F.CODEC_ZSTD:
        return _zstd is not None
    return codec_id in (F.CODEC_NONE, F.CODEC_ZLIB)


def require(codec_id: int, context: str = "") -> None:
    """Raise :class:`UnsupportedError` unless ``codec_id`` is usable here."""
    if available(codec_id):
        return
    label = F.CODEC_NAMES.get(codec_id, f"id {codec_id}")
    where = f" ({context})" if context else ""
    if codec_id in F.CODEC_NAMES:
        raise UnsupportedError(f"codec {label} is not available in this build{where}")
    raise UnsupportedError(f"unknown codec {label}{where}")


def resolve(name: str, level: int | None) -> tuple[int, int]:
    """Map a codec name and optional level to ``(codec_id, level)``; UsageError if invalid."""
    if name not in F.CODEC_IDS:
        raise UsageError(f"unknown codec {name!r}; choose one of {', '.join(F.CODEC_IDS)}")
    codec_id = F.CODEC_IDS[name]
    require(codec_id)
    if level is None:
        level = F.DEFAULT_LEVELS[name]
    low, high = F.LEVEL_RANGES[name]
    if not low <= level <= high:
        raise UsageError(f"codec {name} level must be in {low}..{high}, not {level}")
    return codec_id, level


def _zstd_compressor(level: int) -> object:
    cache: dict[int, object] | None = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    comp = cache.get(level)
    if comp is None:
        assert _zstd is not None
        comp = cache[level] = _zstd.ZstdCompressor(level=level)
    return comp


def _zstd_decompressor() -> object:
    dec = getattr(_local, "zd", None)
    if dec is None:
        assert _zstd is not None
        dec = _local.zd = _zstd.ZstdDecompressor()
    return dec


def compress(codec_id: int, level: int, raw: bytes) -> bytes:
    """Compress ``raw`` with ``codec_id`` at ``level``."""
    if codec_id == F.CODEC_ZSTD:
        require(codec_id)
        return bytes(_zstd_compressor(level).compress(raw))  # type: ignore[attr-defined]
    if codec_id == F.CODEC_ZLIB:
        return zlib.compress(raw, level)
    if codec_id == F.CODEC_NONE:
        return raw
    require(codec_id)
    raise AssertionError("unreachable")  # pragma: no cover


def decompress(codec_id: int, stored: bytes, raw_length: int) -> bytes:
    """Decompress a payload that must expand to exactly ``raw_length`` bytes.

    Raises :class:`UnsupportedError` for an unusable codec and ``ValueError`` if the bytes do
    not decompress (the caller turns that into a CorruptionError naming the block).
    """
    if codec_id == F.CODEC_ZSTD:
        require(codec_id)
        assert _zstd is not None
        try:
            out = _zstd_decompressor().decompress(  # type: ignore[attr-defined]
                stored, max_output_size=raw_length)
        except _zstd.ZstdError as exc:
            raise ValueError(f"zstd: {exc}") from exc
        return bytes(out)
    if codec_id == F.CODEC_ZLIB:
        try:
            d = zlib.decompressobj()
            out = d.decompress(stored, raw_length)
            if d.unconsumed_tail or not d.eof:
                raise ValueError("zlib stream longer than the raw length or truncated")
            return out
        except zlib.error as exc:
            raise ValueError(f"zlib: {exc}") from exc
    if codec_id == F.CODEC_NONE:
        return stored
    require(codec_id)
    raise AssertionError("unreachable")  # pragma: no cover
