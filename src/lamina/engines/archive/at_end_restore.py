"""The archive restore driver of "at end" images: two sections per table, in one pass.

A table's at-end stream (:mod:`lamina.engines.archive.at_end`; docs/format.md, "At-end
streams") is an *initial section* — a whole archive stream of the table as of S0 (data
``[0, L0)``) — then a *final section*: a tail from L0 to the VP position, or (the table was
optimized during the backup) the table whole again. The driver splits the sections at the
length the initial section's own validated header gives
(:class:`~lamina.core.sections.SectionSplitter`) and assembles the data file with the
chain's :class:`~lamina.engines.archive.layers.TableAssembler`: every block is proven
(checksums, row ids, commit seqs: a tail's rows continue the initial section's, its blocks
were committed after it) and written at its offset once. A final section sent whole
replaces the initial one (its files are removed and the table assembled again).

``end()`` checks the assembled table against the VP facts (the final meta, the initial
section's, the VP seq and S0), re-reads the data file and writes the meta. Verifying only
(``lamina verify --deep``), tables are assembled in a temporary directory, removed after.

Concurrency: one driver is used by one thread (the restore kernel's).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lamina.core.driver import RestoreFlags, Result, TableSpec, VpFacts
from lamina.core.names import validate_table_name
from lamina.core.sections import SectionSplitter
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.layers import TableAssembler, TablePart, TableStreamReader
from lamina.engines.archive.meta import Meta
from lamina.engines.archive.restore_driver import ArchiveRestoreBase
from lamina.engines.archive.stream import STREAM_HEAD_SIZE, STREAM_HEADER_SIZE, StreamHeader
from lamina.errors import ChainError, CorruptionError


def initial_section_length(head: bytes, table: str) -> int:
    """Length of a table's at-end initial section from its (validated) 64-byte stream
    header: header and meta, then the data ``[base position, data length)``. Raises as
    :meth:`StreamHeader.decode`."""
    header = StreamHeader.decode(head, table)
    return STREAM_HEAD_SIZE + header.data_length - header.base_position


class AtEndTableRestore:
    """One table of an at-end image: the splitter, the sections' readers and the
    assembler. Raises CorruptionError, ChainError (a section that is a layer's tail on
    something else than its initial section), AlreadyExistsError, StorageError."""

    def __init__(self, spec: TableSpec, directory: Path) -> None:
        self.spec = spec
        self.name = validate_table_name(spec.name)
        self.directory = directory
        self.where = f"at-end archive stream of table {self.name!r}"
        self.initial: StreamHeader | None = None
        self.initial_meta: Meta | None = None
        self.assembler: TableAssembler | None = None
        self._first: TableStreamReader | None = None
        self._second: TableStreamReader | None = None
        self._second_head = bytearray()
        self.splitter = SectionSplitter(STREAM_HEADER_SIZE, self._length, self._feed_first,
                                        self._feed_second, self.where)

    def _length(self, head: bytes) -> int:
        header = StreamHeader.decode(head, self.name)
        if header.is_tail:
            raise ChainError(f"the stream of archive table {self.name!r} is a layer's tail: "
                             "restore it with its chain")
        if header.table_id != self.spec.table_id:
            raise CorruptionError(f"stream is of table id {header.table_id}, the catalog "
                                  f"says {self.spec.table_id}", where=self.where)
        self.initial = header
        part = TablePart(0, 0, header.data_length, header.vp_seq, label="initial section")
        self.assembler = TableAssembler(self.directory, self.spec, [part])
        self._first = self.assembler.reader(0)
        return initial_section_length(head, self.name)

    def _feed_first(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        assert self._first is not None
        self._first.feed(data, last)
        if last:
            assert self.assembler is not None
            self.initial_meta = self.assembler.meta

    def _feed_second(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        view = memoryview(data)
        if self._second is None:
            take = min(STREAM_HEADER_SIZE - len(self._second_head), len(view))
            self._second_head += view[:take]
            view = view[take:]
            if len(self._second_head) < STREAM_HEADER_SIZE:
                if last:
                    raise CorruptionError("stream ends inside its final section's header",
                                          where=self.where)
                return
            head = bytes(self._second_head)
            self._second = self._start_second(StreamHeader.decode(head, self.name))
            self._second.feed(head, False)
        self._second.feed(view, last)

    def _start_second(self, header: StreamHeader) -> TableStreamReader:
        """The reader of the final section: a tail continuing the initial section, or the
        table whole (the initial section's files are then removed)."""
        assembler, first, meta = self.assembler, self.initial, self.initial_meta
        assert assembler is not None and first is not None and meta is not None
        if header.table_id != self.spec.table_id:
            raise CorruptionError(f"final section is of table id {header.table_id}, the "
                                  f"catalog says {self.spec.table_id}", where=self.where)
        if not header.is_tail:
            assembler.abort()  # optimized during the backup: the final section is whole
            part = TablePart(1, 0, header.data_length, header.vp_seq, label="final section")
            self.assembler = TableAssembler(self.directory, self.spec, [part])
        else:
            if header.base_position != first.data_length:
                raise CorruptionError(f"final section starts at {header.base_position}, the "
                                      f"initial section ends at {first.data_length}",
                                      where=self.where)
            part = TablePart(1, header.base_position, header.data_length, header.vp_seq,
                             first_row=meta.row_count + 1, min_seq=meta.last_commit_seq + 1,
                             label="final section")
            assembler.extend(part)
        reader = self.assembler.reader(1) if self.assembler is not None else None
        assert reader is not None
        return reader

    def finish(self, facts: ArchiveTableFacts, vp_seq: int, begin_seq: int) -> None:
        """Prove the table against its VP facts and make it durable (see the module doc)."""
        assembler, first, meta0 = self.assembler, self.initial, self.initial_meta
        if assembler is None or first is None or meta0 is None or self._second is None:
            raise CorruptionError("the image has no complete stream for this table",
                                  where=self.where)
        self._second.finish()
        assembler.finish()
        meta = assembler.meta
        assert meta is not None
        initial = facts.initial
        if initial is None:
            raise CorruptionError(f"archive table {self.name!r}: the at-end VP facts lack "
                                  "'initial'")
        want = {"rows": meta.row_count, "position": meta.data_length,
                "generation": meta.generation, "last_commit_seq": meta.last_commit_seq,
                "start": self._second.part.start, "vp_seq": vp_seq,
                "initial.rows": meta0.row_count, "initial.position": meta0.data_length,
                "initial.generation": meta0.generation,
                "initial.last_commit_seq": meta0.last_commit_seq, "begin_seq": first.vp_seq}
        got = {"rows": facts.rows, "position": facts.position,
               "generation": facts.generation, "last_commit_seq": facts.last_commit_seq,
               "start": facts.base_position, "vp_seq": self._second.part.vp_seq,
               "initial.rows": initial.rows, "initial.position": initial.position,
               "initial.generation": initial.generation,
               "initial.last_commit_seq": initial.last_commit_seq, "begin_seq": begin_seq}
        if want != got:
            raise CorruptionError(f"archive table {self.name!r}: the at-end stream {want} "
                                  f"differs from the image's VP facts {got}")

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the table's at-end stream (``last``: its final piece).
        Raises as the class doc says."""
        self.splitter.feed(data, last)

    def remove(self) -> None:
        """Remove every file written (never raises)."""
        if self.assembler is not None:
            self.assembler.abort()


class ArchiveAtEndRestoreDriver(ArchiveRestoreBase[AtEndTableRestore]):
    """Rebuilds archive tables from at-end streams (or proves them, in a temporary
    directory, when ``RestoreFlags.destination`` is None). Local stream N is
    ``tables[N-1]``; stream 0 must stay empty. Errors are returned as ERROR with ``error``
    set."""

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        super().__init__(flags)
        self._specs = list(tables)
        self._scratch: Path | None = None

    def begin(self) -> Result:
        """Check the destination is a directory (or make the temporary one). OK/ERROR."""
        error = self._begin_error()
        if error is not None:
            return self._fail(error)
        directory = self.destination
        if directory is None:
            directory = self._scratch = Path(tempfile.mkdtemp(prefix="lamina-verify-"))
        self.tables = [AtEndTableRestore(t, directory) for t in self._specs]
        self._began = True
        return Result.OK

    def _archive_facts(self, facts: VpFacts | None) -> ArchiveVpFacts:
        if not isinstance(facts, ArchiveVpFacts) or facts.begin_seq is None:
            raise CorruptionError("the image has no at-end archive VP facts for this "
                                  "driver")
        return facts

    def _finish_table(self, table: AtEndTableRestore, mine: ArchiveTableFacts,
                      facts: ArchiveVpFacts) -> None:
        assert facts.begin_seq is not None  # checked by _archive_facts
        table.finish(mine, facts.vp_seq, facts.begin_seq)

    def _cleanup(self) -> None:
        """Remove the temporary directory of a verify (never raises)."""
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["ArchiveAtEndRestoreDriver", "AtEndTableRestore", "initial_section_length"]
