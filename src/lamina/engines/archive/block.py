"""Blocks of the ``.ARZ``: building them from rows, validating headers, decoding payloads.

A block is self-describing: its 56-byte header names codec, layout flags, first row id, row
count, commit seq, raw and stored lengths, the payload checksum and its own checksum. The raw
payload is either the rows joined by ``\n`` (when no row contains one: text) or ``row_count``
u32 row lengths followed by the rows; either way a reader splits a block with one C-level
call instead of a per-row loop.

Compression happens in :func:`pack_rows` *before* the commit seq is known, so a commit does
its CPU work outside the commit blocker; :meth:`PendingBlock.encode` stamps the seq.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate, pairwise, repeat
from operator import add

import xxhash

from lamina.engines.archive import codec
from lamina.engines.archive.format import (
    BLOCK_FLAG_LINES,
    BLOCK_FLAGS_KNOWN,
    BLOCK_HEADER_BODY,
    BLOCK_HEADER_CHECKSUM,
    BLOCK_HEADER_SIZE,
    BLOCK_MAGIC,
    LINE_SEPARATOR,
)
from lamina.errors import CorruptionError, UnsupportedError


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """A validated block header and where it sits."""

    offset: int
    codec: int
    flags: int
    first_row_id: int
    row_count: int
    raw_length: int
    stored_length: int
    commit_seq: int
    payload_checksum: int

    @property
    def last_row_id(self) -> int:
        """Row id of the block's last row."""
        return self.first_row_id + self.row_count - 1

    @property
    def end(self) -> int:
        """Offset just past the block."""
        return self.offset + BLOCK_HEADER_SIZE + self.stored_length

    @property
    def row_bytes(self) -> int:
        """Sum of the block's row lengths (what the meta's raw bytes count): the raw payload
        minus the row separators (lines layout) or the u32 length table."""
        if self.flags & BLOCK_FLAG_LINES:
            return self.raw_length - (self.row_count - 1)
        return self.raw_length - 4 * self.row_count

    def where(self, table: str) -> str:
        """Locator for error messages and findings."""
        return (f"table {table!r}, block at offset {self.offset}, "
                f"rows {self.first_row_id}-{self.last_row_id}")


def encode_header(codec_id: int, flags: int, first_row_id: int, row_count: int,
                  raw_length: int, stored_length: int, commit_seq: int,
                  payload_checksum: int) -> bytes:
    """The 56 header bytes of a block."""
    body = BLOCK_HEADER_BODY.pack(BLOCK_MAGIC, codec_id, flags, 0, first_row_id, row_count,
                                    raw_length, stored_length, 0, commit_seq, payload_checksum)
    return body + BLOCK_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def decode_header(raw: bytes, offset: int, table: str, path: object,
                  expected_first: int | None = None) -> BlockHeader:
    """Validate a block header (magic, then checksum, then sanity); CorruptionError if bad.

    ``expected_first`` is the row id the block must start at (continuity), used to name the
    rows in the error when the header itself cannot be trusted.
    """
    rows_hint = f"rows from {expected_first}" if expected_first is not None else "rows unknown"
    where = f"table {table!r}, block at offset {offset}, {rows_hint}"
    if len(raw) < BLOCK_HEADER_SIZE:
        raise CorruptionError("block header cut short", path=path, where=where)
    fields = BLOCK_HEADER_BODY.unpack_from(raw)
    (magic, codec_id, flags, _r16, first, count, raw_len, stored_len, _r32, seq,
     payload_sum) = fields
    if magic != BLOCK_MAGIC:
        raise CorruptionError("bad block magic", path=path, where=where)
    (checksum,) = BLOCK_HEADER_CHECKSUM.unpack_from(raw, BLOCK_HEADER_BODY.size)
    if checksum != xxhash.xxh3_64_intdigest(raw[:BLOCK_HEADER_BODY.size]):
        raise CorruptionError("block header checksum mismatch", path=path, where=where)
    header = BlockHeader(offset, codec_id, flags, first, count, raw_len, stored_len, seq,
                         payload_sum)
    if flags & ~BLOCK_FLAGS_KNOWN:
        raise UnsupportedError(f"block uses flags {flags:#x} unknown to this build "
                               f"({header.where(table)})")
    min_raw = count - 1 if flags & BLOCK_FLAG_LINES else 4 * count
    if count == 0 or raw_len < min_raw:
        raise CorruptionError("block header has impossible row count or raw length", path=path,
                              where=header.where(table))
    if expected_first is not None and first != expected_first:
        raise CorruptionError(f"row ids not continuous: block starts at {first}, expected "
                              f"{expected_first}", path=path, where=header.where(table))
    return header


def decode_payload(header: BlockHeader, stored: bytes, table: str, path: object) -> list[bytes]:
    """Verify a block's payload checksum, decompress it and split it into rows.

    Raises CorruptionError naming the table, block offset and row range, or
    UnsupportedError for a codec this build lacks.
    """
    where = header.where(table)
    if len(stored) != header.stored_length:
        raise CorruptionError("block payload cut short", path=path, where=where)
    if xxhash.xxh3_64_intdigest(stored) != header.payload_checksum:
        raise CorruptionError("block payload checksum mismatch", path=path, where=where)
    codec.require(header.codec, where)
    try:
        raw = codec.decompress(header.codec, stored, header.raw_length)
    except ValueError as exc:
        raise CorruptionError(f"block payload does not decompress: {exc}", path=path,
                              where=where) from exc
    return split_rows(raw, header, table, path)


def split_rows(raw: bytes, header: BlockHeader, table: str, path: object) -> list[bytes]:
    """Split a raw payload into its rows, checking the length table against the raw length."""
    n = header.row_count
    if len(raw) != header.raw_length:
        raise CorruptionError(f"block decompressed to {len(raw)} bytes, header says "
                              f"{header.raw_length}", path=path, where=header.where(table))
    if header.flags & BLOCK_FLAG_LINES:
        rows = raw.split(LINE_SEPARATOR)
        if len(rows) != n:
            raise CorruptionError(f"block holds {len(rows)} rows, header says {n}", path=path,
                                  where=header.where(table))
        return rows
    lengths = struct.unpack_from(f"<{n}I", raw)
    start = 4 * n
    if start + sum(lengths) != len(raw):
        raise CorruptionError("block row lengths do not add up to its raw length", path=path,
                              where=header.where(table))
    ends = list(accumulate(lengths, initial=start))
    return [raw[a:b] for a, b in pairwise(ends)]


@dataclass(slots=True)
class PendingBlock:
    """A compressed block waiting for its commit seq."""

    codec: int
    flags: int
    first_row_id: int
    row_count: int
    raw_length: int
    raw_bytes: int  # sum of the rows' lengths (for stats)
    stored: bytes
    payload_checksum: int

    def encode(self, commit_seq: int) -> bytes:
        """Header (stamped with ``commit_seq``) followed by the payload."""
        return encode_header(self.codec, self.flags, self.first_row_id, self.row_count,
                             self.raw_length, len(self.stored), commit_seq,
                             self.payload_checksum) + self.stored

    @property
    def size(self) -> int:
        """Bytes the block takes in the file."""
        return BLOCK_HEADER_SIZE + len(self.stored)


def pack_block(rows: list[bytes], first_row_id: int, codec_id: int, level: int) -> PendingBlock:
    """Compress ``rows`` (non-empty) into one pending block."""
    n = len(rows)
    sep = LINE_SEPARATOR
    raw = sep.join(rows)
    if raw.count(sep) == n - 1:  # no row contains the separator: the lines layout
        flags, raw_bytes = BLOCK_FLAG_LINES, len(raw) - (n - 1)
    else:
        body = b"".join(rows)
        flags, raw_bytes = 0, len(body)
        raw = struct.pack(f"<{n}I", *map(len, rows)) + body
    stored = codec.compress(codec_id, level, raw)
    return PendingBlock(codec_id, flags, first_row_id, n, len(raw), raw_bytes, stored,
                        xxhash.xxh3_64_intdigest(stored))


def split_for_blocks(rows: list[bytes], target: int) -> Iterator[list[bytes]]:
    """Group rows into runs whose raw payload (4 bytes + row, each) reaches ``target``.

    Every run holds at least one row; a run closes as soon as it reaches the target, so a
    block's raw length is below ``target + 4 + MAX_ROW_BYTES``. (Split points are found with
    C-level accumulate/bisect: this runs on every commit.)
    """
    if not rows:
        return
    ends = list(accumulate(map(add, map(len, rows), repeat(4))))
    if ends[-1] < target:
        yield rows
        return
    start, base = 0, 0
    while start < len(rows):
        # first index whose cumulative size (since ``start``) reaches the target
        stop = bisect.bisect_left(ends, base + target, lo=start) + 1
        yield rows[start:stop]
        base = ends[min(stop, len(rows)) - 1]
        start = stop


def pack_rows(rows: list[bytes], first_row_id: int, codec_id: int, level: int,
              target: int) -> list[PendingBlock]:
    """Split ``rows`` at ``target`` and compress each run into a pending block."""
    blocks = []
    next_id = first_row_id
    for run in split_for_blocks(rows, target):
        blocks.append(pack_block(run, next_id, codec_id, level))
        next_id += len(run)
    return blocks
