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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.backup import image_format as F
from lamina.backup.driver import BackupEngine, DriverGroup, TableSpec
from lamina.backup.history import BackupHistory
from lamina.backup.image_reader import ReadableStream, image_summary
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback, run_backup
from lamina.backup.restore import RestoreResult, restore_into_directory, run_restore
from lamina.backup.verify import verify_image
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.identity import Identity
from lamina.database import Database
from lamina.database import open as open_database
from lamina.engines.archive.backup import ArchiveBackupEngine
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.errors import CancelledError, CheckFailedError, CorruptionError, TableNotFoundError

ImageTarget = str | os.PathLike[str] | Any  # a path, or a writable binary stream


def backup_engines(db: Database) -> dict[str, BackupEngine]:
    """The native backup engine of every engine the database has, by engine name."""
    return {ENGINE_BTREE: BtreeBackupEngine(db.store),
            ENGINE_ARCHIVE: ArchiveBackupEngine(db.path, db.lockfile)}


def restore_engines() -> dict[str, BackupEngine]:
    """Engines able to restore images into a new directory (no open database needed)."""
    return {ENGINE_BTREE: BtreeBackupEngine(None), ENGINE_ARCHIVE: ArchiveBackupEngine(None, None)}


def plan_groups(db: Database, tables: Sequence[str] | None) -> list[DriverGroup]:
    """One driver group per engine, over the chosen tables (all when ``tables`` is None).

    The btree group is always present, even with no btree table chosen: the btree file
    carries the catalog, which every restore needs. Raises TableNotFoundError.
    """
    infos = {t.name: t for t in db.tables()}
    chosen = sorted(infos) if tables is None else list(dict.fromkeys(tables))
    for name in chosen:
        if name not in infos:
            raise TableNotFoundError(f"no table {name!r} in {db.path}")
    engines = backup_engines(db)
    by_engine: dict[str, list[TableSpec]] = {ENGINE_BTREE: [], ENGINE_ARCHIVE: []}
    for name in chosen:
        info = infos[name]
        by_engine[info.engine].append(TableSpec(info.name, info.engine, info.table_id))
    groups = [DriverGroup(engines[ENGINE_BTREE], tuple(by_engine[ENGINE_BTREE]))]
    if by_engine[ENGINE_ARCHIVE]:
        groups.append(DriverGroup(engines[ENGINE_ARCHIVE], tuple(by_engine[ENGINE_ARCHIVE])))
    return groups


def backup(db: Database, target: ImageTarget, *, tables: Sequence[str] | None = None,
           codec: str = "zstd", level: int | None = None, buf_size: int = F.DEFAULT_BUF_SIZE,
           progress: ProgressCallback | None = None, cancel: CancelToken = None,
           blocker_timeout: float | None = 30.0) -> BackupResult:
    """Take a consistent online backup of ``db`` into ``target`` (a path or binary stream).

    Writers in any process go on; commits are delayed only while the validity point is
    created. The image holds each chosen table exactly as of the VP commit seq. A failure
    or cancellation leaves no image at ``target``. Raises TableNotFoundError, LockedError
    (the commit blocker could not be taken in ``blocker_timeout``), CancelledError,
    StorageError.
    """
    history = BackupHistory(db.path, db.lockfile, sync=db.sync)
    entry = history.start("full", "-" if not isinstance(target, str | os.PathLike)
                          else str(target))
    try:
        result = run_backup(plan_groups(db, tables), target, commit_blocker=db.lockfile,
                            commit_seq=db.lockfile.commit_seq, database_id=db.identity.db_id,
                            codec=codec, level=level, buf_size=buf_size, progress=progress,
                            cancel=cancel, blocker_timeout=blocker_timeout)
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
    Identity(result.header.database_id, time.time_ns(), result.header.image_id,
             vp.commit_seq, vp.wall_ns).write(tmp)
    in_image = {t.name for t in result.catalog.tables}
    if wanted is not None:
        missing = sorted(set(wanted) - in_image)
        if missing:
            raise TableNotFoundError(f"table(s) {', '.join(missing)} not in the image")
    keep = in_image if wanted is None else set(wanted)
    with open_database(tmp, create=False) as db:
        for info in db.tables():
            if info.name not in keep:  # not chosen, or not backed up (btree file carries all)
                db.drop_table(info.name)
        facts = _vp_facts(result, ENGINE_BTREE)
        expected = facts.get("root_hash")
        with db.read() as txn:
            actual = txn.root_hash.hex()
        if expected is not None and wanted is None and expected != actual:
            raise CorruptionError(f"restored root hash {actual} differs from the image's "
                                  f"{expected}", path=tmp)
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
            ) -> RestoreSummary:
    """Restore the image at ``source`` (path or binary stream) into a new database ``dest``.

    Works in a temporary directory next to ``dest`` and renames it into place only when the
    btree root hash equals the image's, archive row counts equal the VP's and the checker
    passes; on any failure nothing is left at ``dest``. The restored database keeps the
    source database id and records the image id and VP; its next commit seq follows the VP's.
    Raises AlreadyExistsError (``dest`` exists, no ``force``), TableNotFoundError,
    CorruptionError & co., VersionError, UnsupportedError, CheckFailedError, CancelledError.
    """
    start = time.monotonic_ns()
    engines = restore_engines()
    kept: list[tuple[str, ...]] = []

    def do_restore(tmp: Path) -> RestoreResult:
        return run_restore(source, engines, tmp, cancel=cancel, progress=progress)

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
    return {"image_id": str(result.image_id), "path": str(result.path) if result.path else None,
            "vp_commit_seq": result.vp.commit_seq, "vp_time_ns": result.vp.wall_ns,
            "bytes": result.size, "raw_bytes": result.raw_bytes, "drivers": drivers,
            "seconds": result.elapsed_ns / 1e9,
            "blocker_held_ms": result.blocker_held_ns / 1e6,
            "blocker_wait_ms": result.blocker_wait_ns / 1e6}


ProgressFactory = Callable[[str], ProgressCallback]
