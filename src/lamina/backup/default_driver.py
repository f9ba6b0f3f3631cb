"""The default driver (logical, blocking): rows read under table locks, for any engine.

MySQL 6.0's last resort, for engines with neither a native driver nor snapshots. In
``prelock()`` it takes, per table, a lock that makes that table's writers wait (the table
backup lock, ``LOCK`` byte ``2^33 + table id``; writers hold it shared while they change the
table). Like MySQL's locking thread it answers OK while some lock is still missing and READY
once all are held, so the kernel keeps polling; a lock not obtained within ``lock_timeout``
seconds fails the backup with LockedError and releases every lock taken. After the VP it
sends each table's rows — which cannot have changed since the VP, as its writers wait — and
releases that table's lock as soon as its last byte is handed over.

What it costs: a writer of a locked table waits from ``prelock()`` until that table is sent
(the stall ``bench/stall.py`` measures); writers of other tables go on.

Stream format and restore: as the snapshot driver (:mod:`lamina.backup.logical`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from lamina.backup.logical import (
    STREAM_VERSION,
    LogicalBackupDriver,
    LogicalBackupEngine,
    LogicalProvider,
    LogicalRestoreDriver,
    LogicalSource,
    SinkFactory,
    check_restore_version,
    sources_for,
)
from lamina.core.driver import (
    BackupDriver,
    BackupFlags,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
)
from lamina.errors import LockedError, UnsupportedError, UsageError

DRIVER_NAME = "default"
#: Seconds ``prelock()`` keeps trying to lock the tables before LockedError.
DEFAULT_LOCK_TIMEOUT = 30.0


class DefaultBackupDriver(LogicalBackupDriver):
    """Locks every table in ``prelock()``; unlocks each right after sending it."""

    label = DRIVER_NAME

    def __init__(self, tables: Sequence[TableSpec], sources: Mapping[str, LogicalSource],
                 lock_timeout: float | None) -> None:
        super().__init__(tables, sources)
        self.lock_timeout = lock_timeout
        self._locked: set[str] = set()
        self._deadline: float | None = None

    @property
    def locked_tables(self) -> list[str]:
        """Tables whose lock this driver holds right now."""
        return sorted(self._locked)

    def prelock(self) -> Result:
        """Try once (no waiting) to lock every table: READY once all are held, else OK.

        All or nothing: if some table is busy, the locks taken in this round are released
        again, so a writer that holds one of our tables while it waits for another (a
        transaction writing two tables) is never deadlocked against a partial set. Raises
        LockedError after ``lock_timeout`` seconds (counted from the first call), holding
        nothing."""
        now = time.monotonic()
        if self._deadline is None and self.lock_timeout is not None:
            self._deadline = now + self.lock_timeout
        missing = []
        for spec in self.tables:
            if self.source(spec).try_lock(spec):
                self._locked.add(spec.name)
            else:
                missing.append(spec.name)
                break  # no use taking more: they would be given back
        if not missing:
            return Result.READY
        for spec in self.tables:
            if spec.name in self._locked:
                self.source(spec).unlock(spec)
        self._locked.clear()
        if self._deadline is not None and now >= self._deadline:
            raise LockedError(f"default backup driver could not lock table(s) "
                              f"{', '.join(repr(n) for n in missing)} within "
                              f"{self.lock_timeout:g}s (a writer holds them)")
        return Result.OK

    def _table_sent(self, spec: TableSpec) -> None:
        # Its rows are in the kernel's hands: its writers may go on.
        self.source(spec).unlock(spec)
        self._locked.discard(spec.name)

    def _release(self) -> None:
        self._locked.clear()
        super()._release()  # sources release every lock they still hold


class DefaultBackupEngine(LogicalBackupEngine):
    """The default (blocking) backup engine (``name = "default"``, ``version = 1``).

    ``providers``/``sink_factory`` as for the snapshot engine; ``lock_timeout`` bounds how
    long ``prelock()`` tries to lock the tables (None: forever).
    """

    name = DRIVER_NAME
    version = STREAM_VERSION

    def __init__(self, providers: Mapping[str, LogicalProvider] | None = None,
                 sink_factory: SinkFactory | None = None,
                 lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> None:
        self.providers = dict(providers or {})
        self.sink_factory = sink_factory
        self.lock_timeout = lock_timeout

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (any engine with a locking source). Holds no resources.
        Raises UsageError, DriverChoiceError, UnsupportedError (a layer)."""
        if flags.layer:
            raise UnsupportedError("default-driver layers (incremental) are not available")
        if not tables:
            raise UsageError("the default driver needs at least one table")
        sources = sources_for(tables, self.providers,
                              lambda p, specs: p.locking_source(specs), DRIVER_NAME)
        return DefaultBackupDriver(tables, sources, self.lock_timeout)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for ``tables``. Raises VersionError, UnsupportedError."""
        check_restore_version(DRIVER_NAME, version, self.version)
        if flags.layer:
            raise UnsupportedError("default-driver layers (incremental) are not available")
        return LogicalRestoreDriver(DRIVER_NAME, tables, flags, self.sink_factory)


__all__ = ["DEFAULT_LOCK_TIMEOUT", "DRIVER_NAME", "DefaultBackupDriver", "DefaultBackupEngine"]
