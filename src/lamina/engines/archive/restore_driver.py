"""Restore (and verify-only) driver of the archive native backup stream.

:class:`ArchiveRestoreDriver` (seed: ``Restore``) routes each buffer to the
:class:`TableRestore` (seed: ``Table_restore``) of its stream. A table's stream
(docs/format.md, "Archive native backup stream") is parsed incrementally, whatever the
buffer boundaries:

1. the 64-byte stream header: magic, then version, then checksum, then fields;
2. the 1,024-byte ``.ARM`` as of the VP: its hash against the header, then each slot (magic,
   version, checksum) and its fields against the header and the table spec;
3. the ``.ARZ`` header, then every block: header checksum, row id continuity, the block
   ends at or before the VP position, payload checksum, decompression to exactly its raw
   length and row count, commit seq order and bound (<= the table's last commit seq <= VP).

The checks are :mod:`~lamina.engines.archive.proof`'s. Only proven bytes are written (to
``DEST/T.ARZ``); ``end()`` checks the totals against the meta and the backup's VP facts
(:class:`~lamina.engines.archive.facts.ArchiveVpFacts`: every table and the VP seq),
syncs, re-reads the written data file from disk (every block
header and payload checksum, continuity, row count), then writes ``DEST/T.ARM`` (synced) and
syncs the directory. With ``RestoreFlags.destination`` None (``lamina verify --deep``)
everything is proven the same way and nothing is written.

Names come from the image catalog as TableSpecs and are validated by the engine before a
driver exists, so no name can make a restore write outside the destination; files are
created with ``O_EXCL | O_NOFOLLOW``. ``cancel()`` removes every file the driver created.

Concurrency: one driver is used by one thread (the restore kernel's).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from lamina.core import fileio
from lamina.core.driver import Buffer, RestoreDriver, RestoreFlags, Result, TableSpec, VpFacts
from lamina.core.names import validate_table_name
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.format import arm_path, arz_path
from lamina.engines.archive.meta import Meta, read_meta_file
from lamina.engines.archive.proof import DataChecker, check_stream_meta, recheck_data_file
from lamina.engines.archive.stream import (
    STREAM_HEAD_SIZE,
    STREAM_HEADER_SIZE,
    StreamHeader,
)
from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    LaminaError,
    StorageError,
    UsageError,
    storage_error,
)


class TableRestore:
    """The restore of one table's stream (seed: ``Table_restore``).

    Phases: stream header -> meta -> data -> complete. Writes ``T.ARZ`` as its bytes are
    proven (nothing when ``destination`` is None) and ``T.ARM`` in :meth:`finish`.
    """

    def __init__(self, spec: TableSpec, destination: Path | None) -> None:
        self.spec = spec
        self.name = validate_table_name(spec.name)
        self.destination = destination
        self.received = 0  # stream bytes accepted so far
        self.header: StreamHeader | None = None
        self.meta: Meta | None = None
        self.arm_bytes = b""
        self.ended = False  # the last buffer arrived
        self._head = bytearray()  # stream header + meta, until both are parsed
        self._data: DataChecker | None = None
        self._fd = -1
        self._written = 0
        self.created: list[Path] = []
        self.label = f"image stream of archive table {spec.name!r}"

    @property
    def arm_path(self) -> Path | None:
        """``DEST/T.ARM`` (None when verifying only)."""
        return None if self.destination is None else arm_path(self.destination, self.name)

    @property
    def arz_path(self) -> Path | None:
        """``DEST/T.ARZ`` (None when verifying only)."""
        return None if self.destination is None else arz_path(self.destination, self.name)

    def _where(self, offset: int) -> str:
        return f"archive stream of table {self.name!r}, offset {offset}"

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of this table's stream (``last``: its final piece).

        Raises CorruptionError (naming the table and offset), VersionError, UnsupportedError,
        StorageError, AlreadyExistsError (a file of that name already in the destination),
        ChainError (a layer's tail stream).
        """
        if self.ended:
            if data:
                raise CorruptionError("data after the stream's last block",
                                      where=self._where(self.received))
            return
        view = memoryview(data)
        if self._data is None:
            need = STREAM_HEAD_SIZE - len(self._head)
            take = min(need, len(view))
            self._head += view[:take]
            view = view[take:]
            self.received += take
            if self.header is None and len(self._head) >= STREAM_HEADER_SIZE:
                self.header = StreamHeader.decode(bytes(self._head[:STREAM_HEADER_SIZE]),
                                                  self.name)
                if self.header.table_id != self.spec.table_id:
                    raise CorruptionError(f"stream is of table id {self.header.table_id}, the "
                                          f"catalog says {self.spec.table_id}",
                                          where=self._where(0))
                if self.header.is_tail:
                    raise ChainError(f"the stream of archive table {self.name!r} is a layer's "
                                     "tail: restore it with its chain")
            if len(self._head) == STREAM_HEAD_SIZE:
                self._start_data(bytes(self._head[STREAM_HEADER_SIZE:]))
        if len(view):
            assert self._data is not None
            at = self.received
            try:
                proven = self._data.feed(view)
            except CorruptionError as exc:
                if exc.where is None or "offset" not in exc.where:
                    raise CorruptionError(exc.what, path=exc.path,
                                          where=self._where(at)) from exc
                raise
            self.received += len(view)
            if proven:
                self._write(proven)
        if last:
            self.ended = True
            if self._data is None or not self._data.complete:
                raise CorruptionError(f"stream ends after {self.received} bytes, expected "
                                      f"{self.expected_length()}",
                                      where=self._where(self.received))
            self._close_data(sync=True)

    def expected_length(self) -> int | None:
        """Stream length from the header (None before it arrived)."""
        if self.header is None:
            return None
        return STREAM_HEAD_SIZE + self.header.data_length

    def _start_data(self, arm: bytes) -> None:
        header = self.header
        assert header is not None
        m = check_stream_meta(arm, header, self.spec, self.label,
                              self._where(STREAM_HEADER_SIZE))
        self.meta = m
        self.arm_bytes = arm
        self._data = DataChecker(self.name, self.spec.table_id, m, self.label, decode=True)
        self._head = bytearray()
        path = self.arz_path
        if path is not None:
            try:
                self._fd = fileio.create_new(path)
            except FileExistsError as exc:
                # Never overwrite (or later remove) a file this driver did not create.
                raise AlreadyExistsError(f"{path} already exists in the restore "
                                         "destination") from exc
            self.created.append(path)

    def _write(self, data: bytes) -> None:
        path = self.arz_path
        if self._fd < 0 or path is None:
            return  # verify only
        fileio.pwrite(self._fd, data, self._written, path)
        self._written += len(data)

    def _close_data(self, *, sync: bool) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if sync:
                fileio.fsync(fd, self.arz_path)
        finally:
            fileio.close_fd(fd, self.arz_path)

    def finish(self, facts: ArchiveTableFacts, vp_seq: int) -> None:
        """Prove the whole table and make it durable: the stream was complete, totals equal
        the meta, the meta and the stream's VP equal the VP facts (``facts``: this table's,
        ``vp_seq``: the backup's VP seq); then (restoring) re-check the synced data file
        from disk and write ``T.ARM``. Raises CorruptionError, StorageError."""
        if not self.ended or self._data is None or self.meta is None or self.header is None:
            raise CorruptionError("the image has no complete stream for this table",
                                  where=self._where(self.received))
        self._data.finish()
        m = self.meta
        want = {"rows": m.row_count, "position": m.data_length,
                "generation": m.generation, "last_commit_seq": m.last_commit_seq,
                "chain_head": m.chain_head.hex()}
        got = {"rows": facts.rows, "position": facts.position,
               "generation": facts.generation, "last_commit_seq": facts.last_commit_seq,
               "chain_head": facts.chain_head.hex()}
        if got != want or vp_seq != self.header.vp_seq:
            raise CorruptionError(f"archive table {self.name!r}: stream meta {want} at VP "
                                  f"{self.header.vp_seq} differs from the image's VP "
                                  f"facts {got} at VP {vp_seq}")
        arm, arz = self.arm_path, self.arz_path
        if arm is None or arz is None:
            return  # verify only: nothing to write
        self._recheck(arz)
        self.created.append(arm)  # first: cancel() then also removes a half-written one
        fileio.atomic_write_file(arm, self.arm_bytes, sync=True)
        if read_meta_file(arm).meta != m:
            raise CorruptionError("restored meta file does not read back", path=arm)

    def _recheck(self, arz: Path) -> None:
        """Read the synced data file back: header, every block's header and payload
        checksum, continuity and totals (payloads were decoded while streaming)."""
        assert self.meta is not None and self.header is not None
        if self._data is None or self._data.header is None:
            raise CorruptionError("restored data file header does not read back", path=arz)
        recheck_data_file(arz, self.name, self.spec.table_id, self.meta, self._data.header)

    def remove(self) -> None:
        """Close and delete every file this table created (never raises)."""
        with suppress(LaminaError):
            self._close_data(sync=False)
        for path in reversed(self.created):
            for p in (path, path.with_name(path.name + ".tmp")):
                with suppress(StorageError):
                    fileio.unlink(p)
        self.created.clear()


class TableStreamRestore(Protocol):
    """What :class:`ArchiveRestoreBase` needs of the restore of one table's stream."""

    #: The table's (validated) name, as the VP facts name it.
    name: str

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of the table's stream (``last``: its final piece)."""

    def remove(self) -> None:
        """Remove every file written for the table; never raises."""


T = TypeVar("T", bound=TableStreamRestore)


class ArchiveRestoreBase(RestoreDriver, Generic[T]):
    """Base of the archive restore drivers (native and at-end): local stream N goes to
    ``tables[N-1]``, stream 0 must stay empty; the calls' order is checked, and errors are
    returned as ERROR with ``error`` set.

    Subclasses fill ``tables`` (by the end of ``begin()``) and implement
    :meth:`_archive_facts` and :meth:`_finish_table`; :meth:`_cleanup` (default: nothing)
    removes what they keep besides the tables' files, after ``end()`` and ``cancel()``.
    """

    def __init__(self, flags: RestoreFlags) -> None:
        self.destination = None if flags.destination is None else Path(flags.destination)
        self.tables: list[T] = []
        self._began = self._finished = False

    def _fail(self, exc: LaminaError) -> Result:
        self.error = exc
        return Result.ERROR

    def _begin_error(self) -> UsageError | None:
        """Why ``begin()`` may not go on (a second call, a destination that is not a
        directory), or None."""
        if self._began:
            return UsageError("archive restore driver: begin() called twice")
        if self.destination is not None and not self.destination.is_dir():
            return UsageError(f"restore destination {self.destination} is not a directory")
        return None

    def send_data(self, buffer: Buffer) -> Result:
        """Route the buffer to its table and prove (and write) what it completes.

        Returns OK, or ERROR (CorruptionError naming the table and offset, VersionError,
        UnsupportedError, AlreadyExistsError, ChainError, StorageError, UsageError outside
        ``begin()..end()``).
        """
        if not self._began or self._finished:
            return self._fail(UsageError("archive restore driver: send_data() outside "
                                         "begin()..end()"))
        try:
            if buffer.stream == 0:
                if buffer.data:
                    raise CorruptionError("archive common stream (0) carries data; it must "
                                          "be empty", where="archive stream 0")
                return Result.OK
            if not 1 <= buffer.stream <= len(self.tables):
                raise CorruptionError(f"archive stream {buffer.stream} does not exist (1.."
                                      f"{len(self.tables)})")
            self.tables[buffer.stream - 1].feed(buffer.data, buffer.last)
        except LaminaError as exc:
            return self._fail(exc)
        except OSError as exc:
            return self._fail(storage_error(exc, "restore", self.destination))
        return Result.OK

    @abc.abstractmethod
    def _archive_facts(self, facts: VpFacts | None) -> ArchiveVpFacts:
        """``facts`` (``set_vp_info``'s) if they are this driver's kind of archive VP facts;
        else raises CorruptionError."""

    @abc.abstractmethod
    def _finish_table(self, table: T, mine: ArchiveTableFacts, facts: ArchiveVpFacts) -> None:
        """Prove ``table`` against its VP facts ``mine`` (of ``facts``) and make it durable.
        Raises CorruptionError, StorageError."""

    def _cleanup(self) -> None:
        """Remove what the driver keeps besides its tables' files (never raises)."""

    def end(self) -> Result:
        """Prove every table against the VP facts (``set_vp_info`` must have given this
        driver's :class:`ArchiveVpFacts`, naming every table), make it durable, sync the
        destination directory (when restoring). OK or ERROR (CorruptionError, StorageError,
        UsageError)."""
        if not self._began or self._finished:
            return self._fail(UsageError("archive restore driver: end() outside begin()"))
        try:
            facts = self._archive_facts(self.vp_facts)
            for t in self.tables:
                mine = facts.tables.get(t.name)
                if mine is None:
                    raise CorruptionError(f"archive VP facts do not name table {t.name!r}")
                self._finish_table(t, mine, facts)
            if self.destination is not None:
                fileio.fsync_dir(self.destination)
        except LaminaError as exc:
            return self._fail(exc)
        self._finished = True
        self._cleanup()
        return Result.OK

    def cancel(self) -> Result:
        """Remove every file written, in any state; never raises."""
        self._finished = True
        for t in self.tables:
            t.remove()
        self._cleanup()
        return Result.OK


class ArchiveRestoreDriver(ArchiveRestoreBase[TableRestore]):
    """Rebuilds archive tables from their streams (seed: ``Restore``), or only proves them
    (``RestoreFlags.destination`` None). Local stream N is ``tables[N-1]``; stream 0 must
    stay empty. Errors are returned as ERROR with ``error`` set."""

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        super().__init__(flags)
        self.flags = flags
        self.tables = [TableRestore(t, self.destination) for t in tables]

    @property
    def verify_only(self) -> bool:
        """True when nothing is written (``lamina verify --deep``)."""
        return self.destination is None

    def begin(self) -> Result:
        """Check the destination is a directory (when restoring). OK or ERROR."""
        error = self._begin_error()
        if error is not None:
            return self._fail(error)
        self._began = True
        return Result.OK

    def _archive_facts(self, facts: VpFacts | None) -> ArchiveVpFacts:
        if not isinstance(facts, ArchiveVpFacts):
            raise CorruptionError("the image has no archive VP facts for this driver")
        return facts

    def _finish_table(self, table: TableRestore, mine: ArchiveTableFacts,
                      facts: ArchiveVpFacts) -> None:
        table.finish(mine, facts.vp_seq)


__all__ = ["ArchiveRestoreBase", "ArchiveRestoreDriver", "TableRestore", "TableStreamRestore"]
