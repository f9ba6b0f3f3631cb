"""Block payload compression: ``zstd`` (default), ``zlib`` (the seed's), ``none``.

A codec is named in the ``.ARM``, the ``.ARZ`` header and every block header by its id
(``format.CODEC_*``); an id this build does not know raises :class:`UnsupportedError`.
The compression itself is :mod:`lamina.core.compression` (thread-safe, bounded).
"""

from __future__ import annotations

from lamina.core import compression
from lamina.engines.archive.format import (
    CODEC_IDS,
    CODEC_NAMES,
    DEFAULT_LEVELS,
)
from lamina.errors import UnsupportedError, UsageError


def available(codec_id: int) -> bool:
    """True if this build can compress and decompress ``codec_id``."""
    return CODEC_NAMES.get(codec_id) in compression.AVAILABLE


def require(codec_id: int, context: str = "") -> None:
    """Raise :class:`UnsupportedError` unless ``codec_id`` is usable here."""
    if available(codec_id):
        return
    label = CODEC_NAMES.get(codec_id, f"id {codec_id}")
    where = f" ({context})" if context else ""
    if codec_id in CODEC_NAMES:
        raise UnsupportedError(f"codec {label} is not available in this build{where}")
    raise UnsupportedError(f"unknown codec {label}{where}")


def resolve(name: str, level: int | None) -> tuple[int, int]:
    """Map a codec name and optional level to ``(codec_id, level)``; UsageError if invalid
    (levels: :data:`lamina.core.compression.LEVEL_RANGES`; ``none`` takes none)."""
    if name not in CODEC_IDS:
        raise UsageError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_IDS)}")
    codec_id = CODEC_IDS[name]
    require(codec_id)
    compression.check_level(name, level)  # the one table of levels (none: no level)
    return codec_id, DEFAULT_LEVELS[name] if level is None else level


def compress(codec_id: int, level: int, raw: bytes) -> bytes:
    """Compress ``raw`` with ``codec_id`` at ``level``."""
    require(codec_id)
    return compression.compress(CODEC_NAMES[codec_id], level, raw)


def decompress(codec_id: int, stored: bytes, raw_length: int) -> bytes:
    """Decompress a payload that must expand to exactly ``raw_length`` bytes.

    Raises :class:`UnsupportedError` for an unusable codec and ``ValueError`` if the bytes do
    not decompress (the caller turns that into a CorruptionError naming the block).
    """
    require(codec_id)
    return compression.decompress_exact(CODEC_NAMES[codec_id], stored, raw_length)
