"""``ArchiveTable``: one open archive table — reads, writer handout, stats, static helpers.

Reads work on a *snapshot*: the meta read at the start of the operation (committed length,
row count) plus a reference to the data file of that generation
(:meth:`~lamina.engines.archive.files.TableFiles.snapshot`). A reader never reads past the
snapshot's committed length, so it sees whole commits only, in any process, without locks.
Writes go through :class:`~lamina.engines.archive.writer.Appender` under the table writer
lock; recovery, ``optimize`` and ``check`` live in their own modules and work on the table's
:class:`~lamina.engines.archive.files.TableFiles`.
"""

from __future__ import annotations

import itertools
from collections.abc import Generator, Iterable
from pathlib import Path
from types import EllipsisType
from typing import Any

from lamina.core import fileio
from lamina.core.check import CheckReport
from lamina.core.lockfile import LockFile
from lamina.core.names import validate_table_name
from lamina.engines.archive import check, codec, generations, optimize, recovery
from lamina.engines.archive.chain import CHAIN_START
from lamina.engines.archive.datafile import FileHeader, meta_from_header, read_header_at
from lamina.engines.archive.fallback import ArmFallback
from lamina.engines.archive.files import Snapshot, TableFiles
from lamina.engines.archive.format import (
    ARZ_HEADER_SIZE,
    CODEC_NAMES,
    DEFAULT_BLOCK_TARGET,
    MAX_BLOCK_TARGET,
    MIN_BLOCK_TARGET,
    arm_path,
    arz_new_path,
    arz_path,
)
from lamina.engines.archive.meta import ArmFile, Meta, encode_file, read_meta_file
from lamina.engines.archive.writer import Appender
from lamina.errors import (
    AlreadyExistsError,
    CorruptionError,
    LockedError,
    NotFoundError,
    ReadOnlyError,
    TableNotFoundError,
    UsageError,
)


class RowIterator:
    """Iterator over ``(row_id, row)`` of one snapshot; releases the snapshot when exhausted,
    closed or garbage-collected (so a retired generation's descriptor is closed)."""

    def __init__(self, snap: Snapshot, start: int) -> None:
        self._snap: Snapshot | None = snap
        self._gen = self._rows(snap, start)

    @staticmethod
    def _rows(snap: Snapshot, start: int) -> Generator[tuple[int, bytes], None, None]:
        meta, data = snap.meta, snap.data
        if start >= meta.next_row_id:
            return
        start = max(start, 1)
        i = data.find(start, meta.data_length)
        n = data.block_count_below(meta.data_length)
        blocks = data.blocks
        while i < n:
            header = blocks[i]
            rows = data.read_rows(header)
            skip = start - header.first_row_id
            if skip > 0:
                yield from zip(itertools.count(start), rows[skip:])
            else:
                yield from zip(itertools.count(header.first_row_id), rows)
            i += 1

    def __iter__(self) -> RowIterator:
        return self

    def __next__(self) -> tuple[int, bytes]:
        try:
            return next(self._gen)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop early and release the snapshot (idempotent)."""
        snap, self._snap = self._snap, None
        if snap is not None:
            self._gen.close()
            snap.data.release()

    def __enter__(self) -> RowIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class ArchiveTable:
    """One open archive table (``NAME.ARM`` + ``NAME.ARZ``).

    Concurrency: any number of threads may read through one instance; readers in other
    processes see only committed rows. Writers (``writer``/``append``/``optimize``) serialize
    across threads and processes on the table writer lock in the database ``LOCK`` file.
    Every method raises :class:`ClosedError` after :meth:`close`.
    """

    def __init__(self, directory: Path, name: str, table_id: int, lockfile: LockFile,
                 arm: ArmFile, *, readonly: bool, sync: bool) -> None:
        #: The table's files: paths, the open meta file, the current data file.
        self.files = TableFiles(directory, name, table_id, lockfile, arm, readonly=readonly,
                                sync=sync)
        self.directory = self.files.directory
        self.name = name
        self.table_id = table_id
        self.lockfile = lockfile
        self.readonly = readonly
        self.sync = sync
        #: Seconds a writer waits for the table's writer lock, and a commit while a default
        #: backup driver holds the table (then LockedError); None = forever. A database
        #: sets its own ``lock_timeout`` here.
        self.lock_timeout: float | None = 5.0
        self.arm_path = self.files.arm_path
        self.arz_path = self.files.arz_path

    # ================================================================ lifecycle
    @classmethod
    def create(cls, directory: Path, name: str, table_id: int, *, codec: str = "zstd",
               level: int | None = None, block_target: int = DEFAULT_BLOCK_TARGET,
               sync: bool = True) -> None:
        """Create an empty table's ``NAME.ARZ`` then ``NAME.ARM`` (each written to a temp
        file, synced, renamed; the ``.ARM`` last, so its presence means the table exists).

        Raises InvalidNameError, UsageError (codec, level, block target, table id),
        UnsupportedError (codec library missing), AlreadyExistsError (``NAME.ARM`` exists).
        """
        validate_table_name(name)
        codec_id, lvl = _resolve_codec(codec, level)
        _check_block_target(block_target)
        if not 0 < table_id < 2**32:
            raise UsageError(f"table id must be in 1..{2**32 - 1}, not {table_id}")
        directory = Path(directory)
        arm_p, arz_p = arm_path(directory, name), arz_path(directory, name)
        if fileio.exists(arm_p):
            raise AlreadyExistsError(f"archive table {name!r} already exists in {directory}")
        header = FileHeader(table_id, codec_id, lvl, 1, block_target, 0, 1, ARZ_HEADER_SIZE,
                            0, 0, 0, CHAIN_START)
        fileio.atomic_write_file(arz_p, header.encode(), sync=sync)
        meta = Meta(1, table_id, codec_id, lvl, 1, 0, 1, ARZ_HEADER_SIZE, block_target, 0, 0,
                    0, 0, CHAIN_START)
        fileio.atomic_write_file(arm_p, encode_file(meta), sync=sync)

    @classmethod
    def open(cls, directory: Path, name: str, table_id: int, lockfile: LockFile, *,
             readonly: bool = False, sync: bool = True) -> ArchiveTable:
        """Open and validate a table; ``table_id`` must match the one in its files.

        A writable open also finishes recovery if no other writer is active: completes or
        discards a half-done ``optimize`` publish, repairs a torn meta slot and truncates a
        torn tail. Raises TableNotFoundError (no files), CorruptionError (a file missing or
        damaged, wrong table id), NotADatabaseError, VersionError, UnsupportedError.
        """
        validate_table_name(name)
        directory = Path(directory)
        arm_p, arz_p = arm_path(directory, name), arz_path(directory, name)
        if not fileio.exists(arm_p):
            if fileio.exists(arz_p):
                raise CorruptionError(f"archive table {name!r} has no meta file", path=arm_p)
            raise TableNotFoundError(f"archive table {name!r} does not exist in {directory}")
        arm = ArmFile.open(arm_p, writable=not readonly)
        table = cls(directory, name, table_id, lockfile, arm, readonly=readonly, sync=sync)
        try:
            read = arm.read()
            meta = read.meta
            if meta.table_id != table_id:
                raise CorruptionError(f"archive table {name!r} has table id {meta.table_id}, "
                                      f"expected {table_id}", path=arm_p)
            codec.require(meta.codec, f"table {name!r}")
            if not readonly:
                table._recover_if_idle()
            elif read.damaged_slots:
                table._note_fallback_if_idle()
            table._snapshot().data.release()  # validates the data file header
        except BaseException:
            table.close()
            raise
        return table

    def _recover_if_idle(self) -> None:
        lock = self.files.writer_lock()
        try:
            lock.acquire(0)
        except LockedError:
            return  # a live writer owns the table; it recovers whenever it takes the lock
        try:
            recovery.recover(self.files)
            generations.cleanup(self.directory, self.name, self.lockfile)
        finally:
            lock.release()

    def _note_fallback_if_idle(self) -> None:
        """Read-only: report (never repair) a fallback, judged under the table writer lock
        so that a slot a live writer is writing right now is not taken for damage (a live
        writer repaired the slots when it took the lock: then there is nothing to note)."""
        lock = self.files.writer_lock()
        try:
            lock.acquire(0)
        except LockedError:
            return
        try:
            self.files.note_fallback(self.files.read())
        finally:
            lock.release()

    @property
    def fallback(self) -> ArmFallback | None:
        """The fallback this table was found in (see ``fallback.py``), or None."""
        return self.files.fallback

    def close(self) -> None:
        """Close the files (idempotent). Scans still running keep their data file open."""
        self.files.close()

    def __enter__(self) -> ArchiveTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ internals
    def _arm_file(self) -> ArmFile:
        """The open meta file; ClosedError once closed."""
        return self.files.arm()

    def _snapshot(self) -> Snapshot:
        """The committed state now and a referenced data file holding it."""
        return self.files.snapshot()

    def _check_writable(self) -> None:
        self._arm_file()
        if self.readonly:
            raise ReadOnlyError(f"archive table {self.name!r} is open read-only")

    # ================================================================ writes
    def writer(self, timeout: float | EllipsisType | None = ...) -> Appender:
        """Take the table writer lock (waiting up to ``timeout`` seconds; None = forever;
        omitted: :attr:`lock_timeout`) and return an :class:`Appender` holding it, whose
        commits wait up to :attr:`lock_timeout` while a default backup driver holds the
        table. Raises LockedError naming the table, ReadOnlyError, ClosedError."""
        self._check_writable()
        lock = self.files.writer_lock()
        lock.acquire(self.lock_timeout if timeout is ... else timeout)
        try:
            read = recovery.recover(self.files)
        except BaseException:
            lock.release()
            raise
        appender = Appender(self.files, lock, read)
        appender.backup_lock_timeout = self.lock_timeout
        return appender

    def append(self, row: bytes) -> int:
        """Append one row in its own commit; returns its row id."""
        with self.writer() as w:
            return w.append(row)

    def append_many(self, rows: Iterable[bytes]) -> list[int]:
        """Append rows in one commit; returns their row ids (empty list for no rows)."""
        with self.writer() as w:
            return w.append_many(rows)

    def optimize(self, block_target: int | None = None, timeout: float | None = 5.0,
                 ) -> dict[str, Any]:
        """Rewrite the table into blocks of ``block_target`` raw bytes as a new generation.

        Holds the table writer lock throughout (appends wait); readers keep reading the old
        generation until they finish. Returns stats (see ``optimize.optimize``).
        """
        self._check_writable()
        if block_target is not None:
            _check_block_target(block_target)
        return optimize.optimize(self.files, block_target, timeout)

    # ================================================================ reads
    def count(self) -> int:
        """Number of committed rows (one pread of the meta file: O(1))."""
        return self._arm_file().read().meta.row_count

    def get(self, row_id: int) -> bytes:
        """The committed row ``row_id``; NotFoundError if there is none.

        Raises CorruptionError naming table, block offset and rows if its block is damaged.
        """
        snap = self._snapshot()
        try:
            meta, data = snap.meta, snap.data
            if not 1 <= row_id < meta.next_row_id:
                raise NotFoundError(f"archive table {self.name!r} has no row {row_id} "
                                    f"(rows 1-{meta.next_row_id - 1})")
            header = data.blocks[data.find(row_id, meta.data_length)]
            return data.cached_rows(header)[row_id - header.first_row_id]
        finally:
            snap.data.release()

    def scan(self, start: int = 1) -> RowIterator:
        """``(row_id, row)`` for every row with id >= ``start`` committed when this call
        returned, in row id order. Unaffected by later commits or ``optimize``."""
        return RowIterator(self._snapshot(), start)

    def check(self) -> CheckReport:
        """Run the checker on the committed state (see ``check.py``); never raises for
        damage it can describe — it reports findings instead."""
        self._arm_file()
        return check.check_table(self.files)

    def stat(self) -> dict[str, Any]:
        """Rows, raw/stored bytes, ratio, blocks, generation, codec and file sizes."""
        snap = self._snapshot()
        try:
            m = snap.meta
            arm_size = fileio.file_size(self._arm_file().fd)
            arz_size = fileio.file_size(snap.data.fd)
        finally:
            snap.data.release()
        stored = m.data_length - ARZ_HEADER_SIZE
        return {
            "table": self.name, "table_id": self.table_id, "rows": m.row_count,
            "next_row_id": m.next_row_id, "raw_bytes": m.raw_bytes, "stored_bytes": stored,
            "ratio": round(m.raw_bytes / stored, 3) if stored else 0.0, "blocks": m.blocks,
            "generation": m.generation, "codec": CODEC_NAMES.get(m.codec, str(m.codec)),
            "level": m.level, "block_target": m.block_target,
            "last_commit_seq": m.last_commit_seq,
            "generation_commit_seq": m.generation_commit_seq,
            "committed_length": m.data_length,
            "files": {self.arm_path.name: arm_size, self.arz_path.name: arz_size},
            **({"fallback": self.files.fallback.to_json()} if self.files.fallback else {}),
        }

    # ================================================================ static helpers
    @staticmethod
    def read_last_commit_seq(directory: Path, name: str) -> int:
        """The table's last commit seq from its files (to seed the lock file's counter).

        Includes an optimize publish cut short after its rename. Raises like ``open``.
        """
        directory = Path(directory)
        meta = read_meta_file(arm_path(directory, name)).meta
        header = read_header_at(arz_path(directory, name))
        if header is not None and header.generation == meta.generation + 1:
            return meta_from_header(header, meta).last_commit_seq
        return meta.last_commit_seq

    @staticmethod
    def remove_files(directory: Path, name: str) -> None:
        """Delete every file of the table (meta first: without it the table is gone), then
        sync the directory. Missing files are fine; raises StorageError."""
        directory = Path(directory)
        paths = [arm_path(directory, name), arz_path(directory, name),
                 arz_new_path(directory, name)]
        for base in (arm_path(directory, name), arz_path(directory, name)):
            paths.append(base.with_name(base.name + ".tmp"))
        paths.extend(p for _g, pair in generations.retained(directory, name) for p in pair)
        for path in paths:
            fileio.unlink(path)
        fileio.fsync_dir(directory)

    @staticmethod
    def generation_files_at(directory: Path, name: str, seq: int) -> tuple[Path, Path]:
        """``(arm_path, arz_path)`` of the generation that was current at commit seq ``seq``
        (the current files, or retained ``.g<N>`` copies). NotFoundError if not retained."""
        return generations.files_at(Path(directory), name, seq)

    @staticmethod
    def cleanup_generations(directory: Path, name: str, lockfile: LockFile) -> int:
        """Remove retained generations if no backup is running; returns files removed."""
        return generations.cleanup(Path(directory), name, lockfile)


def _resolve_codec(name: str, level: int | None) -> tuple[int, int]:
    return codec.resolve(name, level)


def _check_block_target(block_target: int) -> None:
    if not MIN_BLOCK_TARGET <= block_target <= MAX_BLOCK_TARGET:
        raise UsageError(f"block target must be in {MIN_BLOCK_TARGET}..{MAX_BLOCK_TARGET} "
                         f"bytes, not {block_target}")


__all__ = ["ArchiveTable", "RowIterator"]
