"""Online backup and restore of a whole :class:`~lamina.database.Database`.

This is the glue between a database and the kernel: it picks each table's driver, runs the
backup kernel with the database's commit blocker, and restores an image into a new
directory that is published only after it is proven (root hash, row counts, checker).
It sits above the engines (it constructs their native backup engines) and below the CLI.

Concurrency: a backup runs beside any number of writers in any process; they are held
back only while the validity point is created (``BackupResult.blocker_held_ns``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.backup import image_format as F
from lamina.backup.default_driver import DEFAULT_LOCK_TIMEOUT, DefaultBackupEngine
from lamina.backup.history import BackupHistory
from lamina.backup.image_reader import ReadableStream, image_summary
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback, run_backup
from lamina.backup.logical import LogicalProvider, LogicalSink, Row
from lamina.backup.restore import RestoreResult, restore_into_directory, run_restore
from lamina.backup.snapshot_driver import SnapshotBackupEngine
from lamina.backup.verify import verify_image
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import BackupEngine, DriverGroup, TableSpec
from lamina.core.identity import Identity
from lamina.core.lockfile import LockFile
from lamina.database import DDL_TIMEOUT, Database
from lamina.database import open as open_database
from lamina.engines.archive import logical as archive_logical
from lamina.engines.archive.backup import ArchiveBackupEngine
from lamina.engines.btree import BtreeStore
from lamina.engines.btree import format as btree_format
from lamina.engines.btree import logical as btree_logical
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.errors import (
    CancelledError,
    CheckFailedError,
    CorruptionError,
    DriverChoiceError,
    TableNotFoundError,
    UnsupportedError,
    UsageError,
)
from lamina.online import chain
from lamina.online.chain import combine_chain as combine_chain  # re-exported: the chain API
from lamina.online.chain import order_chain as order_chain
from lamina.online.chain import restore_chain as restore_chain
from lamina.online.chain import verify_chain as verify_chain

ImageTarget = str | os.PathLike[str] | Any  # a path, or a writable binary stream


def backup_engines(db: Database) -> dict[str, BackupEngine]:
    """The native backup engine of every engine the database has, by engine name."""
    return {ENGINE_BTREE: BtreeBackupEngine(db.store),
            ENGINE_ARCHIVE: ArchiveBackupEngine(db.path, db.lockfile)}


def restore_engines(page_size: int | None = None) -> dict[str, BackupEngine]:
    """Engines able to restore images into a new directory (no open database needed).

    ``page_size`` is the btree page size a *logical* image's tables are loaded into
    (default: the source's, recorded in the image).
    """
    def sink(destination: Path, facts: Mapping[str, Any]) -> LogicalSink:
        return RestoreSink(destination, page_size, facts)

    return {ENGINE_BTREE: BtreeBackupEngine(None), ENGINE_ARCHIVE: ArchiveBackupEngine(None, None),
            "snapshot": SnapshotBackupEngine(None, sink),
            "default": DefaultBackupEngine(None, sink)}


# ---------------------------------------------------------------------- driver choice
NATIVE, SNAPSHOT, DEFAULT = "native", "snapshot", "default"
#: The drivers of MySQL 6.0's choice, in order of preference.
DRIVERS = (NATIVE, SNAPSHOT, DEFAULT)
#: Which drivers each engine can use (its native one, a snapshot source, table locks).
ENGINE_DRIVERS: dict[str, tuple[str, ...]] = {
    ENGINE_BTREE: (NATIVE, SNAPSHOT, DEFAULT),
    ENGINE_ARCHIVE: (NATIVE, SNAPSHOT, DEFAULT),
}
#: ``driver=``: one driver for every table ("snapshot"), a mapping {table: driver} (key
#: "*" = every other table), or the CLI's text form "snapshot,t1=default".
DriverChoice = str | Mapping[str, str] | None


def parse_driver_choice(choice: DriverChoice) -> tuple[str | None, dict[str, str]]:
    """``(driver for every table or None, {table: driver})``. Raises DriverChoiceError for
    a driver name that does not exist or a malformed text form."""
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
    not in the backup)."""
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


def logical_providers(db: Database) -> dict[str, LogicalProvider]:
    """Each engine's logical reader, for the snapshot and default drivers."""
    return {ENGINE_BTREE: btree_logical.BtreeLogical(db.store),
            ENGINE_ARCHIVE: archive_logical.ArchiveLogical(db.path, db.lockfile)}


def plan_groups(db: Database, tables: Sequence[str] | None, driver: DriverChoice = None,
                lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> list[DriverGroup]:
    """Driver groups over the chosen tables (all when ``tables`` is None), each table with
    the driver :func:`choose_drivers` picks; groups in the order native btree, native
    archive, snapshot, default (restore ends drivers in this order, so logical tables are
    loaded into a complete btree file).

    The native btree group carries the catalog; it is present when a btree table uses it,
    and (with no table) when every table uses its native driver — as before drivers could
    be chosen. A restore of an image without it creates the database and catalog itself.
    ``lock_timeout`` bounds the default driver's table locking. Raises TableNotFoundError,
    DriverChoiceError.
    """
    infos = {t.name: t for t in db.tables()}
    chosen = sorted(infos) if tables is None else list(dict.fromkeys(tables))
    for name in chosen:
        if name not in infos:
            raise TableNotFoundError(f"no table {name!r} in {db.path}")
    drivers = choose_drivers({n: infos[n].engine for n in chosen}, driver)
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


# ---------------------------------------------------------------------- logical restore
class RestoreSink:
    """Writes logical tables into a restore destination through the engines (a
    :class:`~lamina.backup.logical.LogicalSink`): opens — creating if no native driver
    restored it — the btree file with ``page_size`` (default: the source's, from the VP
    facts), bulk-loads btree tables and appends archive tables' rows, each under its
    original table id. Used from one thread; :meth:`close` once.
    """

    def __init__(self, directory: Path, page_size: int | None,
                 facts: Mapping[str, Any]) -> None:
        self.directory = Path(directory)
        sources = facts.get("sources", {}) if isinstance(facts, Mapping) else {}
        source_ps = sources.get(ENGINE_BTREE, {}).get("page_size") if isinstance(
            sources, Mapping) else None
        ps = page_size or (source_ps if isinstance(source_ps, int) else None) or 4096
        self.lockfile = LockFile.open(self.directory, init=self._init_lockfile)
        try:
            self.store = BtreeStore.open(self.directory, self.lockfile, create=True,
                                         readonly=False, page_size=ps, sync=True)
        except BaseException:
            self.lockfile.close()
            raise

    def _init_lockfile(self, lockfile: LockFile) -> None:
        seq, meta = BtreeStore.read_committed_meta(self.directory)
        lockfile.set_commit_seq(seq)
        lockfile.publish_btree_meta(meta)

    def ensure_entry(self, spec: TableSpec) -> None:
        """Give ``spec`` a catalog entry (its own id) unless it has one. Raises
        CorruptionError if the name is taken by another id or engine."""
        with self.store.begin_write(None) as txn:
            entry = txn.catalog_get(spec.name)
            if entry is None:
                txn.create_table(spec.name, spec.engine, table_id=spec.table_id)
            elif entry.engine != spec.engine or entry.table_id != spec.table_id:
                raise CorruptionError(f"table {spec.name!r} is {entry.engine} id "
                                      f"{entry.table_id} in the restored catalog, but "
                                      f"{spec.engine} id {spec.table_id} in the image")

    def load(self, spec: TableSpec, info: Mapping[str, Any], rows: Iterator[Row]) -> int:
        """Create ``spec`` and load its rows; returns how many. Raises UnsupportedError
        (an engine this build lacks), KeyTooLargeError (a key longer than the destination
        page size allows), CorruptionError."""
        if spec.engine == ENGINE_BTREE:
            return btree_logical.load_table(self.store, spec, rows)
        if spec.engine == ENGINE_ARCHIVE:
            self.ensure_entry(spec)
            return archive_logical.load_table(self.directory, self.lockfile, spec,
                                              dict(info), rows)
        raise UnsupportedError(f"table {spec.name!r} uses engine {spec.engine!r}, which this "
                               "build does not have")

    def close(self) -> None:
        """Close the store and the lock file."""
        try:
            self.store.close()
        finally:
            self.lockfile.close()


def _complete_catalog(tmp: Path, result: RestoreResult, page_size: int | None) -> None:
    """An image without the native btree driver carries no catalog: give every table that
    no logical driver registered (native archive tables) its catalog entry, creating the
    btree file if no logical driver did."""
    if any(d.name == ENGINE_BTREE for d in result.catalog.drivers):
        return
    sink = RestoreSink(tmp, page_size, {})
    try:
        for t in result.catalog.tables:
            sink.ensure_entry(TableSpec(t.name, t.engine, t.table_id))
    finally:
        sink.close()


def backup(db: Database, target: ImageTarget, *, tables: Sequence[str] | None = None,
           codec: str = "zstd", level: int | None = None, buf_size: int = F.DEFAULT_BUF_SIZE,
           progress: ProgressCallback | None = None, cancel: CancelToken = None,
           blocker_timeout: float | None = 30.0, driver: DriverChoice = None,
           max_rate: float | None = None,
           lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
           base: str | os.PathLike[str] | None = None) -> BackupResult:
    """Take a consistent online backup of ``db`` into ``target`` (a path or binary stream).

    Writers in any process go on; with the native and snapshot drivers commits are delayed
    only while the validity point is created; the default driver makes each table's writers
    wait from ``prelock`` until the table is sent. The image holds each chosen table exactly
    as of the VP commit seq. ``driver`` forces drivers (see :func:`choose_drivers`; the
    choice is recorded per table in the image catalog and the history); ``max_rate`` bounds
    the read rate in MB/s (10^6 bytes per second); ``lock_timeout`` bounds how long the
    default driver tries to lock its tables. A failure or cancellation leaves no image at
    ``target`` and no lock or snapshot held; every outcome is recorded in the history.
    ``base`` (the path of an earlier image of this database, full or layer) makes the image
    a *layer*: only what changed after the base's VP (see :mod:`lamina.online.chain`);
    native drivers only.
    Raises TableNotFoundError, DriverChoiceError, UsageError, LockedError (the commit
    blocker or a default-driver table lock not obtained in time), CancelledError,
    StorageError; with ``base``: NotFoundError (no base image), ChainError (a base from
    another database, or newer than the database).
    """
    history = BackupHistory(db.path, db.lockfile, sync=db.sync)
    entry = history.start("full" if base is None else "layer",
                          "-" if not isinstance(target, str | os.PathLike) else str(target))
    try:
        if max_rate is not None and not max_rate > 0:
            raise UsageError(f"max rate must be a positive number of MB/s, not {max_rate}")
        # MySQL 6.0's DDL blocker: no table is created or dropped from the moment the table
        # list is planned until the backup ends, so the image's catalog is exactly the
        # VP's (a table created before the VP is in it; none vanishes mid-backup).
        with db.lockfile.ddl_lock.held(DDL_TIMEOUT):
            groups = plan_groups(db, tables, driver, lock_timeout)
            base_ref = None
            if base is not None:
                base_ref, base_facts = chain.layer_base(db, base)
                groups = chain.layer_groups(groups, base_ref, base_facts)
            result = run_backup(groups, target, commit_blocker=db.lockfile, base=base_ref,
                                commit_seq=db.lockfile.commit_seq,
                                database_id=db.identity.db_id,
                                database_incarnation=db.identity.incarnation,
                                codec=codec, level=level,
                                buf_size=buf_size, progress=progress, cancel=cancel,
                                blocker_timeout=blocker_timeout,
                                max_rate=None if max_rate is None else max_rate * 1e6)
    except CancelledError:
        history.finish(entry, "cancelled", error="cancelled on request")
        raise
    except BaseException as exc:
        history.finish(entry, "error", error=str(exc) or type(exc).__name__)
        raise
    summary = describe(result)
    history.finish(entry, "done", vp_time_ns=result.vp.wall_ns,
                   vp_commit_seq=result.vp.commit_seq, bytes=result.size,
                   drivers=summary["drivers"], blocker_held_ns=result.blocker_held_ns)
    return result


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore produced: where, from which image, at which VP, and how long."""

    path: Path
    result: RestoreResult
    tables: tuple[str, ...]
    elapsed_ns: int

    @property
    def vp(self) -> F.ValidityPoint:
        """The validity point the restored database represents."""
        return self.result.manifest.vp

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (``lamina restore --json``)."""
        return {"path": str(self.path), "image_id": str(self.result.header.image_id),
                "vp_commit_seq": self.vp.commit_seq, "vp_time_ns": self.vp.wall_ns,
                "tables": list(self.tables), "image_bytes": self.result.size,
                "seconds": self.elapsed_ns / 1e9}


def _vp_facts(result: RestoreResult, driver: str) -> dict[str, Any]:
    for entry, facts in zip(result.catalog.drivers, result.manifest.vp.drivers):
        if entry.name == driver:
            return dict(facts)
    return {}


def _finish(tmp: Path, result: RestoreResult, wanted: Sequence[str] | None) -> tuple[str, ...]:
    """Make ``tmp`` a database, drop unwanted tables, prove it; returns the tables kept."""
    vp = result.manifest.vp
    # The restored database keeps the source's id but starts a new incarnation: its history
    # is the source's up to the VP and its own after, so it may continue the chain of the
    # image it came from but never layer on the source's later images (two histories).
    Identity(result.header.database_id, time.time_ns(), result.header.image_id,
             vp.commit_seq, vp.wall_ns, incarnation=uuid.uuid4(),
             origin_incarnation=result.header.incarnation).write(tmp)
    in_image = {t.name for t in result.catalog.tables}
    if wanted is not None:
        missing = sorted(set(wanted) - in_image)
        if missing:
            raise TableNotFoundError(f"table(s) {', '.join(missing)} not in the image")
    keep = in_image if wanted is None else set(wanted)
    with open_database(tmp, create=False) as db:
        facts = _vp_facts(result, ENGINE_BTREE)
        expected = facts.get("root_hash")
        with db.read() as txn:
            actual = txn.root_hash.hex()
        logical = any(d.name in (SNAPSHOT, DEFAULT) for d in result.catalog.drivers)
        # Checked before any table is dropped: the native btree file must be the VP's, bit
        # for bit. Logical drivers rebuild their tables (a new tree), so the root hash of the
        # VP cannot match; their row counts were checked against the VP facts instead.
        if expected is not None and not logical and expected != actual:
            raise CorruptionError(f"restored root hash {actual} differs from the image's "
                                  f"{expected}", path=tmp)
        for info in db.tables():
            if info.name not in keep:  # not chosen, or not backed up (btree file carries all)
                db.drop_table(info.name)
        archive_facts = _vp_facts(result, ENGINE_ARCHIVE).get("tables", {})
        for info in db.tables():
            if info.engine == ENGINE_ARCHIVE and info.name in archive_facts:
                rows = db.archive(info.name).count()
                if rows != archive_facts[info.name].get("rows"):
                    raise CorruptionError(f"archive table {info.name!r} restored {rows} rows, "
                                          f"the image's VP says "
                                          f"{archive_facts[info.name].get('rows')}", path=tmp)
        report = db.check()
        if not report.ok:
            raise CheckFailedError(f"restored database fails the checker "
                                   f"({len(report.findings)} problems): {report.findings[0]}",
                                   report.findings)
        return tuple(sorted(t.name for t in db.tables()))


def restore(source: str | os.PathLike[str] | ReadableStream, dest: str | os.PathLike[str], *,
            tables: Sequence[str] | None = None, force: bool = False,
            progress: ProgressCallback | None = None, cancel: CancelToken = None,
            page_size: int | None = None) -> RestoreSummary:
    """Restore the image at ``source`` (path or binary stream) into a new database ``dest``.

    Works in a temporary directory next to ``dest`` and renames it into place only when the
    btree root hash equals the image's, archive row counts equal the VP's and the checker
    passes; on any failure nothing is left at ``dest``. The restored database keeps the
    source database id and records the image id and VP; its next commit seq follows the VP's.
    ``page_size`` restores a *logical* image (snapshot/default drivers) into a btree file
    of that page size; tables are rebuilt compact. With an image that carries the btree file
    natively it is a UsageError (raised before anything is written).
    Raises AlreadyExistsError (``dest`` exists, no ``force``), TableNotFoundError,
    UsageError, CorruptionError & co., VersionError, UnsupportedError, CheckFailedError,
    CancelledError, KeyTooLargeError (a key too long for ``page_size``).
    """
    start = time.monotonic_ns()
    if page_size is not None and not btree_format.valid_page_size(page_size):
        raise UsageError(f"page size {page_size} is not a power of two in 1024..65536")
    engines = restore_engines(page_size)
    kept: list[tuple[str, ...]] = []

    def lookup(name: str) -> BackupEngine | None:
        if page_size is not None and name == ENGINE_BTREE:
            raise UsageError("--page-size applies only to logical images (snapshot or "
                             "default driver); this image carries the btree file natively")
        return engines.get(name)

    def do_restore(tmp: Path) -> RestoreResult:
        result = run_restore(source, lookup, tmp, cancel=cancel, progress=progress)
        _complete_catalog(tmp, result, page_size)
        return result

    def verify(tmp: Path, result: RestoreResult) -> None:
        kept.append(_finish(tmp, result, tables))

    result = restore_into_directory(dest, do_restore, verify, force=force, cancel=cancel)
    return RestoreSummary(Path(dest), result, kept[0], time.monotonic_ns() - start)


def verify(source: str | os.PathLike[str] | ReadableStream, *, deep: bool = False,
           progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Verify an image without restoring it; returns a JSON-ready report.

    Always: every chunk checksum, per-stream sequence and hash, the manifest hash and the
    footer. ``deep``: also runs every restore driver in verify-only mode, which rebuilds the
    btree Merkle root from the image's pages (compared with the VP's root hash) and decodes
    every archive block — writing nothing. Raises CorruptionError naming the first damage,
    NotADatabaseError, VersionError, UnsupportedError.
    """
    if not deep:
        report = verify_image(source)
        out = report.to_json()
        out.update(chunks=report.chunks, streams=report.catalog.stream_count, deep=False)
        return out
    result = run_restore(source, restore_engines(), None, progress=progress)
    out = image_summary(result.header, result.catalog, result.manifest, result.size)
    out.update(ok=True, chunks=result.chunks, streams=result.catalog.stream_count, deep=True)
    return out


def describe(result: BackupResult) -> dict[str, Any]:
    """JSON-ready summary of a finished backup (``lamina backup --json``)."""
    drivers = {t.name: result.catalog.drivers[t.driver].name for t in result.catalog.tables}
    rows: dict[str, int] = {}
    for facts in result.manifest.vp.drivers:
        for name, t in (facts.get("tables") or {}).items():
            if isinstance(t, Mapping) and isinstance(t.get("rows"), int):
                rows[name] = t["rows"]
    return {"rows": rows, "image_id": str(result.image_id),
            "path": str(result.path) if result.path else None,
            "vp_commit_seq": result.vp.commit_seq, "vp_time_ns": result.vp.wall_ns,
            "bytes": result.size, "raw_bytes": result.raw_bytes, "drivers": drivers,
            "seconds": result.elapsed_ns / 1e9,
            "blocker_held_ms": result.blocker_held_ns / 1e6,
            "blocker_wait_ms": result.blocker_wait_ns / 1e6}


ProgressFactory = Callable[[str], ProgressCallback]
