"""The archive native backup stream format (docs/format.md, "Archive native backup stream"
and "Layer streams and chains").

Stream of table N (local stream N of the archive driver; stream 0 stays empty)::

    stream header (64)   T.ARM as of the VP (1,024)   T.ARZ bytes [start, VP position)

``start`` is 0 for a whole stream (version 1). A layer's *tail* stream (version 2) starts at
the base position B recorded in its header: only the blocks committed after the base VP.
The meta travels as a whole ``.ARM`` file whose two slots both hold the VP state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from lamina.engines.archive.format import ARM_FILE_SIZE, ARZ_HEADER_SIZE
from lamina.errors import CorruptionError, VersionError

#: Driver name in the image catalog and version of the stream format it writes.
DRIVER_NAME = "archive"
DRIVER_VERSION = 1

STREAM_MAGIC = b"LARSTRM\x00"
STREAM_VERSION = 1
#: Version of a *tail* stream (layers only): bytes 48..55 hold the base position.
TAIL_STREAM_VERSION = 2
#: Stream header body (checksummed): magic 8s, version u32, header size u32, meta length
#: u32, table id u32, VP commit seq u64, data length u64 (= the VP position), xxh3_64 of the
#: meta bytes u64, 8 bytes that are zero in version 1 and hold the base position (where the
#: tail starts, :data:`STREAM_BASE`) in version 2.
STREAM_HEADER_BODY = struct.Struct("<8sIIIIQQQ8x")
STREAM_BASE = struct.Struct("<Q")
STREAM_BASE_OFFSET = 48
STREAM_HEADER_CHECKSUM = struct.Struct("<Q")
STREAM_HEADER_SIZE = STREAM_HEADER_BODY.size + STREAM_HEADER_CHECKSUM.size  # 64
#: The meta travels as a whole ``.ARM`` file (both slots hold the VP state).
STREAM_META_SIZE = ARM_FILE_SIZE
#: Stream bytes before the data: the header and the meta.
STREAM_HEAD_SIZE = STREAM_HEADER_SIZE + STREAM_META_SIZE


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The 64-byte header that opens every table stream. ``base_position`` is 0 for a whole
    stream (version 1) and the data file offset where a layer's tail starts (version 2)."""

    table_id: int
    vp_seq: int
    data_length: int
    meta_checksum: int
    meta_length: int = STREAM_META_SIZE
    base_position: int = 0

    @property
    def is_tail(self) -> bool:
        """True for a layer's tail stream (data from ``base_position`` on)."""
        return self.base_position != 0

    def encode(self) -> bytes:
        """The 64 header bytes."""
        version = TAIL_STREAM_VERSION if self.base_position else STREAM_VERSION
        body = STREAM_HEADER_BODY.pack(STREAM_MAGIC, version, STREAM_HEADER_SIZE,
                                       self.meta_length, self.table_id, self.vp_seq,
                                       self.data_length, self.meta_checksum)
        body = body[:STREAM_BASE_OFFSET] + STREAM_BASE.pack(self.base_position)
        return body + STREAM_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))

    @classmethod
    def decode(cls, raw: bytes, table: str) -> StreamHeader:
        """Validate magic, then version, then checksum, then the fields.

        Raises CorruptionError (naming the table and stream offset 0) or VersionError (a
        stream written by a newer build).
        """
        where = f"archive stream of table {table!r}, offset 0"
        if len(raw) < STREAM_HEADER_SIZE:
            raise CorruptionError("archive stream header cut short", where=where)
        fields = STREAM_HEADER_BODY.unpack_from(raw)
        magic, version, size, meta_len, table_id, vp_seq, length, meta_sum = fields
        (base,) = STREAM_BASE.unpack_from(raw, STREAM_BASE_OFFSET)
        if magic != STREAM_MAGIC:
            raise CorruptionError("bad archive stream magic", where=where)
        if version > TAIL_STREAM_VERSION:
            raise VersionError(f"archive stream of table {table!r} is version {version}; this "
                               f"build reads up to {TAIL_STREAM_VERSION}")
        (checksum,) = STREAM_HEADER_CHECKSUM.unpack_from(raw, STREAM_HEADER_BODY.size)
        if checksum != xxhash.xxh3_64_intdigest(raw[:STREAM_HEADER_BODY.size]):
            raise CorruptionError("archive stream header checksum mismatch", where=where)
        if version < 1 or size != STREAM_HEADER_SIZE or meta_len != STREAM_META_SIZE:
            raise CorruptionError(f"archive stream header has a bad version, size or meta "
                                  f"length ({version}, {size}, {meta_len})", where=where)
        if version == STREAM_VERSION and base:
            raise CorruptionError("archive stream header reserved bytes are not zero",
                                  where=where)
        if length < ARZ_HEADER_SIZE:
            raise CorruptionError(f"archive stream data length {length} is shorter than a "
                                  f"data file header", where=where)
        if version == TAIL_STREAM_VERSION and not ARZ_HEADER_SIZE <= base <= length:
            raise CorruptionError(f"archive tail stream starts at {base}, outside "
                                  f"{ARZ_HEADER_SIZE}..{length}", where=where)
        return cls(table_id, vp_seq, length, meta_sum, meta_len, base)


__all__ = [
    "DRIVER_NAME",
    "DRIVER_VERSION",
    "STREAM_HEADER_BODY",
    "STREAM_HEADER_CHECKSUM",
    "STREAM_HEADER_SIZE",
    "STREAM_HEAD_SIZE",
    "STREAM_MAGIC",
    "STREAM_META_SIZE",
    "STREAM_VERSION",
    "TAIL_STREAM_VERSION",
    "StreamHeader",
]
