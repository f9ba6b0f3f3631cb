"""One generation of a table's ``.ARZ`` data: its file header, block index and block reads.

The file header records the generation and its *base state* as published (row count, next
row id, data length, blocks, raw bytes, generation commit seq). For generation 1 that is the
empty table; for a generation written by ``optimize`` it is the whole table at the publish,
so the header alone can roll the ``.ARM`` forward if a crash hits between the data rename
and the meta write (see ``recovery.py``).

Block index: kept in memory per open :class:`DataFile`, built lazily on the first read by
walking block headers from the header to the committed length (the one block walk,
:class:`~lamina.engines.archive.walker.BlockWalker`) and extended incrementally as later
snapshots see more committed data. It is never stored, so it can never be stale;
``optimize`` keeps the block count, and so the walk, small.

A DataFile is shared by all threads of one ``ArchiveTable``; every scan/get holds a
reference, so an ``optimize`` that swaps in a new generation only retires the old one and its
descriptor (which keeps the replaced inode alive) is closed when the last reader finishes.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.engines.archive.block import BlockHeader, decode_header, decode_payload
from lamina.engines.archive.format import (
    ARZ_HEADER_BODY,
    ARZ_HEADER_CHECKSUM,
    ARZ_HEADER_SIZE,
    ARZ_MAGIC,
    ARZ_VERSION,
    BLOCK_HEADER_SIZE,
)
from lamina.engines.archive.meta import Meta
from lamina.engines.archive.walker import BlockWalker
from lamina.errors import CorruptionError, NotADatabaseError, VersionError

#: Decoded blocks kept per DataFile for ``get`` (sequential gets hit the same block).
_CACHE_BLOCKS = 4


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The ``.ARZ`` file header: identity plus the generation's base state at publish."""

    table_id: int
    codec: int
    level: int
    generation: int
    block_target: int
    base_row_count: int
    base_next_row_id: int
    base_data_length: int
    base_blocks: int
    base_raw_bytes: int
    generation_commit_seq: int
    #: The block chain's head after the base blocks (CHAIN_START for an empty base).
    base_chain_head: bytes

    def encode(self) -> bytes:
        """The 128 header bytes."""
        body = ARZ_HEADER_BODY.pack(
            ARZ_MAGIC, ARZ_VERSION, ARZ_HEADER_SIZE, self.table_id, self.codec, self.level,
            0, self.generation, self.block_target, 0, self.base_row_count,
            self.base_next_row_id, self.base_data_length, self.base_blocks,
            self.base_raw_bytes, self.generation_commit_seq, self.base_chain_head)
        return body + ARZ_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))

    @classmethod
    def decode(cls, raw: bytes, path: Path) -> FileHeader:
        """Validate magic, version, checksum; raises NotADatabaseError / VersionError /
        CorruptionError."""
        if len(raw) < ARZ_HEADER_SIZE:
            if raw[:len(ARZ_MAGIC)] != ARZ_MAGIC[:len(raw)]:
                raise NotADatabaseError(f"{path} is not an archive data file (bad magic)")
            raise CorruptionError(f"archive data file header cut short ({len(raw)} bytes)",
                                  path=path)
        fields = ARZ_HEADER_BODY.unpack_from(raw)
        if fields[0] != ARZ_MAGIC:
            raise NotADatabaseError(f"{path} is not an archive data file (bad magic)")
        if fields[1] > ARZ_VERSION:
            raise VersionError(f"{path} is archive data format version {fields[1]}; this build "
                               f"knows up to {ARZ_VERSION}")
        if fields[1] == 1:
            raise VersionError(f"{path} was made by an older format (archive data format "
                               f"version 1, without the block chain); this build reads "
                               f"version {ARZ_VERSION} only")
        (checksum,) = ARZ_HEADER_CHECKSUM.unpack_from(raw, ARZ_HEADER_BODY.size)
        if checksum != xxhash.xxh3_64_intdigest(raw[:ARZ_HEADER_BODY.size]):
            raise CorruptionError("archive data file header checksum mismatch", path=path,
                                  where="offset 0")
        if fields[1] < 1 or fields[2] != ARZ_HEADER_SIZE:
            raise CorruptionError("archive data file header has a bad version or size",
                                  path=path, where="offset 0")
        (_m, _v, _s, table_id, codec_id, level, _r, generation, block_target, _r2, rows,
         next_id, length, blocks, raw_bytes, gen_seq, head) = fields
        return cls(table_id, codec_id, level, generation, block_target, rows, next_id, length,
                   blocks, raw_bytes, gen_seq, head)


def meta_from_header(header: FileHeader, prev: Meta) -> Meta:
    """The meta of a generation whose data file was renamed into place but whose meta was
    not yet rolled forward (an optimize publish cut short, or in flight): ``prev`` (the meta
    of the generation before) with the header's base state."""
    return prev.replace(
        generation=header.generation, row_count=header.base_row_count,
        next_row_id=header.base_next_row_id, data_length=header.base_data_length,
        blocks=header.base_blocks, raw_bytes=header.base_raw_bytes,
        generation_commit_seq=header.generation_commit_seq,
        chain_head=header.base_chain_head,
        last_commit_seq=max(prev.last_commit_seq, header.generation_commit_seq))


def read_header(fd: int, path: Path) -> FileHeader:
    """Read and validate the file header of an open ``.ARZ``."""
    return FileHeader.decode(fileio.pread(fd, ARZ_HEADER_SIZE, 0, path), path)


def read_header_at(path: Path) -> FileHeader | None:
    """The header of the file at ``path``, or None if it does not exist."""
    try:
        fd = fileio.open_fd(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return read_header(fd, path)
    finally:
        fileio.close_fd(fd, path)


class DataFile:
    """An open ``.ARZ`` of one generation. Thread-safe; reference-counted by snapshots."""

    def __init__(self, path: Path, fd: int, header: FileHeader, table: str) -> None:
        self.path = path
        self.fd = fd
        self.header = header
        self.table = table
        self.identity = fileio.identity(fd, path)
        self._lock = threading.Lock()
        self._refs = 0
        self._retired = False
        # Index: parallel lists, append-only (readers index them without the lock).
        self.first_ids: list[int] = []
        self.blocks: list[BlockHeader] = []
        self.indexed_to = ARZ_HEADER_SIZE
        self._cache: OrderedDict[int, list[bytes]] = OrderedDict()

    @classmethod
    def open(cls, path: Path, table: str, *, writable: bool) -> DataFile:
        """Open and validate the header; FileNotFoundError propagates (caller words it)."""
        fd = fileio.open_fd(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            return cls(path, fd, read_header(fd, path), table)
        except BaseException:
            fileio.close_fd(fd, path)
            raise

    # ------------------------------------------------------------ references
    def acquire(self) -> None:
        """Take a reference (a snapshot is using this generation)."""
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        """Drop a reference; closes the descriptor if retired and unused."""
        with self._lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self._close_fd()

    def retire(self) -> None:
        """No new snapshot will use this file; close once the last reader releases it."""
        with self._lock:
            self._retired = True
            close = self._refs == 0
        if close:
            self._close_fd()

    def _close_fd(self) -> None:
        with self._lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            fileio.close_fd(fd, self.path)

    # ------------------------------------------------------------ index
    def ensure_index(self, upto: int) -> int:
        """Index every block ending at or before ``upto`` (a committed length); returns the
        number of indexed blocks below ``upto``. Raises CorruptionError on a bad header."""
        with self._lock:
            self._walk(upto)
        return self.block_count_below(upto)

    def _walk(self, upto: int) -> None:
        """Extend the index up to ``upto`` (under ``_lock``). CorruptionError if ``upto``
        (a committed length from the meta) lies past the end of the file: every block
        length is then bounded by the file before any block is read."""
        if upto <= self.indexed_to:
            return
        size = fileio.file_size(self.fd)
        if upto > size:
            raise CorruptionError(f"committed length {upto} is past the end of the data file "
                                  f"({size} bytes)", path=self.path)
        expected = self.blocks[-1].last_row_id + 1 if self.blocks else 1
        walker = BlockWalker(self.table, self.path, upto, start=self.indexed_to,
                             first_row=expected)
        for header in walker.headers(self.fd):
            self.blocks.append(header)
            self.first_ids.append(header.first_row_id)
            self.indexed_to = header.end

    def note_appended(self, headers: list[BlockHeader], old_end: int) -> None:
        """Add blocks the writer itself just appended, if the index already reaches them."""
        with self._lock:
            if self.indexed_to == old_end:
                for h in headers:
                    self.blocks.append(h)
                    self.first_ids.append(h.first_row_id)
                self.indexed_to = headers[-1].end if headers else old_end

    def find(self, row_id: int, upto: int) -> int:
        """Index of the block holding ``row_id`` among blocks below ``upto`` (or its count if
        past the end)."""
        with self._lock:
            self._walk(upto)
        i = bisect.bisect_right(self.first_ids, row_id) - 1
        return max(i, 0)

    def block_count_below(self, upto: int) -> int:
        """Number of indexed blocks ending at or before ``upto`` (call ``find`` first)."""
        lo, hi = 0, len(self.blocks)
        while lo < hi:  # blocks are in offset order; binary search on their end
            mid = (lo + hi) // 2
            if self.blocks[mid].end <= upto:
                lo = mid + 1
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------ reads
    def read_rows(self, header: BlockHeader) -> list[bytes]:
        """The rows of one block, every checksum verified (header re-verified too)."""
        raw = fileio.pread(self.fd, BLOCK_HEADER_SIZE + header.stored_length, header.offset,
                           self.path)
        again = decode_header(raw[:BLOCK_HEADER_SIZE], header.offset, self.table, self.path,
                              header.first_row_id)
        if again != header:
            raise CorruptionError("block header changed since it was indexed", path=self.path,
                                  where=header.where(self.table))
        return decode_payload(header, raw[BLOCK_HEADER_SIZE:], self.table, self.path)

    def cached_rows(self, header: BlockHeader) -> list[bytes]:
        """Like :meth:`read_rows` with a small LRU cache (for point reads)."""
        with self._lock:
            rows = self._cache.get(header.offset)
            if rows is not None:
                self._cache.move_to_end(header.offset)
                return rows
        rows = self.read_rows(header)
        with self._lock:
            self._cache[header.offset] = rows
            while len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        return rows


__all__ = ["DataFile", "FileHeader", "meta_from_header", "read_header", "read_header_at"]
