"""The one walk over the blocks of an ``.ARZ`` byte range, in file order.

Every reader of block sequences uses it: the data file's block index
(:class:`~lamina.engines.archive.datafile.DataFile`), the backup's cut at a validity point
(:mod:`~lamina.engines.archive.vpcut`), the checker (:mod:`~lamina.engines.archive.check`)
and the proof of a backup stream (:mod:`~lamina.engines.archive.proof`, used by the restore
driver and the chain assembler).

A :class:`BlockWalker` holds the position of a walk: the offset where the next block starts
and the row id it must start at. It validates each header (magic, checksum, sanity, see
:func:`~lamina.engines.archive.block.decode_header`) and, when strict, that row ids are
continuous and that the block ends at or before the walk's limit. It reads headers from an
open file itself (:meth:`BlockWalker.headers`, buffered preads of :data:`WALK_CHUNK`, so
many small blocks cost few system calls), or is handed the header bytes by a caller that is
fed a stream in pieces (:meth:`BlockWalker.check`, then :meth:`BlockWalker.advance`).

Not thread-safe: one walk is used by one thread (a data file walks under its own lock).
"""

from __future__ import annotations

from collections.abc import Iterator

from lamina.core import fileio
from lamina.engines.archive.block import BlockHeader, decode_header
from lamina.engines.archive.format import ARZ_HEADER_SIZE, BLOCK_HEADER_SIZE
from lamina.errors import CorruptionError

#: Bytes read per pread while walking block headers from a file.
WALK_CHUNK = 64 * 1024


class BlockWalker:
    """A walk over the blocks of ``[start, limit)`` of one table's data file.

    ``offset`` is where the next block starts and ``expected`` the row id it must start at
    (``first_row`` at ``start``). ``table`` and ``path`` name the walk in errors;
    ``limit_name`` words the limit ("the committed length", "the VP position").

    Strict (the default): a header whose row ids do not continue the previous block's, or
    which ends past ``limit``, is a CorruptionError. Not strict (the checker, which reports
    every finding instead of stopping at the first): only the header's own validity is
    checked; the caller compares ``header.first_row_id`` with ``expected`` and
    ``header.end`` with ``limit``.
    """

    def __init__(self, table: str, path: object, limit: int, *, start: int = ARZ_HEADER_SIZE,
                 first_row: int = 1, limit_name: str = "the committed length",
                 strict: bool = True) -> None:
        self.table = table
        self.path = path
        self.limit = limit
        self.limit_name = limit_name
        self.strict = strict
        self.offset = start
        self.expected = first_row

    def check(self, raw: bytes | bytearray | memoryview) -> BlockHeader:
        """Validate the header bytes ``raw`` of the block at ``offset``; returns it.

        Raises CorruptionError naming the table, the offset and the rows (or "rows from N"
        when the header itself is damaged), UnsupportedError (flags unknown to this build).
        Does not move the walk: call :meth:`advance` once the block was accepted.
        """
        header = decode_header(bytes(raw), self.offset, self.table, self.path,
                               self.expected if self.strict else None)
        if self.strict and header.end > self.limit:
            raise CorruptionError(f"block runs past {self.limit_name} {self.limit}",
                                  path=self.path, where=header.where(self.table))
        return header

    def advance(self, header: BlockHeader) -> None:
        """Move past ``header`` (the block just checked)."""
        self.offset = header.end
        self.expected = header.last_row_id + 1

    def headers(self, fd: int) -> Iterator[BlockHeader]:
        """The headers of the blocks from ``offset`` up to ``limit``, read from ``fd``.

        The walk moves past a block when the next one is asked for, so a caller that stops
        early (``break``) leaves ``offset``/``expected`` at the block it stopped at, and a
        completed walk leaves them just past the last block. Raises like :meth:`check`, and
        StorageError.
        """
        buf = b""
        buf_start = self.offset
        while self.offset < self.limit:
            rel = self.offset - buf_start
            if rel + BLOCK_HEADER_SIZE > len(buf):
                buf_start, rel = self.offset, 0
                buf = fileio.pread(fd, max(WALK_CHUNK, BLOCK_HEADER_SIZE), self.offset,
                                   self.path)
            header = self.check(buf[rel:rel + BLOCK_HEADER_SIZE])
            yield header
            self.advance(header)


__all__ = ["WALK_CHUNK", "BlockWalker"]
