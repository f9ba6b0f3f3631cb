"""Driver choice and engine wiring: which driver backs up each table, and the backup
engines that a database (or a restore) works with.

MySQL 6.0's choice, per table: the engine's *native* driver if it has one, else the
*snapshot* driver, else the *default* driver — unless the caller forces one
(:func:`choose_drivers`). :func:`plan_groups` turns the choice into the kernel's driver
groups over an open database; :func:`restore_engines` gives a restore the engines that
read every driver an image may name (no open database needed).

Concurrency: everything here is pure or reads the database's catalog; nothing is held.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lamina.backup.default_driver import DEFAULT_LOCK_TIMEOUT, DefaultBackupEngine
from lamina.backup.logical import LogicalProvider, LogicalSink, LogicalVpFacts
from lamina.backup.snapshot_driver import SnapshotBackupEngine
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import BackupEngine, DriverGroup, TableSpec
from lamina.database import Database
from lamina.engines.archive import logical as archive_logical
from lamina.engines.archive.engine import ArchiveBackupEngine
from lamina.engines.btree import logical as btree_logical
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.errors import DriverChoiceError, TableNotFoundError
from lamina.online.sink import RestoreSink

NATIVE, SNAPSHOT, DEFAULT = "native", "snapshot", "default"
#: The drivers of MySQL 6.0's choice, in order of preference.
DRIVERS = (NATIVE, SNAPSHOT, DEFAULT)
#: Which drivers each engine can use (its native one, a snapshot source, table locks).
ENGINE_DRIVERS: dict[str, tuple[str, ...]] = {
    ENGINE_BTREE: (NATIVE, SNAPSHOT, DEFAULT),
    ENGINE_ARCHIVE: (NATIVE, SNAPSHOT, DEFAULT),
}
#: Backup engine (driver) names that write layers, and so the only ones a chain can hold:
#: the native drivers.
CHAIN_DRIVERS = (ENGINE_BTREE, ENGINE_ARCHIVE)
#: ``driver=``: one driver for every table ("snapshot"), a mapping {table: driver} (key
#: "*" = every other table), or the CLI's text form "snapshot,t1=default".
DriverChoice = str | Mapping[str, str] | None


def parse_driver_choice(choice: DriverChoice) -> tuple[str | None, dict[str, str]]:
    """``(driver for every table or None, {table: driver})``. Raises DriverChoiceError for
    a driver name that does not exist or a malformed text form. Pure."""
    overall: str | None = None
    per_table: dict[str, str] = {}
    if choice is None:
        return None, {}
    items: list[tuple[str, str]]
    if isinstance(choice, str):
        items = []
        for part in (p.strip() for p in choice.split(",")):
            if not part:
                raise DriverChoiceError(f"malformed driver choice {choice!r}")
            name, sep, drv = part.partition("=")
            items.append((name.strip(), drv.strip()) if sep else ("*", name))
    else:
        items = [(str(k), str(v)) for k, v in choice.items()]
    for table, drv in items:
        if drv not in DRIVERS:
            raise DriverChoiceError(f"unknown backup driver {drv!r}; choose one of "
                                    f"{', '.join(DRIVERS)}")
        if table == "*":
            overall = drv
        elif not table:
            raise DriverChoiceError(f"malformed driver choice {choice!r}")
        else:
            per_table[table] = drv
    return overall, per_table


def choose_drivers(engines_of: Mapping[str, str], choice: DriverChoice) -> dict[str, str]:
    """The driver of every table (``engines_of``: table -> engine): native if the engine
    has one, else snapshot, else default — unless ``choice`` forces one. Raises
    DriverChoiceError (a forced driver the engine cannot use, an unknown driver, or a table
    not in the backup). Pure."""
    overall, per_table = parse_driver_choice(choice)
    for name in per_table:
        if name not in engines_of:
            raise DriverChoiceError(f"driver chosen for table {name!r}, which is not in "
                                    f"this backup")
    out: dict[str, str] = {}
    for name, engine in engines_of.items():
        usable = ENGINE_DRIVERS.get(engine, ())
        forced = per_table.get(name, overall)
        if forced is None:
            if not usable:
                raise DriverChoiceError(f"no backup driver can back up {engine} table "
                                        f"{name!r}")
            out[name] = usable[0]
        elif forced not in usable:
            raise DriverChoiceError(f"the {forced} driver cannot back up {engine} table "
                                    f"{name!r} (usable: {', '.join(usable) or 'none'})")
        else:
            out[name] = forced
    return out


def backup_engines(db: Database) -> dict[str, BackupEngine]:
    """The native backup engine of every engine the database has, by engine name."""
    return {ENGINE_BTREE: BtreeBackupEngine(db.store),
            ENGINE_ARCHIVE: ArchiveBackupEngine(db.path, db.lockfile)}


def logical_providers(db: Database) -> dict[str, LogicalProvider]:
    """Each engine's logical reader, for the snapshot and default drivers."""
    return {ENGINE_BTREE: btree_logical.BtreeLogical(db.store),
            ENGINE_ARCHIVE: archive_logical.ArchiveLogical(db.path, db.lockfile)}


def restore_engines(page_size: int | None = None) -> dict[str, BackupEngine]:
    """Engines able to restore (or verify) images into a new directory, by the driver name
    an image catalog records; no open database needed. Their ``decode_vp_facts`` reads
    each driver's VP facts.

    ``page_size`` is the btree page size a *logical* image's tables are loaded into
    (default: the source's, recorded in the image's VP facts).
    """
    def sink(destination: Path, facts: LogicalVpFacts) -> LogicalSink:
        return RestoreSink(destination, page_size, facts)

    return {ENGINE_BTREE: BtreeBackupEngine(None), ENGINE_ARCHIVE: ArchiveBackupEngine(None, None),
            SNAPSHOT: SnapshotBackupEngine(None, sink),
            DEFAULT: DefaultBackupEngine(None, sink)}


def table_drivers(db: Database, tables: Sequence[str] | None,
                  driver: DriverChoice = None) -> dict[str, str]:
    """The driver :func:`choose_drivers` picks for each chosen table (all when ``tables``
    is None), in backup order. Reads the catalog only; nothing is held, so a caller that
    needs the catalog to stay as planned holds the DDL lock. Raises TableNotFoundError,
    DriverChoiceError."""
    infos = {t.name: t for t in db.tables()}
    chosen = sorted(infos) if tables is None else list(dict.fromkeys(tables))
    for name in chosen:
        if name not in infos:
            raise TableNotFoundError(f"no table {name!r} in {db.path}")
    return choose_drivers({n: infos[n].engine for n in chosen}, driver)


def plan_groups(db: Database, tables: Sequence[str] | None, driver: DriverChoice = None,
                lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> list[DriverGroup]:
    """Driver groups over the chosen tables (all when ``tables`` is None), each table with
    the driver :func:`choose_drivers` picks; groups in the order native btree, native
    archive, snapshot, default (restore ends drivers in this order, so logical tables are
    loaded into a complete btree file).

    The native btree group carries the catalog; it is present when a btree table uses it,
    and (with no table) when every table uses its native driver — as before drivers could
    be chosen. A restore of an image without it creates the database and catalog itself.
    ``lock_timeout`` bounds the default driver's table locking. Reads the catalog only (the
    caller holds the DDL lock so that it stays as planned). Raises TableNotFoundError,
    DriverChoiceError.
    """
    infos = {t.name: t for t in db.tables()}
    drivers = table_drivers(db, tables, driver)
    chosen = list(drivers)
    natives = backup_engines(db)
    by_group: dict[tuple[str, str], list[TableSpec]] = {}
    for name in chosen:
        info = infos[name]
        key = (drivers[name], info.engine if drivers[name] == NATIVE else "")
        by_group.setdefault(key, []).append(TableSpec(info.name, info.engine, info.table_id))
    all_native = all(d == NATIVE for d in drivers.values())
    groups = []
    if (NATIVE, ENGINE_BTREE) in by_group or all_native:
        groups.append(DriverGroup(natives[ENGINE_BTREE],
                                  tuple(by_group.get((NATIVE, ENGINE_BTREE), ()))))
    if (NATIVE, ENGINE_ARCHIVE) in by_group:
        groups.append(DriverGroup(natives[ENGINE_ARCHIVE],
                                  tuple(by_group[(NATIVE, ENGINE_ARCHIVE)])))
    providers = logical_providers(db)
    if (SNAPSHOT, "") in by_group:
        groups.append(DriverGroup(SnapshotBackupEngine(providers),
                                  tuple(by_group[(SNAPSHOT, "")])))
    if (DEFAULT, "") in by_group:
        groups.append(DriverGroup(DefaultBackupEngine(providers, lock_timeout=lock_timeout),
                                  tuple(by_group[(DEFAULT, "")])))
    return groups


__all__ = [
    "CHAIN_DRIVERS",
    "DEFAULT",
    "DRIVERS",
    "ENGINE_DRIVERS",
    "NATIVE",
    "SNAPSHOT",
    "DriverChoice",
    "backup_engines",
    "choose_drivers",
    "logical_providers",
    "parse_driver_choice",
    "plan_groups",
    "restore_engines",
    "table_drivers",
]
