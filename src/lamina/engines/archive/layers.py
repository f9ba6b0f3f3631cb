"""Archive side of backup chains: assemble a table at a chain's last validity point from a
whole stream and the tails of the layers after it.

An archive data file only grows within a generation, so a table at the last VP is the
bytes ``[0, P_n)`` of its generation: the image W where it was last sent whole (the full
image, or the layer where it was created, re-created or optimized) holds ``[0, P_W)``, and
each later layer *i* holds the tail ``[P_{i-1}, P_i)``. Every part is written at its own
offset, so the images can be read in any order (the chain reads them newest first, for
the btree pages); each byte is written once. The meta written at the end is the one the
last image sent. Tables absent from the last image are not restored (a dropped table's
files never survive a chain restore).

Not thread-safe: one assembler is used by one thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from lamina.core import fileio
from lamina.core.driver import TableSpec
from lamina.core.names import validate_table_name
from lamina.engines.archive.format import arm_path, arz_path
from lamina.engines.archive.meta import Meta, read_meta_file
from lamina.engines.archive.proof import DataChecker, check_stream_meta, recheck_data_file
from lamina.engines.archive.stream import STREAM_HEAD_SIZE, STREAM_HEADER_SIZE, StreamHeader
from lamina.errors import AlreadyExistsError, ChainError, CorruptionError, StorageError


@dataclass(frozen=True, slots=True)
class TablePart:
    """What image ``image`` (its index in the chain) contributes to a table: the data file
    bytes ``[start, position)`` as of its VP commit seq ``vp_seq``; ``start`` 0 is a whole
    stream. A tail's blocks hold row ids from ``first_row`` and commit seqs >= ``min_seq``
    (committed after its base VP)."""

    image: int
    start: int
    position: int
    vp_seq: int
    first_row: int = 1
    min_seq: int = 0
    #: How errors name the part ("" : by its image index).
    label: str = ""


class TableAssembler:
    """Builds ``directory/T.ARZ`` and ``T.ARM`` of one table from its :class:`TablePart`\\ s
    (the last one is the chain's last image). Get a reader per image with :meth:`reader`,
    feed it that image's stream of the table, then call :meth:`finish` once every image was
    read. :meth:`abort` removes what was written. Raises CorruptionError, ChainError,
    AlreadyExistsError, StorageError.
    """

    def __init__(self, directory: Path, spec: TableSpec, parts: Sequence[TablePart]) -> None:
        if not parts:
            raise ChainError(f"archive table {spec.name!r} has no part in the chain")
        self.name = validate_table_name(spec.name)  # never a path outside the directory
        self.spec = spec
        self.arz_path = arz_path(directory, self.name)
        self.arm_path = arm_path(directory, self.name)
        self.parts = {p.image: p for p in parts}
        self.final = max(parts, key=lambda p: p.image)
        #: The last image's meta and ``.ARM`` bytes (set when its stream is read).
        self.meta: Meta | None = None
        self.arm_bytes = b""
        self._readers: dict[int, TableStreamReader] = {}
        self._fd = -1
        self._covered = 0
        self._created: list[Path] = []

    def extend(self, part: TablePart) -> None:
        """Add ``part`` after the last one (an "at end" image's final section, whose place
        is known only once its header was read); it becomes the final part. ChainError if
        it is not after every part, or its image was read already."""
        if part.image <= self.final.image or part.image in self._readers:
            raise ChainError(f"archive table {self.name!r}: part {part.image} is not after "
                             f"part {self.final.image}")
        self.parts[part.image] = part
        self.final = part

    def reader(self, image: int) -> TableStreamReader | None:
        """The reader for this table's stream in image ``image``, or None when that image
        does not contribute (an image before the table's last whole stream)."""
        part = self.parts.get(image)
        if part is None:
            return None
        if image in self._readers:
            raise ChainError(f"archive table {self.name!r}: image {image} read twice")
        reader = TableStreamReader(self, part)
        self._readers[image] = reader
        return reader

    def write(self, offset: int, data: bytes) -> None:
        """Write proven data file bytes at ``offset`` (creating the file exclusively)."""
        if not data:
            return
        if self._fd < 0:
            try:
                self._fd = fileio.create_new(self.arz_path)
            except FileExistsError as exc:
                raise AlreadyExistsError(f"{self.arz_path} already exists in the restore "
                                         "destination") from exc
            self._created.append(self.arz_path)
        fileio.pwrite(self._fd, data, offset, self.arz_path)
        self._covered += len(data)

    def finish(self) -> None:
        """Every part arrived whole and the bytes cover ``[0, P_n)`` exactly once: sync the
        data file, re-read it whole from disk against the last meta (header, every block
        checksum, continuity, totals), then write ``T.ARM`` (temporary file, fsync, rename)
        and read it back."""
        missing = sorted(set(self.parts) - {i for i, r in self._readers.items() if r.ended})
        if missing:
            raise CorruptionError(f"archive table {self.name!r}: no complete stream in "
                                  f"image(s) {missing} of the chain")
        meta = self.meta
        if meta is None or self._covered != meta.data_length or self._fd < 0:
            raise CorruptionError(f"archive table {self.name!r}: the chain's parts cover "
                                  f"{self._covered} bytes, the last VP has "
                                  f"{None if meta is None else meta.data_length}")
        fd, self._fd = self._fd, -1
        try:
            fileio.fsync(fd, self.arz_path)
        finally:
            fileio.close_fd(fd, self.arz_path)
        recheck_data_file(self.arz_path, self.name, self.spec.table_id, meta, None)
        self._created.append(self.arm_path)
        fileio.atomic_write_file(self.arm_path, self.arm_bytes, sync=True)
        if read_meta_file(self.arm_path).meta != meta:
            raise CorruptionError("restored meta file does not read back", path=self.arm_path)

    def abort(self) -> None:
        """Close and remove every file this assembler created (never raises)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with suppress(StorageError):
                fileio.close_fd(fd, self.arz_path)
        for path in self._created:
            for p in (path, path.with_name(path.name + ".tmp")):
                with suppress(StorageError):
                    fileio.unlink(p)
        self._created.clear()


class TableStreamReader:
    """Parses one image's stream of one table (whole or tail) fed in pieces of any size:
    the header against the expected part (table id, VP seq, start, position), the meta
    (:func:`check_stream_meta`), then every block (:class:`DataChecker`, payloads decoded);
    proven bytes go to the assembler at their data file offsets."""

    def __init__(self, assembler: TableAssembler, part: TablePart) -> None:
        self.assembler = assembler
        self.part = part
        self.ended = False
        self.label = (f"archive stream of table {assembler.name!r} "
                      f"({part.label or f'chain image {part.image}'})")
        self._head = bytearray()
        self._header: StreamHeader | None = None
        self._data: DataChecker | None = None
        self._received = 0

    def _where(self) -> str:
        return f"{self.label}, offset {self._received}"

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the stream (``last``: its final piece)."""
        if self.ended:
            if len(data):
                raise CorruptionError("data after the stream's last block", where=self._where())
            return
        view = memoryview(data)
        if self._data is None:
            take = min(STREAM_HEAD_SIZE - len(self._head), len(view))
            self._head += view[:take]
            view = view[take:]
            self._received += take
            if len(self._head) == STREAM_HEAD_SIZE:
                self._start(bytes(self._head))
        if len(view):
            checker = self._data
            assert checker is not None
            at = checker.offset
            proven = checker.feed(view)
            self._received += len(view)
            self.assembler.write(at, proven)
        if last:
            if self._data is None or not self._data.complete:
                raise CorruptionError("stream ends before the VP position", where=self._where())
            self._data.finish()
            self.ended = True

    def finish(self) -> None:
        """Require the whole stream was read (CorruptionError otherwise)."""
        if not self.ended:
            raise CorruptionError("stream incomplete", where=self._where())

    def _start(self, head: bytes) -> None:
        part, spec = self.part, self.assembler.spec
        header = StreamHeader.decode(head[:STREAM_HEADER_SIZE], spec.name)
        got = (header.table_id, header.vp_seq, header.base_position, header.data_length)
        want = (spec.table_id, part.vp_seq, part.start, part.position)
        if got != want:
            raise ChainError(f"{self.label}: stream (table id, VP seq, start, end) {got} does "
                             f"not continue the chain as its VP facts say {want}")
        arm = head[STREAM_HEADER_SIZE:]
        meta = check_stream_meta(arm, header, spec, self.label,
                                 f"{self.label}, offset {STREAM_HEADER_SIZE}")
        if part is self.assembler.final:
            self.assembler.meta = meta
            self.assembler.arm_bytes = arm
        self._header = header
        self._data = DataChecker(self.assembler.name, spec.table_id, meta, self.label,
                                 decode=True, start=part.start, first_row=part.first_row,
                                 min_seq=part.min_seq)
        self._head = bytearray()


__all__ = ["TableAssembler", "TablePart", "TableStreamReader"]
