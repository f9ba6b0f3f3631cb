"""Logical access to archive tables for the generic backup drivers (snapshot and default),
and the loader their restore side writes through.

Implements :class:`lamina.backup.logical.LogicalProvider` structurally. A logical row is
``(row id as u64 big-endian, row)``, in row id order.

* :class:`ArchiveSnapshotSource` reads the VP cut, as the native driver does: ``begin()``
  marks a lock-file slot *backup* (so an ``optimize`` publishing meanwhile retains the
  generation the VP needs), ``pin()`` records the VP commit seq (a shared-memory read), and
  ``rows()`` decodes the blocks of the generation current at the VP whose commit seq is
  <= the VP. Appends after the VP are never read.
* :class:`ArchiveLockingSource` reads the committed rows while holding the table backup lock
  exclusively, which makes appenders wait before they commit: the committed state is the
  VP's.
* :func:`load_table` creates the table files (codec, level and block target from the
  stream's info) and appends the rows in a few large commits.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from lamina.core import compression, fileio
from lamina.core.catalog import ENGINE_ARCHIVE
from lamina.core.driver import TableSpec, require_engine
from lamina.core.lockfile import LockFile, Slot
from lamina.core.table_locks import HeldTableLocks
from lamina.engines.archive import generations, vpcut
from lamina.engines.archive.datafile import DataFile
from lamina.engines.archive.format import CODEC_NAMES, arm_path
from lamina.engines.archive.meta import read_meta_file
from lamina.engines.archive.table import ArchiveTable
from lamina.errors import (
    CorruptionError,
    LaminaError,
    StorageError,
    TableNotFoundError,
    UsageError,
)

_ROW_ID = struct.Struct(">Q")
#: Raw bytes per commit while a restore appends rows (bounds the appender's buffer).
LOAD_COMMIT_BYTES = 8 << 20


class ArchiveLogical:
    """The archive engine's :class:`~lamina.backup.logical.LogicalProvider`."""

    def __init__(self, directory: str | os.PathLike[str], lockfile: LockFile) -> None:
        self.directory = Path(directory)
        self.lockfile = lockfile

    def snapshot_source(self, tables: Sequence[TableSpec]) -> ArchiveSnapshotSource:
        """A source reading the VP cut of ``tables``."""
        require_engine(tables, ENGINE_ARCHIVE)
        return ArchiveSnapshotSource(self.directory, self.lockfile, tables)

    def locking_source(self, tables: Sequence[TableSpec]) -> ArchiveLockingSource:
        """A source reading ``tables`` under their table backup locks."""
        require_engine(tables, ENGINE_ARCHIVE)
        return ArchiveLockingSource(self.directory, self.lockfile, tables)


class _Base:
    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec]) -> None:
        self.directory = directory
        self.lockfile = lockfile
        self.tables = list(tables)
        self._info: dict[str, dict[str, Any]] = {}
        self._estimates: dict[str, tuple[int, int]] = {}

    def _probe(self) -> None:
        """Check every table exists with its id; note its codec and size. Disk I/O."""
        for t in self.tables:
            meta = read_meta_file(arm_path(self.directory, t.name)).meta
            if meta.table_id != t.table_id:
                raise TableNotFoundError(f"archive table {t.name!r} (id {t.table_id}) not "
                                         f"found: its files hold table id {meta.table_id}")
            self._info[t.name] = {"codec": CODEC_NAMES.get(meta.codec, "zstd"),
                                  "level": meta.level, "block_target": meta.block_target}
            self._estimates[t.name] = (meta.row_count, meta.raw_bytes + 8 * meta.row_count)

    def table_info(self, spec: TableSpec) -> dict[str, Any]:
        """Codec name, level and block target (to recreate the table alike)."""
        return dict(self._info.get(spec.name, {}))

    def estimate(self, spec: TableSpec) -> tuple[int, int] | None:
        """(rows, bytes) noted by ``begin()``."""
        return self._estimates.get(spec.name)


class ArchiveSnapshotSource(_Base):
    """Rows of archive tables as of the VP commit seq (see the module doc)."""

    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec]) -> None:
        super().__init__(directory, lockfile, tables)
        self._slot: Slot | None = None
        self.vp_seq: int | None = None

    def begin(self) -> None:
        """Take a backup slot (optimize retains generations from now on), probe tables."""
        self._slot = generations.take_backup_slot(self.lockfile)
        self._probe()

    def pin(self) -> None:
        """Record the VP commit seq: a shared-memory read, O(1), no I/O."""
        self.vp_seq = self.lockfile.commit_seq()

    def try_lock(self, spec: TableSpec) -> bool:
        """Not used by the snapshot driver."""
        return True

    def unlock(self, spec: TableSpec) -> None:
        """Nothing to unlock."""

    def rows(self, spec: TableSpec) -> Iterator[tuple[bytes, bytes]]:
        """(row id, row) of every row committed at or before the VP, in order. Raises
        NotFoundError (generation not retained), TableNotFoundError, CorruptionError."""
        if self.vp_seq is None:
            raise UsageError("archive snapshot source: rows() before pin()")
        # The native driver's generation lookup: the generation current at the VP (a
        # retained .g<N> copy if an optimize replaced it since).
        fd, header, committed, arz = vpcut.open_vp_generation(self.directory, spec.name,
                                                              self.vp_seq)
        try:
            data = DataFile(arz, fd, header, spec.name)
        except BaseException:
            with suppress(StorageError):
                fileio.close_fd(fd, arz)
            raise
        try:
            if committed.table_id != spec.table_id:
                raise TableNotFoundError(f"archive table {spec.name!r} (id {spec.table_id}) "
                                         f"not found at the validity point")
            n = data.ensure_index(committed.data_length)
            pack = _ROW_ID.pack
            for h in data.blocks[:n]:
                if h.commit_seq > self.vp_seq:
                    break  # blocks are in commit seq order: the rest is after the VP
                for i, row in enumerate(data.read_rows(h)):
                    yield pack(h.first_row_id + i), row
        finally:
            data.retire()  # no references: closes the descriptor

    def facts(self) -> dict[str, Any]:
        """The VP commit seq the tables were cut at."""
        return {"vp_seq": self.vp_seq}

    def close(self) -> None:
        """Release the slot, then drop retained generations no backup needs. Never
        raises."""
        slot, self._slot = self._slot, None
        if slot is None:
            return
        slot.release()
        for t in self.tables:
            try:
                generations.cleanup(self.directory, t.name, self.lockfile)
            except (LaminaError, OSError):
                pass  # the next optimize or writable open removes them


class ArchiveLockingSource(_Base):
    """Rows of archive tables read under their table backup locks."""

    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec]) -> None:
        super().__init__(directory, lockfile, tables)
        self._locks = HeldTableLocks(self.lockfile)

    def begin(self) -> None:
        """Probe the tables (one meta read each)."""
        self._probe()

    def pin(self) -> None:
        """Nothing to pin: the locks freeze the tables."""

    def try_lock(self, spec: TableSpec) -> bool:
        """One non-blocking try for ``spec``'s backup lock, exclusive."""
        return self._locks.try_lock(spec.table_id)

    def unlock(self, spec: TableSpec) -> None:
        """Release ``spec``'s lock if held."""
        self._locks.unlock(spec.table_id)

    def rows(self, spec: TableSpec) -> Iterator[tuple[bytes, bytes]]:
        """(row id, row) of every committed row; the caller holds the table's lock, so no
        append committed since the VP."""
        if not self._locks.holds(spec.table_id):
            raise UsageError(f"archive table {spec.name!r} read without its backup lock")
        table = ArchiveTable.open(self.directory, spec.name, spec.table_id, self.lockfile,
                                  readonly=True)
        try:
            pack = _ROW_ID.pack
            with table.scan() as it:
                for row_id, row in it:
                    yield pack(row_id), row
        finally:
            table.close()

    def facts(self) -> dict[str, Any]:
        """Nothing beyond the tables' row counts."""
        return {}

    def close(self) -> None:
        """Release every lock still held. Never raises."""
        self._locks.release_all()


def load_table(directory: Path, lockfile: LockFile, spec: TableSpec, info: dict[str, Any],
               rows: Iterable[tuple[bytes, bytes]], *, sync: bool = True) -> int:
    """Create archive table ``spec`` (files only: the caller owns the catalog entry) with
    the codec, level and block target in ``info`` and append ``rows`` (row ids 1, 2, ...)
    in commits of about :data:`LOAD_COMMIT_BYTES`; returns the number of rows.

    Raises CorruptionError (row ids not consecutive from 1), UsageError/UnsupportedError
    (a codec or block target this build refuses), AlreadyExistsError, StorageError.
    """
    directory = Path(directory)
    kwargs: dict[str, Any] = {"codec": str(info.get("codec", "zstd")), "sync": sync}
    # A codec without levels (none) recorded level 0: it takes no level.
    if isinstance(info.get("level"), int) and compression.LEVEL_RANGES.get(kwargs["codec"]):
        kwargs["level"] = info["level"]
    if isinstance(info.get("block_target"), int):
        kwargs["block_target"] = info["block_target"]
    ArchiveTable.create(directory, spec.name, spec.table_id, **kwargs)
    table = ArchiveTable.open(directory, spec.name, spec.table_id, lockfile, sync=sync)
    count = 0
    try:
        with table.writer(None) as w:
            pending = 0
            for key, row in rows:
                count += 1
                if len(key) != 8 or _ROW_ID.unpack(key)[0] != count:
                    raise CorruptionError(f"archive table {spec.name!r}: row {count} of the "
                                          f"stream has a wrong row id")
                w.append(row)
                pending += len(row)
                if pending >= LOAD_COMMIT_BYTES:
                    w.commit()
                    pending = 0
    finally:
        table.close()
    return count


__all__ = ["ArchiveLockingSource", "ArchiveLogical", "ArchiveSnapshotSource", "load_table"]
