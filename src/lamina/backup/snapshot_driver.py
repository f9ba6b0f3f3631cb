"""The consistent-snapshot driver ("at begin", logical): rows read from an MVCC snapshot.

MySQL 6.0's second choice after an engine's native driver. ``lock()`` pins each engine's
snapshot at the validity point (a reader slot that pins the btree txnid; for archive tables
the VP commit seq, which cuts the blocks after the fact): memory only, O(1), no disk I/O.
The final transfer then sends every table's keys and values from that snapshot in key (row
id) order while writers go on, untouched. The restore driver rebuilds each table through its
engine (a btree table is bulk-loaded into a fresh, compact tree, so a snapshot image can be
restored into a database of another page size).

Stream format: :mod:`lamina.backup.logical`. Concurrency: one driver per kernel thread;
writers in any process are held back only while the VP is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lamina.backup.logical import (
    STREAM_VERSION,
    LogicalBackupDriver,
    LogicalBackupEngine,
    LogicalProvider,
    LogicalRestoreDriver,
    SinkFactory,
    check_restore_version,
    sources_for,
)
from lamina.core.driver import (
    BackupDriver,
    BackupFlags,
    RestoreDriver,
    RestoreFlags,
    TableSpec,
)
from lamina.errors import UnsupportedError, UsageError

DRIVER_NAME = "snapshot"


class SnapshotBackupDriver(LogicalBackupDriver):
    """Sends tables from snapshots pinned by ``lock()`` (prelock: READY at once)."""

    label = DRIVER_NAME


class SnapshotBackupEngine(LogicalBackupEngine):
    """The consistent-snapshot backup engine (``name = "snapshot"``, ``version = 1``).

    ``providers`` maps an engine name to its :class:`LogicalProvider` (None: restore only);
    ``sink_factory`` builds the restore-side writer (None: backup or verify only).
    """

    name = DRIVER_NAME
    version = STREAM_VERSION

    def __init__(self, providers: Mapping[str, LogicalProvider] | None = None,
                 sink_factory: SinkFactory | None = None) -> None:
        self.providers = dict(providers or {})
        self.sink_factory = sink_factory

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (any engine with a snapshot source). Holds no resources.
        Raises UsageError (no tables, no providers), DriverChoiceError (an engine without a
        snapshot source), UnsupportedError (a layer)."""
        if flags.layer:
            raise UnsupportedError("snapshot-driver layers (incremental) are not available")
        if not tables:
            raise UsageError("the snapshot driver needs at least one table")
        sources = sources_for(tables, self.providers,
                              lambda p, specs: p.snapshot_source(specs), DRIVER_NAME)
        return SnapshotBackupDriver(tables, sources)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for ``tables``. Raises VersionError (newer data),
        UnsupportedError (a layer)."""
        check_restore_version(DRIVER_NAME, version, self.version)
        if flags.layer:
            raise UnsupportedError("snapshot-driver layers (incremental) are not available")
        return LogicalRestoreDriver(DRIVER_NAME, tables, flags, self.sink_factory)


__all__ = ["DRIVER_NAME", "SnapshotBackupDriver", "SnapshotBackupEngine"]
