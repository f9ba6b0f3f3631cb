"""Proving what an archive backup stream carries, whatever the buffer boundaries: used by
the restore driver (:mod:`~lamina.engines.archive.restore_driver`) and by the chain's table
assembler (:mod:`~lamina.engines.archive.layers`).

* :func:`check_stream_meta`: the ``.ARM`` bytes of a stream against its header and the
  table spec;
* :class:`DataChecker`: the ``.ARZ`` bytes (file header, then every block, through the one
  block walk :class:`~lamina.engines.archive.walker.BlockWalker`) fed in pieces of any
  size; it returns the proven prefix of what it was fed, so only proven bytes are written;
* :func:`recheck_data_file`: a restored, synced ``.ARZ`` read back from disk.

Not thread-safe: one checker is used by one thread.
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.core.driver import TableSpec
from lamina.engines.archive import codec
from lamina.engines.archive.block import BlockHeader, decode_payload
from lamina.engines.archive.chain import ChainHasher
from lamina.engines.archive.datafile import FileHeader, read_header_at
from lamina.engines.archive.format import (
    ARZ_HEADER_SIZE,
    BLOCK_HEADER_SIZE,
    MAX_BLOCK_RAW,
    MAX_BLOCK_TARGET,
    MIN_BLOCK_TARGET,
)
from lamina.engines.archive.meta import SLOT_VALID, Meta, decode_file
from lamina.engines.archive.stream import StreamHeader
from lamina.engines.archive.walker import BlockWalker
from lamina.errors import (
    CorruptionError,
    LaminaError,
    NotADatabaseError,
    StorageError,
    VersionError,
)

#: Bytes read per pread when the written data file is re-checked from disk.
_RECHECK_CHUNK = 1024 * 1024


class DataChecker:
    """Proves a ``.ARZ`` byte sequence (file header, then blocks up to ``meta.data_length``)
    fed in pieces of any size; returns the proven prefix of what it was fed.

    ``decode`` also decompresses and splits every payload (the stream check); without it
    only checksums and headers are proven (the re-check of bytes already decoded).

    A layer's tail starts at data file offset ``start`` > 0 (no file header), with block
    row ids from ``first_row`` and commit seqs >= ``min_seq`` (after the base VP); its
    :meth:`finish` can check only the end (next row id and length), not the whole-file
    totals (the assembled file is re-checked whole).
    """

    def __init__(self, table: str, spec_id: int, meta: Meta, label: str, *, decode: bool,
                 start: int = 0, first_row: int = 1, min_seq: int = 0,
                 chain_from: bytes | None = None) -> None:
        self.table = table
        self.spec_id = spec_id
        self.meta = meta
        self.label = label
        self.decode = decode
        self.start = start
        self.offset = start  # file offset of the first byte of ``pending``
        self.pending = bytearray()
        self.header: FileHeader | None = None
        self.walk = BlockWalker(table, label, meta.data_length,
                                start=start or ARZ_HEADER_SIZE, first_row=first_row,
                                limit_name="the VP position")
        self.rows = self.blocks = self.raw_bytes = 0
        self.prev_seq = min_seq
        #: The block chain over the blocks proven so far: from CHAIN_START for a whole
        #: file, from ``chain_from`` (the base's head) for a tail; None: a tail whose
        #: base head is unknown (only the assembled file's re-check proves its chain).
        self.chain: ChainHasher | None = (ChainHasher() if not start else
                                          None if chain_from is None
                                          else ChainHasher(chain_from))

    @property
    def expected(self) -> int:
        """The row id the next block must start at."""
        return self.walk.expected

    @property
    def complete(self) -> bool:
        """True once every byte up to the VP position was proven."""
        return self.offset == self.meta.data_length and not self.pending

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add ``data``; return the newly proven bytes (in file order). Raises
        CorruptionError naming the table and the data file offset, UnsupportedError (a
        codec this build lacks)."""
        end = self.meta.data_length
        if self.offset + len(self.pending) + len(data) > end:
            raise CorruptionError(f"data runs past the VP position {end}", path=self.label,
                                  where=f"table {self.table!r}, offset {end}")
        self.pending += data
        buf = self.pending
        pos = 0
        if self.header is None and self.offset == 0:
            if len(buf) < ARZ_HEADER_SIZE:
                return b""
            self._check_file_header(bytes(buf[:ARZ_HEADER_SIZE]))
            pos = ARZ_HEADER_SIZE
        while len(buf) - pos >= BLOCK_HEADER_SIZE:
            # The walk is at file offset self.offset + pos; lengths are checked before the
            # payload is awaited or allocated.
            h = self.walk.check(buf[pos:pos + BLOCK_HEADER_SIZE])
            if h.raw_length > MAX_BLOCK_RAW:
                raise CorruptionError(f"block raw length {h.raw_length} is impossible",
                                      path=self.label, where=h.where(self.table))
            if len(buf) - pos < BLOCK_HEADER_SIZE + h.stored_length:
                break
            payload = bytes(buf[pos + BLOCK_HEADER_SIZE:pos + BLOCK_HEADER_SIZE
                                + h.stored_length])
            self._check_block(h, payload)
            if self.chain is not None:
                self.chain.add(buf[pos:pos + BLOCK_HEADER_SIZE + h.stored_length])
            self.walk.advance(h)
            pos += BLOCK_HEADER_SIZE + h.stored_length
        proven = bytes(buf[:pos])
        del buf[:pos]
        self.offset += pos
        return proven

    def _check_file_header(self, raw: bytes) -> None:
        try:
            h = FileHeader.decode(raw, Path(self.label))
        except NotADatabaseError as exc:
            raise CorruptionError("bad data file header magic", path=self.label,
                                  where=f"table {self.table!r}, offset 0") from exc
        m = self.meta
        got = (h.table_id, h.generation, h.codec, h.generation_commit_seq)
        want = (self.spec_id, m.generation, m.codec, m.generation_commit_seq)
        if got != want:
            raise CorruptionError(f"data file header (table id, generation, codec, generation "
                                  f"seq) {got} differs from the meta's {want}",
                                  path=self.label, where=f"table {self.table!r}, offset 0")
        self.header = h

    def _check_block(self, h: BlockHeader, payload: bytes) -> None:
        where = h.where(self.table)
        if self.decode:
            decode_payload(h, payload, self.table, self.label)
        elif xxhash.xxh3_64_intdigest(payload) != h.payload_checksum:
            raise CorruptionError("block payload checksum mismatch", path=self.label,
                                  where=where)
        if h.commit_seq < self.prev_seq:
            raise CorruptionError(f"commit seq {h.commit_seq} decreases (previous "
                                  f"{self.prev_seq})", path=self.label, where=where)
        if h.commit_seq > self.meta.last_commit_seq:
            raise CorruptionError(f"block commit seq {h.commit_seq} is after the table's last "
                                  f"commit {self.meta.last_commit_seq}", path=self.label,
                                  where=where)
        self.prev_seq = h.commit_seq
        self.rows += h.row_count
        self.blocks += 1
        self.raw_bytes += h.row_bytes

    def finish(self) -> None:
        """Check the totals against the meta; CorruptionError if anything differs."""
        m = self.meta
        where = f"table {self.table!r}, offset {self.offset + len(self.pending)}"
        if not self.complete:
            raise CorruptionError(f"data ends at offset {self.offset + len(self.pending)}, "
                                  f"before the VP position {m.data_length}", path=self.label,
                                  where=where)
        if self.chain is not None and self.chain.head != m.chain_head:
            raise CorruptionError(f"the blocks' chain head {self.chain.head.hex()} differs "
                                  f"from the meta's {m.chain_head.hex()}", path=self.label,
                                  where=where)
        if self.start:  # a tail: its blocks must end exactly at the VP's next row id
            if self.expected != m.next_row_id:
                raise CorruptionError(f"tail blocks end before row id {self.expected}, the "
                                      f"meta's next row id is {m.next_row_id}",
                                      path=self.label, where=where)
            return
        got = (self.rows, self.expected, self.blocks, self.raw_bytes)
        want = (m.row_count, m.next_row_id, m.blocks, m.raw_bytes)
        if got != want:
            raise CorruptionError(f"blocks hold (rows, next row id, blocks, raw bytes) {got}, "
                                  f"the meta says {want}", path=self.label, where=where)


def check_stream_meta(arm: bytes, header: StreamHeader, spec: TableSpec, label: str,
                      where: str) -> Meta:
    """Validate the ``.ARM`` bytes of a table stream against its header and the table spec:
    hash, both slots valid, table id, data length, row counters, commit seqs <= the VP,
    generation and block target, codec available. Returns the meta. Raises
    CorruptionError (naming ``where``), VersionError, UnsupportedError (codec)."""
    if xxhash.xxh3_64_intdigest(arm) != header.meta_checksum:
        raise CorruptionError("archive meta checksum differs from the stream header's",
                              where=where)
    try:
        read = decode_file(arm, Path(label))
    except VersionError:
        raise
    except LaminaError as exc:  # NotADatabaseError or CorruptionError: a bad image
        raise CorruptionError(f"archive meta does not validate: {exc}", where=where) from exc
    if read.damaged_slots or read.states != (SLOT_VALID, SLOT_VALID):
        raise CorruptionError(f"archive meta slots not all valid: {read.states}", where=where)
    m = read.meta
    problems = []
    if m.table_id != spec.table_id:
        problems.append(f"table id {m.table_id} != {spec.table_id}")
    if m.data_length != header.data_length:
        problems.append(f"data length {m.data_length} != {header.data_length}")
    if m.row_count != m.next_row_id - 1:
        problems.append(f"row count {m.row_count} vs next row id {m.next_row_id}")
    if m.last_commit_seq > header.vp_seq or m.generation_commit_seq > m.last_commit_seq:
        problems.append(f"commit seqs {m.generation_commit_seq}/{m.last_commit_seq} "
                        f"after the VP {header.vp_seq}")
    if m.generation < 1 or not MIN_BLOCK_TARGET <= m.block_target <= MAX_BLOCK_TARGET:
        problems.append("impossible generation or block target")
    if problems:
        raise CorruptionError("archive meta is inconsistent: " + "; ".join(problems),
                              where=where)
    codec.require(m.codec, f"table {spec.name!r}")
    return m


def recheck_data_file(arz: Path, name: str, table_id: int, meta: Meta,
                      header: FileHeader | None) -> None:
    """Read a restored, synced ``.ARZ`` back from disk and prove it against ``meta``: its
    size, its file header (equal to ``header`` when given), every block header and payload
    checksum, row id continuity and the totals. Raises CorruptionError, StorageError."""
    got_header = read_header_at(arz)
    if got_header is None or (header is not None and got_header != header):
        raise CorruptionError("restored data file header does not read back", path=arz)
    check = DataChecker(name, table_id, meta, str(arz), decode=False)
    fd = fileio.open_fd(arz, os.O_RDONLY)
    try:
        if fileio.file_size(fd) != meta.data_length:
            raise CorruptionError(f"restored data file is not {meta.data_length} bytes",
                                  path=arz)
        offset = 0
        while offset < meta.data_length:
            piece = fileio.pread(fd, min(_RECHECK_CHUNK, meta.data_length - offset), offset,
                                 arz)
            if not piece:
                break
            check.feed(piece)
            offset += len(piece)
    finally:
        with suppress(StorageError):
            fileio.close_fd(fd, arz)
    check.finish()


__all__ = ["DataChecker", "check_stream_meta", "recheck_data_file"]
