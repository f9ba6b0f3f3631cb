"""Archive side of merging a segment of a chain into one layer: one table's bytes at the
segment's last VP, from the part where it was last sent whole (or from the base position
of the segment's first tail) to its VP position.

A data file only grows within a generation (docs/format.md, "Layer streams and chains"), so
a table at the last VP of a segment L1..Ln on a base T is either

* a *tail* on T: every Li sends a tail of the same generation and table id, each starting
  where the previous one ended, L1's at T's position B: the merged layer sends
  ``[B, P_n)``, the concatenation of the tails, exactly what a layer taken on T at Ln's VP
  sends; or
* *whole*: some Lk sent it whole (created, re-created or optimized inside the segment):
  the merged layer sends ``[0, P_n)``, Lk's whole stream and the tails after it, as a
  layer on T taken at Ln's VP would (its generation is not T's).

:class:`TableSpan` collects those bytes (each image's stream proven as a chain restore
proves it: header against the VP facts, meta, every block decoded, row ids, commit seqs,
lengths) into a spool file at their offset minus the span's start, and re-emits them as
one table stream (:meth:`TableSpan.pieces`). The first tail of a segment continues an image
that is not read, so its first row id is taken from its first block (or is the meta's next
row id when the tail is empty) and continuity is proven from there; the block chain head of
a tail is proven when the whole chain is restored (the assembled file is re-checked
against the last meta).

Not thread-safe: one span is used by one thread.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.core.driver import TableSpec
from lamina.engines.archive.block import decode_header
from lamina.engines.archive.format import BLOCK_HEADER_SIZE
from lamina.engines.archive.layers import TableAssembler, TablePart, TableStreamReader
from lamina.engines.archive.meta import decode_file
from lamina.engines.archive.stream import STREAM_HEAD_SIZE, STREAM_HEADER_SIZE, StreamHeader
from lamina.errors import CorruptionError, LaminaError

#: Bytes read per pread when a span is re-emitted.
_READ_CHUNK = 1 << 20


class TableSpan(TableAssembler):
    """The bytes ``[start, position)`` of one table at a segment's last VP (module doc),
    from its :class:`~lamina.engines.archive.layers.TablePart`\\ s (chain order; the last
    is the segment's last image). ``start`` is the first part's start: 0 (sent whole) or
    the base position of the segment's first tail. ``first_unknown``: the first part is
    that tail, whose first row id is read from its stream.

    Use like a :class:`TableAssembler` (:meth:`reader` per image, feed it, :meth:`finish`),
    then :meth:`pieces`; :meth:`abort` removes the spool. The spool ``directory/T.ARZ``
    holds byte ``o`` of the data file at ``o - start``. Raises CorruptionError,
    ChainError, AlreadyExistsError, StorageError.
    """

    def __init__(self, directory: Path, spec: TableSpec, parts: Sequence[TablePart], *,
                 first_unknown: bool) -> None:
        super().__init__(directory, spec, parts)
        self.first = min(parts, key=lambda p: p.image)
        self.start = self.first.start
        self.first_unknown = first_unknown

    def reader(self, image: int) -> TableStreamReader | None:
        """The consumer of image ``image``'s stream of this table (None: no part there)."""
        if self.first_unknown and image == self.first.image:
            if self.parts.get(image) is None or image in self._readers:
                return super().reader(image)
            return _FirstTail(self, self.parts[image])
        return super().reader(image)

    def write(self, offset: int, data: bytes) -> None:
        """Write proven data file bytes at data file offset ``offset``."""
        super().write(offset - self.start, data)

    def finish(self) -> None:
        """Every part arrived whole and the bytes cover ``[start, position)`` once."""
        missing = sorted(set(self.parts) - {i for i, r in self._readers.items() if r.ended})
        if missing:
            raise CorruptionError(f"archive table {self.name!r}: no complete stream in "
                                  f"segment image(s) {missing}")
        meta = self.meta
        want = None if meta is None else meta.data_length - self.start
        if meta is None or self._covered != want:
            raise CorruptionError(f"archive table {self.name!r}: the segment's parts cover "
                                  f"{self._covered} bytes, its last VP needs {want}")
        if self._fd < 0:  # an empty tail: nothing was written
            self._fd = fileio.create_new(self.arz_path)
            self._created.append(self.arz_path)
        fd, self._fd = self._fd, -1
        fileio.close_fd(fd, self.arz_path)  # written for writing only: read it anew
        self._fd = fileio.open_fd(self.arz_path, os.O_RDONLY)

    def stream_header(self, vp_seq: int) -> StreamHeader:
        """The merged stream's header (VP ``vp_seq``, the last meta, this span's start)."""
        meta = self.meta
        assert meta is not None
        return StreamHeader(self.spec.table_id, vp_seq, meta.data_length,
                            xxhash.xxh3_64_intdigest(self.arm_bytes),
                            base_position=self.start)

    def pieces(self, vp_seq: int) -> Iterator[bytes]:
        """The merged table stream: header, the last ``.ARM``, then the span's bytes.
        Call after :meth:`finish`."""
        meta = self.meta
        assert meta is not None and self._fd >= 0
        yield self.stream_header(vp_seq).encode()
        yield self.arm_bytes
        length = meta.data_length - self.start
        offset = 0
        while offset < length:
            piece = fileio.pread(self._fd, min(_READ_CHUNK, length - offset), offset,
                                 self.arz_path)
            if not piece:
                raise CorruptionError("spooled table data is shorter than written",
                                      path=self.arz_path)
            offset += len(piece)
            yield piece


class _FirstTail(TableStreamReader):
    """The reader of a segment's first tail: buffers the stream head and its first block
    header, takes the first row id from there, then proves the stream like any part."""

    def __init__(self, span: TableSpan, part: TablePart) -> None:
        super().__init__(span, part)
        self.span = span
        self._held = bytearray()
        self._started = False

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the stream (``last``: its final piece)."""
        if self._started:
            super().feed(data, last)
            return
        self._held += data
        empty = self.part.start == self.part.position
        need = STREAM_HEAD_SIZE + (0 if empty else BLOCK_HEADER_SIZE)
        if len(self._held) < need and not last:
            return
        first_row = 1
        if empty:
            first_row = self._next_row_id()
        elif len(self._held) >= need:
            head = bytes(self._held[STREAM_HEAD_SIZE:need])
            first_row = decode_header(head, self.part.start, self.span.name,
                                      self.label).first_row_id
        self.part = dataclasses.replace(self.part, first_row=first_row)
        self.span.parts[self.part.image] = self.part
        if self.span.final.image == self.part.image:
            self.span.final = self.part
        self.span._readers[self.part.image] = self
        self._started = True
        held, self._held = bytes(self._held), bytearray()
        super().feed(held, last)

    def _next_row_id(self) -> int:
        """An empty tail's first row id: the meta's next row id (where the tail starts is
        where it ends). 1 when the meta does not decode: the reader then reports it."""
        arm = bytes(self._held[STREAM_HEADER_SIZE:STREAM_HEAD_SIZE])
        try:
            return decode_file(arm, Path(self.label)).meta.next_row_id
        except LaminaError:
            return 1


__all__ = ["TableSpan"]
