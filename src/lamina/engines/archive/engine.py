"""The archive engine's native backup engine (seed: ``Engine``): hands out the archive backup
driver (:mod:`~lamina.engines.archive.backup`) and restore driver
(:mod:`~lamina.engines.archive.restore_driver`), and decodes their VP facts
(:class:`~lamina.engines.archive.facts.ArchiveVpFacts`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from lamina.core.catalog import ENGINE_ARCHIVE
from lamina.core.driver import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    TableSpec,
)
from lamina.core.lockfile import LockFile
from lamina.core.names import validate_table_name
from lamina.engines.archive.at_end import ArchiveAtEndDriver
from lamina.engines.archive.at_end_restore import ArchiveAtEndRestoreDriver
from lamina.engines.archive.backup import ArchiveBackupDriver
from lamina.engines.archive.facts import ArchiveVpFacts
from lamina.engines.archive.restore_driver import ArchiveRestoreDriver
from lamina.engines.archive.stream import DRIVER_NAME, DRIVER_VERSION
from lamina.errors import (
    ChainError,
    DriverChoiceError,
    UnsupportedError,
    UsageError,
    VersionError,
)


class ArchiveBackupEngine(BackupEngine):
    """The archive engine's native backup engine (seed: ``Engine``).

    ``ArchiveBackupEngine(db.path, db.lockfile)`` backs up tables of that database;
    ``ArchiveBackupEngine(None, None)`` can only restore.
    """

    name = DRIVER_NAME
    version = DRIVER_VERSION

    def __init__(self, directory: str | os.PathLike[str] | None,
                 lockfile: LockFile | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.lockfile = lockfile

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (archive tables of this database). Holds no resources.

        With ``flags.layer`` the driver sends tails for tables whose generation is the one
        in the base image's VP facts (``flags.base_facts``: an :class:`ArchiveVpFacts`, or
        None when the base has no archive data), whole streams for the others. With
        ``flags.at_end`` it is the "at end" driver (:mod:`lamina.engines.archive.at_end`).
        Raises
        UsageError (no database to back up, or a table listed twice), InvalidNameError,
        DriverChoiceError (a table of another engine), ChainError (base facts that are not
        an archive driver's).
        """
        _check_specs(tables)
        if self.directory is None or self.lockfile is None:
            raise UsageError("this archive backup engine has no database to back up")
        base = flags.base_facts if flags.layer else None
        if base is not None and not isinstance(base, ArchiveVpFacts):
            raise ChainError("the base image's VP facts are not an archive driver's")
        kind = ArchiveAtEndDriver if flags.at_end else ArchiveBackupDriver
        return kind(self.directory, self.lockfile, tables, layer=flags.layer, base=base)

    def decode_vp_facts(self, data: object, where: str) -> ArchiveVpFacts:
        """The archive driver's VP facts from their JSON form (an image manifest); raises
        CorruptionError naming ``where`` when a fact is missing or mistyped."""
        return ArchiveVpFacts.from_json(data, where)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for streams of ``version`` into ``flags.destination`` (None:
        verify only). Raises VersionError (newer than ours), UnsupportedError (a version
        below 1), ChainError (a layer: restored only with its chain, by
        :mod:`lamina.online.chain`), InvalidNameError (a name that could leave the
        destination), DriverChoiceError, UsageError (a table listed twice)."""
        if version > self.version:
            raise VersionError(f"archive backup data version {version}; this build reads "
                               f"up to {self.version}")
        if version < 1:
            raise UnsupportedError(f"archive backup data version {version} does not exist")
        if flags.layer:
            raise ChainError("a layer image holds only what changed after its base: restore "
                             "it with its chain (lamina restore FULL LAYER... --to DEST)")
        _check_specs(tables)
        if flags.kind == DriverKind.AT_END:
            return ArchiveAtEndRestoreDriver(tables, flags)
        return ArchiveRestoreDriver(tables, flags)


def _check_specs(tables: Sequence[TableSpec]) -> None:
    names: set[str] = set()
    for t in tables:
        validate_table_name(t.name)  # a name must never lead outside the directory
        if t.engine != ENGINE_ARCHIVE:
            raise DriverChoiceError(f"table {t.name!r} is a {t.engine} table; the archive "
                                    "driver handles archive tables only")
        if t.name in names:
            raise UsageError(f"archive table {t.name!r} is listed twice")
        names.add(t.name)


__all__ = ["ArchiveBackupEngine"]
