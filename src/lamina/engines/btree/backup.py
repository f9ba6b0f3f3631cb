"""The btree native backup engine (driver name ``btree``, version 1; "at begin" drivers by
default, "at end" ones on request).

The engine hands out the drivers; the parts live in their own modules:

* :mod:`lamina.engines.btree.stream` — the page stream format and its one reader;
* :mod:`lamina.engines.btree.backup_driver` — the backup driver (full images and layers);
* :mod:`lamina.engines.btree.at_end` / :mod:`~lamina.engines.btree.at_end_restore` — the
  "at end" backup driver and the restore driver of its streams;
* :mod:`lamina.engines.btree.restore_driver` — the restore driver (full streams);
* :mod:`lamina.engines.btree.proof` — the Merkle proof the restore makes while streaming;
* :mod:`lamina.engines.btree.facts` — the typed VP facts recorded in the image manifest;
* :mod:`lamina.engines.btree.layers` — the btree side of backup chains (assembly, re-emit).

Stream format: docs/format.md, "Btree native backup stream".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lamina.core.catalog import ENGINE_BTREE
from lamina.core.driver import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    TableSpec,
)
from lamina.engines.btree.at_end import BtreeAtEndDriver
from lamina.engines.btree.at_end_restore import BtreeAtEndRestoreDriver
from lamina.engines.btree.backup_driver import BtreeBackupDriver
from lamina.engines.btree.facts import BtreeVpFacts, base_txnid_of
from lamina.engines.btree.restore_driver import BtreeRestoreDriver
from lamina.engines.btree.stream import STREAM_VERSION
from lamina.errors import ChainError, DriverChoiceError, UsageError, VersionError

if TYPE_CHECKING:
    from lamina.engines.btree.store import BtreeStore


class BtreeBackupEngine(BackupEngine):
    """Backup engine of the btree data file (``name = "btree"``, ``version = 1``).

    ``store`` is the open store to back up; restore-only users (no open database) pass
    None, and then :meth:`get_backup` raises UsageError. Holds no resources itself.
    """

    name = "btree"
    version = STREAM_VERSION

    def __init__(self, store: BtreeStore | None = None) -> None:
        self.store = store

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (all btree tables). Holds no resources until ``begin``.

        With ``flags.layer`` the driver sends a layer: the pages newer than the base image's
        btree txnid (from ``flags.base_facts``, which must be :class:`BtreeVpFacts`). With
        ``flags.at_end`` it is the "at end" driver (:mod:`lamina.engines.btree.at_end`).
        Raises
        UsageError (no store), DriverChoiceError (a table of another engine), ChainError (a
        layer whose base records no btree facts).
        """
        if self.store is None:
            raise UsageError("this btree backup engine has no open store to back up")
        for t in tables:
            if t.engine != ENGINE_BTREE:
                raise DriverChoiceError(f"table {t.name!r} is an {t.engine} table; the btree "
                                        "driver backs up btree tables only")
        base = base_txnid_of(flags.base_facts) if flags.layer else None
        if flags.at_end:
            return BtreeAtEndDriver(self.store, tables, base_txnid=base)
        return BtreeBackupDriver(self.store, tables, base_txnid=base)

    def decode_vp_facts(self, data: object, where: str) -> BtreeVpFacts:
        """The btree drivers' VP facts from their manifest JSON. Raises CorruptionError
        (naming ``where``) when a fact is missing or mistyped. Pure."""
        return BtreeVpFacts.from_json(data, where)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for a stream of ``version``. Raises VersionError (newer than
        ours), ChainError (a layer: it is restored only with its chain, by
        :mod:`lamina.online.chain`), DriverChoiceError (a non-btree table)."""
        if version > self.version:
            raise VersionError(f"btree backup data version {version}; this build reads up "
                               f"to {self.version}")
        if flags.layer:
            raise ChainError("a layer image holds only what changed after its base: restore "
                             "it with its chain (lamina restore FULL LAYER... --to DEST)")
        for t in tables:
            if t.engine != ENGINE_BTREE:
                raise DriverChoiceError(f"table {t.name!r} is an {t.engine} table, not btree")
        if flags.kind == DriverKind.AT_END:
            return BtreeAtEndRestoreDriver(tables, flags)
        return BtreeRestoreDriver(tables, flags)


__all__ = ["BtreeBackupEngine"]
