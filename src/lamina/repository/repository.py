"""A backup repository: a directory of images that knows their chains.

:class:`Repository` is the Python API behind ``lamina repo init``, ``backup --repo``,
``list``, ``restore --repo``, ``verify --repo`` and ``prune``. Layout and formats:
:mod:`lamina.repository.layout` and docs/format.md ("Repository").

Concurrency: any number of processes and threads may use one repository. ``backup``,
``restore``, ``verify`` and ``list`` share the repository lock, ``prune`` holds it alone,
and each waits at most ``lock_timeout`` seconds (then LockedError). A backup publishes its
image and the index entry together under the index lock, so readers see both or neither.

Crash safety: an image is written under ``tmp/`` and published (atomic put) only when
complete, so a half-written backup is never listed; the index is derived data, rebuilt from
the images whenever it disagrees with them (``index_rebuilt`` in each result says so).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina import online
from lamina.backup import image_format as F
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback, is_cancelled
from lamina.core import fileio
from lamina.database import Database
from lamina.errors import (
    AlreadyExistsError,
    CancelledError,
    CorruptionError,
    DataError,
    LaminaError,
    NotADatabaseError,
    NotFoundError,
    StorageError,
    UsageError,
)
from lamina.online import chain
from lamina.repository import layout as L
from lamina.repository.damage import check_point, order_key
from lamina.repository.index import (
    ImageRecord,
    Index,
    chain_size,
    load_index,
    record_from_image,
    save_index,
)
from lamina.repository.layout import RepoConfig
from lamina.repository.lock import RepositoryLock
from lamina.repository.policy import KeepPolicy
from lamina.repository.prune import PrunePlan, execute, plan_prune
from lamina.repository.storage import LocalStorage

#: Default wait for the repository lock, in seconds.
DEFAULT_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One backup as ``list`` shows it: its record, chain and restore cost."""

    record: ImageRecord
    chain: tuple[uuid.UUID, ...] | None  # backup ids, oldest first; None: broken
    chain_bytes: int
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description (``lamina list --json``)."""
        r = self.record
        return {"id": str(r.backup_id), "image_id": str(r.image_id), "kind": r.kind,
                "synthetic": r.synthetic,
                "base": None if r.base_image_id is None else str(r.base_image_id),
                "database_id": str(r.database_id), "vp_seq": r.vp_seq,
                "vp_time_ns": r.vp_wall_ns, "vp_time": _iso(r.vp_wall_ns),
                "size": r.size, "chain_size": self.chain_bytes,
                "chain": None if self.chain is None else [str(c) for c in self.chain],
                "problem": self.problem}


@dataclass(frozen=True, slots=True)
class RepoBackupResult:
    """A backup taken into the repository: what it is, and why a full or a layer."""

    backup_id: uuid.UUID
    kind: str
    base_id: uuid.UUID | None
    reason: str
    result: BackupResult
    index_rebuilt: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (``lamina backup --repo --json``)."""
        return {**online.describe(self.result), "backup_id": str(self.backup_id),
                "kind": self.kind, "base": None if self.base_id is None else str(self.base_id),
                "reason": self.reason, "index_rebuilt": self.index_rebuilt}


@dataclass(frozen=True, slots=True)
class RepoRestoreResult:
    """A restore from the repository: which backup, through which chain."""

    backup_id: uuid.UUID
    chain: tuple[uuid.UUID, ...]
    summary: online.RestoreSummary
    index_rebuilt: str | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (``lamina restore --repo --json``)."""
        return {**self.summary.to_json(), "backup_id": str(self.backup_id),
                "chain": [str(c) for c in self.chain], "index_rebuilt": self.index_rebuilt}


@dataclass(slots=True)
class RepoVerifyReport:
    """Per chain verified: the backup it ends at, its images, and the outcome."""

    results: list[dict[str, Any]] = field(default_factory=list)
    index_rebuilt: str | None = None
    first_error: LaminaError | None = None

    @property
    def ok(self) -> bool:
        """True when every chain verified."""
        return self.first_error is None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report (``lamina verify --repo --json``)."""
        return {"ok": self.ok, "chains": self.results, "index_rebuilt": self.index_rebuilt}


@dataclass(slots=True)
class PruneResult:
    """What a prune did (or, with ``dry_run``, would do)."""

    plan: PrunePlan
    index: Index
    dry_run: bool
    index_rebuilt: str | None
    stale_files_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report (``lamina prune --json``)."""
        return {**self.plan.to_json(self.index), "dry_run": self.dry_run,
                "merged": [str(i) for i in self.plan.done_merges],
                "deleted": [str(i) for i in self.plan.done_deletes],
                "stale_files_removed": self.stale_files_removed,
                "index_rebuilt": self.index_rebuilt}


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="microseconds")


def parse_time(value: str | float | int | dt.datetime) -> int:
    """A point in time as ns since the epoch: a datetime, epoch seconds (number or
    numeric string), or ISO 8601 text (without a zone: UTC). Raises UsageError."""
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return int(moment.timestamp() * 1e9)
    if isinstance(value, int | float):
        return int(value * 1e9)
    text = value.strip()
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"time {value!r} is neither ISO 8601 nor epoch seconds") from None
    return parse_time(moment)


class _Target:
    """The repository side of a prune's execution (:class:`~.prune.PruneTarget`)."""

    def __init__(self, storage: LocalStorage) -> None:
        self.storage = storage

    def image_path(self, record: ImageRecord) -> Path:
        return self.storage.local_path(record.key)

    def staging_path(self) -> Path:
        return self.storage.staging_dir() / f"merge-{uuid.uuid4().hex}{L.IMAGE_SUFFIX}"

    def publish(self, record: ImageRecord, staged: Path) -> int:
        self.storage.put_file(record.key, staged)
        return self.storage.stat(record.key).size

    def delete(self, record: ImageRecord) -> None:
        self.storage.delete(record.key)

    def discard(self, staged: Path) -> None:
        with contextlib.suppress(StorageError):
            fileio.unlink(staged)


def _combine(paths: list[Path], out: Path, backup_id: uuid.UUID,
             cancel: CancelToken = None) -> tuple[uuid.UUID, int, bool]:
    """One synthetic full image of the chain ``paths`` at ``out`` that keeps the replaced
    backup's id (so layers on it still link), checked whole before the caller publishes it
    (it replaces a layer that restores today)."""
    info = chain.combine_chain(paths, out, image_id=backup_id, cancel=cancel)
    chain.verify_chain([out], cancel=cancel)
    return info.header.image_id, info.vp.commit_seq, info.manifest.kind == F.ImageKind.FULL


class Repository:
    """A backup repository on a local directory (see the module doc).

    Create one with :meth:`init`, open one with :meth:`open`. The object holds no open
    files or locks between calls; it may be shared by threads.
    """

    def __init__(self, storage: LocalStorage, config: RepoConfig, *,
                 lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> None:
        self.storage = storage
        self.config = config
        self.locks = RepositoryLock(storage.root / L.LOCKS_DIR, str(storage.root),
                                    lock_timeout)

    @property
    def path(self) -> Path:
        """The repository directory."""
        return self.storage.root

    # ------------------------------------------------------------------ open / init
    @classmethod
    def init(cls, path: str | os.PathLike[str], *, chain_limit: int = L.DEFAULT_CHAIN_LIMIT,
             lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> Repository:
        """Create a repository in ``path`` (a new or empty directory) and return it.

        The config file is written last, so an interrupted init leaves no repository.
        Raises AlreadyExistsError (a repository or other files are there), UsageError
        (bad chain limit), StorageError.
        """
        root = Path(path)
        config = RepoConfig.new(chain_limit)
        if (root / L.CONFIG_KEY).exists():
            raise AlreadyExistsError(f"{root} is a Lamina repository already")
        if root.exists():
            if not root.is_dir():
                raise AlreadyExistsError(f"{root} exists and is not a directory")
            leftovers = {p.name for p in root.iterdir()} - {
                L.STAGING_DIR, L.LOCKS_DIR, L.IMAGES_PREFIX.rstrip("/"), L.INDEX_KEY}
            if leftovers:
                raise AlreadyExistsError(f"{root} exists and is not empty")
        fileio.mkdir(root, parents=True, exist_ok=True)
        for sub in (L.IMAGES_PREFIX.rstrip("/"), L.STAGING_DIR, L.LOCKS_DIR):
            fileio.mkdir(root / sub, exist_ok=True)
        storage = _storage(root)
        save_index(storage, Index([]))
        storage.put_bytes(L.CONFIG_KEY, config.encode())
        return cls(storage, config, lock_timeout=lock_timeout)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *,
             lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> Repository:
        """Open the repository in ``path``.

        Raises NotFoundError (no such directory), NotADatabaseError (a directory that is
        not a repository: no config, or not a config), VersionError (a repository of a
        newer format), CorruptionError (damaged config), StorageError.
        """
        root = Path(path)
        if not root.is_dir():
            raise NotFoundError(f"no repository {root} (no such directory)")
        storage = _storage(root)
        try:
            data = storage.get_bytes(L.CONFIG_KEY, limit=L.MAX_CONFIG_SIZE)
        except NotFoundError:
            raise NotADatabaseError(f"{root} is not a Lamina repository (no {L.CONFIG_KEY}; "
                                    f"create one with 'lamina repo init')") from None
        config = RepoConfig.decode(data, root / L.CONFIG_KEY)
        return cls(storage, config, lock_timeout=lock_timeout)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _shared(self, operation: str) -> Iterator[None]:
        with self.locks.repository(exclusive=False, operation=operation):
            yield

    def _load(self) -> tuple[Index, str | None]:
        with self.locks.index():
            loaded = load_index(self.storage)
        return loaded.index, loaded.rebuilt

    def _paths(self, chain: Sequence[ImageRecord]) -> list[Path]:
        return [self.storage.local_path(r.key) for r in chain]

    def _candidates(self, index: Index, database: str | None) -> list[ImageRecord]:
        records = [r for r in index.records.values() if r.error is None]
        if database is not None:
            wanted = database.strip().lower()
            records = [r for r in records if str(r.database_id).startswith(wanted)]
            if not records:
                check_point(index, None, [], f"backup of database {database}", self.path)
                raise NotFoundError(f"no backup of database {database} in the repository")
        databases = {r.database_id for r in records}
        if len(databases) > 1:
            raise UsageError(f"the repository holds backups of {len(databases)} databases; "
                             f"choose one with --database (ids: "
                             f"{', '.join(sorted(str(d) for d in databases))})")
        return records

    def resolve(self, index: Index, id: str | None = None,
                at: str | float | int | dt.datetime | None = None,
                database: str | None = None) -> ImageRecord:
        """The backup ``id`` names, else the newest with VP time <= ``at``, else the newest
        (of ``database``, required when the repository holds several).

        Without ``id`` an older point is never chosen silently: CorruptionError ("damaged",
        naming the image, and the newest intact backup to pass as ``id`` instead) when the
        backup chosen is damaged (an image of its chain missing or unreadable), when a
        damaged image may hold a newer point, or when only damaged images are there (see
        :mod:`lamina.repository.damage`). Raises NotFoundError, UsageError."""
        if id is not None:
            if at is not None:
                raise UsageError("give a backup id or a time, not both")
            return index.find(id)
        pool = self._candidates(index, database)
        records, what = pool, "latest backup"
        if at is not None:
            limit = parse_time(at)
            records = [r for r in pool if r.vp_wall_ns <= limit]
            what = f"newest backup at or before {at}"
        target = max(records, key=order_key, default=None)
        check_point(index, target, pool, what, self.path)
        if target is None and at is not None:
            raise NotFoundError(f"no backup with a validity point at or before {at}")
        if target is None:
            raise NotFoundError(f"the repository {self.path} holds no backup")
        return target

    # ------------------------------------------------------------------ operations
    def list(self) -> tuple[list[BackupEntry], str | None]:
        """Every backup, oldest VP first, with its chain; and why the index was rebuilt
        (None if it was not). Raises LockedError, StorageError."""
        with self._shared("list"):
            index, rebuilt = self._load()
        entries = []
        for r in index.sorted():
            try:
                images = index.chain(r)
                entries.append(BackupEntry(r, tuple(c.backup_id for c in images),
                                           chain_size(images), None))
            except DataError as exc:
                entries.append(BackupEntry(r, None, 0, str(exc)))
        return entries, rebuilt

    def _choose_base(self, db: Database, index: Index, full: bool
                     ) -> tuple[ImageRecord | None, str]:
        if full:
            return None, "full requested"
        ident = db.identity
        current = db.lockfile.commit_seq()
        mine = [r for r in index.records.values()
                if r.error is None and r.database_id == ident.db_id]
        if not mine:
            return None, f"no backup of database {ident.db_id} in the repository"
        # Only backups of this database's own history (its incarnation, or the one it was
        # restored from up to the restore's VP; online.layers.layer_base applies the same rule).
        usable = [r for r in mine if r.vp_seq <= current
                  and ident.shares_history_with(r.incarnation, r.vp_seq)]
        if not usable:
            return None, "no backup of this database's own history in the repository"
        newest = max(usable, key=lambda r: (r.vp_seq, r.vp_wall_ns, str(r.backup_id)))
        images = index.chain_or_none(newest)
        if images is None:
            return None, f"the chain of the newest backup {newest.backup_id} is broken"
        layers = len(images) - 1
        if layers >= self.config.chain_limit:
            return None, (f"the chain of {newest.backup_id} has {layers} layer(s) "
                          f"(limit {self.config.chain_limit})")
        return newest, f"layer {layers + 1} on {newest.backup_id}"

    def backup(self, db: Database, full: bool = False, *, codec: str = "zstd",
               progress: ProgressCallback | None = None,
               cancel: CancelToken = None) -> RepoBackupResult:
        """Back up ``db`` into the repository: a layer on the newest backup of this database
        here, or a full when there is none, when ``full``, when that backup's chain is
        broken, or when its chain already has ``chain_limit`` layers.

        The image is written to ``tmp/`` and published under ``images/`` with its index
        entry only when complete. Raises LockedError (repository or commit blocker),
        CancelledError, StorageError and whatever ``online.backup`` raises; on any error
        nothing is published.
        """
        with self._shared("backup"):
            index, rebuilt = self._load()
            base, reason = self._choose_base(db, index, full)
            staged = self.storage.staging_dir() / f"backup-{uuid.uuid4().hex}{L.IMAGE_SUFFIX}"
            try:
                base_path = None if base is None else self.storage.local_path(base.key)
                result = online.backup(db, staged, codec=codec, progress=progress,
                                       cancel=cancel, base=base_path)
                key = L.image_key(result.image_id)
                with self.locks.index():
                    loaded = load_index(self.storage, save=False)
                    rebuilt = rebuilt or loaded.rebuilt
                    self.storage.put_file(key, staged)
                    try:
                        record = record_from_image(self.storage, self.storage.stat(key))
                        save_index(self.storage, loaded.index.with_record(record))
                    except BaseException:
                        # Nothing is published on error: withdraw the image (no reader has
                        # seen it, they load the index under the lock we hold). If that
                        # fails too, it is a whole image the next index load lists.
                        with contextlib.suppress(LaminaError):
                            self.storage.delete(key)
                        raise
            finally:
                with contextlib.suppress(StorageError):
                    fileio.unlink(staged)
        return RepoBackupResult(result.image_id, "layer" if base else "full",
                                None if base is None else base.backup_id, reason, result,
                                rebuilt)

    def restore(self, dest: str | os.PathLike[str], id: str | None = None,
                at: str | float | int | dt.datetime | None = None, *,
                database: str | None = None, tables: Sequence[str] | None = None,
                force: bool = False, progress: ProgressCallback | None = None,
                cancel: CancelToken = None, check: bool = False) -> RepoRestoreResult:
        """Restore backup ``id`` (else the newest with VP time <= ``at``, else the newest)
        into the new database directory ``dest``, through its whole chain (``check``: run
        the whole checker too, :func:`lamina.online.chain.restore_chain`).

        Raises NotFoundError (unknown id, nothing at that time), UsageError, ChainError (a
        base missing), CorruptionError & co., AlreadyExistsError, CheckFailedError,
        LockedError, CancelledError. ``dest`` is published only once proven.
        """
        with self._shared("restore"):
            index, rebuilt = self._load()
            record = self.resolve(index, id, at, database)
            images = index.chain(record)
            summary = chain.restore_chain(self._paths(images), Path(dest), tables=tables,
                                          force=force, progress=progress, cancel=cancel,
                                          check=check)
        return RepoRestoreResult(record.backup_id, tuple(r.backup_id for r in images),
                                 summary, rebuilt)

    def verify(self, id: str | None = None, *, deep: bool = False,
               progress: ProgressCallback | None = None,
               cancel: CancelToken = None) -> RepoVerifyReport:
        """Verify the chain of backup ``id``, or (no id) every chain: one per backup that
        no other builds on, so every image is read. Errors are collected per chain
        (``first_error``); a bad id raises NotFoundError/UsageError, a busy repository
        LockedError, ``cancel`` (checked before every chunk) CancelledError."""
        report = RepoVerifyReport()
        with self._shared("verify"):
            index, report.index_rebuilt = self._load()
            if id is not None:
                targets = [index.find(id)]
            else:
                children = index.children()
                targets = [r for r in index.sorted() if r.backup_id not in children]
            for record in targets:
                entry: dict[str, Any] = {"backup_id": str(record.backup_id), "chain": None}
                try:
                    images = index.chain(record)
                    entry["chain"] = [str(r.backup_id) for r in images]
                    details = chain.verify_chain(self._paths(images), deep=deep,
                                                 progress=progress, cancel=cancel)
                    entry.update(ok=True, images=len(images), deep=deep,
                                 vp_seq=record.vp_seq, details=details)
                except DataError as exc:
                    entry.update(ok=False, error=str(exc), exit_code=exc.exit_code)
                    report.first_error = report.first_error or exc
                except NotFoundError as exc:  # an image deleted behind our back
                    entry.update(ok=False, error=str(exc), exit_code=exc.exit_code)
                    report.first_error = report.first_error or exc
                report.results.append(entry)
        return report

    def prune(self, policy: KeepPolicy, dry_run: bool = False, *,
              cancel: CancelToken = None) -> PruneResult:
        """Delete the backups ``policy`` does not keep and nothing kept needs; merge a kept
        layer's chain into a synthetic full where that frees a full image (see
        :mod:`lamina.repository.prune`). Holds the repository lock exclusively.

        Crash-safe: killed at any moment, every kept backup still restores and a new
        prune finishes the job. Refuses (CorruptionError, nothing deleted; a dry run
        too) while any image is unreadable: which backups build on it cannot be known, so
        any deletion could break a kept chain (restic's rule: check, repair, then prune).

        A missing image (a layer here builds on it, and it is gone) is damage too, which
        never costs a restorable point: the damaged backups are kept as they are, nothing
        their chains may stand on is deleted (every image of that database at or below the
        missing image's commit seq), and each database's newest intact backup is always
        kept, so a prune never leaves a database without a restorable backup while one
        exists. What the policy alone would delete but these rules keep is reported as
        ``refused`` (with the reason), the damage as ``damaged``: see
        :mod:`lamina.repository.prune`. Raises LockedError, StorageError, and what merging
        raises (the repository is then as a crash would leave it), CancelledError
        (``cancel``, checked before the work starts and before every chunk a merge reads:
        the repository is then as after any failed merge).
        """
        with self.locks.repository(exclusive=True, operation="prune"):
            index, rebuilt = self._load()
            damaged = sorted((r for r in index.records.values() if r.error is not None),
                             key=lambda r: str(r.backup_id))
            if damaged:
                raise CorruptionError(
                    f"image {damaged[0].backup_id} is unreadable ({damaged[0].error}); prune "
                    "deletes nothing while the repository has unreadable images: run "
                    "'lamina verify --repo', then remove or restore that image",
                    path=self.storage.local_path(damaged[0].key))
            plan = plan_prune(index, policy)
            result = PruneResult(plan, index, dry_run, rebuilt)
            if dry_run:
                return result
            # Exclusive lock: no backup is writing, so every staged file is a dead one's.
            result.stale_files_removed = len(self.storage.remove_stale_temps())
            if is_cancelled(cancel):
                raise CancelledError("prune cancelled")
            try:
                execute(plan, index, _Target(self.storage),
                        lambda paths, out, backup_id: _combine(paths, out, backup_id, cancel))
            finally:
                with self.locks.index():  # the index is written last, even after a failure
                    loaded = load_index(self.storage, save=False)
                    save_index(self.storage, loaded.index)
        return result


def _storage(root: Path) -> LocalStorage:
    return LocalStorage(root, staging=L.STAGING_DIR, private=(L.LOCKS_DIR,))

