"""Taking a backup of a :class:`~lamina.database.Database`: plan its driver groups (and a
layer's base), run the backup kernel with the database's commit blocker, and record the
outcome in the database's backup history.

Concurrency: a backup runs beside any number of writers in any process; they are held
back only while the validity point is created (``BackupResult.blocker_held_ns``), and with
the default driver each table's writers wait until that table is sent. Tables are neither
created nor dropped while a backup runs (it holds the DDL lock).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from lamina.backup import image_format
from lamina.backup.codec import check_level, parse_codec
from lamina.backup.default_driver import DEFAULT_LOCK_TIMEOUT
from lamina.backup.history import BackupHistory
from lamina.backup.image_reader import ImageLocation
from lamina.backup.kernel import (
    BackupResult,
    CancelToken,
    ProgressCallback,
    ResumePoint,
    run_backup,
)
from lamina.core.driver import DriverGroup
from lamina.database import DDL_TIMEOUT, Database
from lamina.errors import CancelledError, TableNotFoundError, UsageError
from lamina.online.at_end import at_end_groups, check_at_end_choice, parse_vp, vp_kind
from lamina.online.facts import ImageFacts
from lamina.online.layers import plan_layer
from lamina.online.plan import DriverChoice, plan_groups, table_drivers
from lamina.online.root import root_hash_function

#: Where a backup writes: a path, or a writable binary stream.
ImageTarget = str | os.PathLike[str] | Any


def backup(db: Database, target: ImageTarget, *, tables: Sequence[str] | None = None,
           codec: str = "zstd", level: int | None = None,
           buf_size: int = image_format.DEFAULT_BUF_SIZE,
           progress: ProgressCallback | None = None, cancel: CancelToken = None,
           blocker_timeout: float | None = 30.0, driver: DriverChoice = None,
           max_rate: float | None = None,
           lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
           base: ImageLocation | None = None,
           image_id: uuid.UUID | None = None,
           on_vp: Callable[[ResumePoint, list[Any]], None] | None = None,
           resume: ResumePoint | None = None,
           expect_plan: list[Any] | None = None, vp: str = "begin",
           target_name: str | None = None) -> BackupResult:
    """Take a consistent online backup of ``db`` into ``target`` (a path or binary stream).

    Writers in any process go on; with the native and snapshot drivers commits are delayed
    only while the validity point is created; the default driver makes each table's writers
    wait from ``prelock`` until the table is sent. The image holds each chosen table exactly
    as of the VP commit seq. ``driver`` forces drivers (see
    :func:`~lamina.online.plan.choose_drivers`; the choice is recorded per table in the
    image catalog and the history); ``max_rate`` bounds the read rate in MB/s (10^6 bytes
    per second); ``lock_timeout`` bounds how long the default driver tries to lock its
    tables. A failure or cancellation leaves no image at ``target`` and no lock or snapshot
    held; every outcome is recorded in the history (an interrupt, KeyboardInterrupt, as
    ``cancelled``), except a request refused before it starts (a bad ``max_rate``, codec,
    ``level``, table, driver or ``vp`` choice: nothing is recorded). ``base`` (the location of
    an earlier image of this database, full or layer) makes the image a *layer*: only what
    changed after the base's VP (see :mod:`lamina.online.layers`); native drivers only.
    ``vp`` is where the validity point lies: ``"begin"`` (default: "at begin" drivers, the
    VP first and all data after it) or ``"end"`` ("at end" native drivers: the bulk is
    copied first and the VP taken after it, so the image is the database as of the end of
    the backup; see :mod:`lamina.online.at_end`).
    ``image_id`` names the new image (default: a random id); ``target_name`` names a
    stream target in the history (default ``-``). ``on_vp`` and ``resume`` are
    the kernel's (:func:`~lamina.backup.kernel.run_backup`: report the point that
    reproduces the image; write the image of such a point again), ``on_vp`` getting the
    backup's :func:`plan_of` too; ``expect_plan`` (with
    ``resume``: the :func:`plan_of` the interrupted backup recorded) must equal this
    backup's plan, else TableNotFoundError (a table of the VP was dropped or re-created
    since: the image could not be the same).
    Returns the kernel's :class:`~lamina.backup.kernel.BackupResult`.
    Raises TableNotFoundError, DriverChoiceError, UsageError, LockedError (the DDL lock, the
    commit blocker or a default-driver table lock not obtained in time), CancelledError,
    StorageError; with ``base``: NotFoundError (no base image), ChainError (a base from
    another database or history, or newer than the database), CorruptionError (a damaged
    base).
    """
    # A refused request is no backup: checked before the history records one.
    if max_rate is not None and not max_rate > 0:
        raise UsageError(f"max rate must be a positive number of MB/s, not {max_rate}")
    codec_id = parse_codec(codec)
    check_level(codec_id, level)
    at_end = parse_vp(vp)
    chosen = table_drivers(db, tables, driver)  # planned again below, under the DDL lock
    if at_end:
        check_at_end_choice(chosen)
    history = BackupHistory(db.path, db.lockfile, sync=db.sync)
    entry = history.start("full" if base is None else "layer",
                          str(target) if isinstance(target, str | os.PathLike)
                          else target_name or "-")
    try:
        # MySQL 6.0's DDL blocker: no table is created or dropped from the moment the table
        # list is planned until the backup ends, so the image's catalog is exactly the
        # VP's (a table created before the VP is in it; none vanishes mid-backup).
        with db.lockfile.ddl_lock.held(DDL_TIMEOUT):
            groups = plan_groups(db, tables, driver, lock_timeout)
            if expect_plan is not None and plan_of(groups) != expect_plan:
                raise TableNotFoundError(
                    f"the tables of {db.path} changed since the interrupted backup's "
                    f"validity point (one was dropped or re-created): it cannot be resumed")
            base_ref = None
            if base is not None:
                groups, base_ref = plan_layer(db, groups, base)
            if at_end:
                groups = at_end_groups(groups)
            result = run_backup(groups, target, commit_blocker=db.lockfile, base=base_ref,
                                commit_seq=db.lockfile.commit_seq,
                                database_id=db.identity.db_id,
                                database_incarnation=db.identity.incarnation,
                                codec=codec_id, level=level,
                                buf_size=buf_size, progress=progress, cancel=cancel,
                                blocker_timeout=blocker_timeout,
                                max_rate=None if max_rate is None else max_rate * 1e6,
                                image_id=image_id, resume=resume,
                                on_vp=None if on_vp is None else _with_plan(on_vp, groups),
                                root_hash=root_hash_function())
    except CancelledError:
        history.finish(entry, "cancelled", error="cancelled on request")
        raise
    except KeyboardInterrupt:  # a hard interrupt (a second Ctrl-C) is a cancellation too
        history.finish(entry, "cancelled", error="interrupted")
        raise
    except BaseException as exc:
        history.finish(entry, "error", error=str(exc) or type(exc).__name__)
        raise
    summary = describe(result)
    history.finish(entry, "done", vp_time_ns=result.vp.wall_ns,
                   vp_commit_seq=result.vp.commit_seq, bytes=result.size,
                   drivers=summary["drivers"], blocker_held_ns=result.blocker_held_ns,
                   image_id=str(result.image_id))
    return result


def _with_plan(on_vp: Callable[[ResumePoint, list[Any]], None],
               groups: Sequence[DriverGroup]) -> Callable[[ResumePoint], None]:
    plan = plan_of(groups)
    return lambda point: on_vp(point, plan)


def plan_of(groups: Sequence[DriverGroup]) -> list[Any]:
    """The JSON-ready shape of a backup's driver groups: ``[[engine, [[table, engine,
    id]...]]...]``; equal plans give equal image catalogs. Pure."""
    return [[g.engine.name, [[t.name, t.engine, t.table_id] for t in g.tables]]
            for g in groups]


def describe(result: BackupResult) -> dict[str, Any]:
    """JSON-ready summary of a finished backup (``lamina backup --json``): image id, root
    hash, path, VP, sizes, each table's driver, the rows its driver counted (archive and logical
    tables), time and commit-blocker cost, where the VP lies (``vp``: "begin" or "end") and
    its age at completion (``vp_age_ms``), and the killed backups' temporary files removed
    first (``cleaned``). Pure. Raises CorruptionError if the result's VP
    facts lack a fact (a driver bug)."""
    drivers = {t.name: result.catalog.drivers[t.driver].name for t in result.catalog.tables}
    rows = ImageFacts(result, f"image {result.image_id}").table_rows()
    return {"rows": rows, "image_id": str(result.image_id),
            "root_hash": result.manifest.root_hash.hex(),
            "path": str(result.path) if result.path else None,
            "vp_commit_seq": result.vp.commit_seq, "vp_time_ns": result.vp.wall_ns,
            "bytes": result.size, "raw_bytes": result.raw_bytes, "drivers": drivers,
            "encrypted": result.header.sealed,
            "seconds": result.elapsed_ns / 1e9,
            "blocker_held_ms": result.blocker_held_ns / 1e6,
            "blocker_wait_ms": result.blocker_wait_ns / 1e6,
            "vp": vp_kind(result.catalog), "vp_age_ms": result.vp_age_ns / 1e6,
            "cleaned": [str(c) for c in result.cleaned]}


__all__ = ["ImageTarget", "backup", "describe", "plan_of"]
