"""A backup repository: images in a storage (a local directory or an S3 bucket prefix)
that knows their chains.

:class:`Repository` is the Python API behind ``lamina repo init``, ``backup --repo``,
``list``, ``restore --repo``, ``verify --repo`` and ``prune``, and behind the
replicator's merges (:meth:`Repository.merge_to_full`, :meth:`Repository.merge_layers`).
Layout and formats: :mod:`lamina.repository.layout` and docs/format.md ("Repository").

Concurrency: any number of processes and threads may use one repository. ``backup``,
``restore``, ``verify`` and ``list`` share the repository lock, ``prune`` and the merges
hold it alone, and each waits at most ``lock_timeout`` seconds (then LockedError). A backup
publishes its image and the index entry together under the index lock, so readers see both
or neither.

Encryption (``init(passphrase=...)``): every image is sealed under the repository's master
key (:mod:`lamina.backup.sealing`), whose key files live under ``keys/``
(:mod:`lamina.repository.keys`); :meth:`Repository.open` unlocks it with a passphrase, and
every operation then refuses an image that is not sealed under it (AuthenticationError).

Crash safety: an image is streamed into the storage's writer (a temporary file, or a
multipart upload) and published (atomic rename, or the upload's completion) only when
complete, so a half-written backup is never listed; the index is derived data, rebuilt from
the images whenever it disagrees with them (``index_rebuilt`` in each result says so).

Storage: only the :class:`~lamina.repository.storage.Storage` protocol (locks are lease
objects in it, :mod:`lamina.repository.lock`); :func:`open_storage` makes one from a path
or an ``s3://BUCKET/PREFIX`` URL.
"""

from __future__ import annotations

import builtins
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
from lamina.backup.image_reader import ImageInfo, ImageLocation, read_info
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback, is_cancelled
from lamina.core import fileio, pins
from lamina.core.crypto import keyring as keyrings
from lamina.core.crypto.keyfile import KeyFile
from lamina.core.crypto.keyring import Keyring, PassphraseSource, SealSpec
from lamina.core.crypto.masterkey import MasterKey
from lamina.core.failpoints import failpoint
from lamina.database import Database
from lamina.errors import (
    AlreadyExistsError,
    AuthenticationError,
    CancelledError,
    ChainError,
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
from lamina.repository import resumable
from lamina.repository.damage import check_point, order_key
from lamina.repository.index import (
    ImageRecord,
    Index,
    chain_size,
    load_index,
    record_from_image,
    save_index,
)
from lamina.repository.keys import RepoKeys
from lamina.repository.layout import RepoConfig
from lamina.repository.lease import Lease
from lamina.repository.lock import RepositoryLock
from lamina.repository.policy import KeepPolicy
from lamina.repository.prune import PrunePlan, execute, plan_prune
from lamina.repository.staged_image import StagedImage
from lamina.repository.stale import StaleUpload, remove_stale_uploads
from lamina.repository.storage import LocalStorage, Storage
from lamina.repository.uploads import DEFAULT_PART_SIZE

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
    #: Upload part counts (:class:`~lamina.repository.uploads.PartStats` JSON form).
    parts: dict[str, int] = field(default_factory=dict)
    #: True when this finished an interrupted backup (``resume=True``).
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (``lamina backup --repo --json``)."""
        return {**online.describe(self.result), "backup_id": str(self.backup_id),
                "kind": self.kind, "base": None if self.base_id is None else str(self.base_id),
                "reason": self.reason, "index_rebuilt": self.index_rebuilt,
                "resumed": self.resumed, "parts": self.parts}


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
    #: Unfinished uploads of dead writers that this prune removed (:mod:`.stale`).
    stale_uploads_removed: builtins.list[StaleUpload] = field(default_factory=builtins.list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report (``lamina prune --json``)."""
        return {**self.plan.to_json(self.index), "dry_run": self.dry_run,
                "merged": [str(i) for i in self.plan.done_merges],
                "deleted": [str(i) for i in self.plan.done_deletes],
                "stale_files_removed": self.stale_files_removed,
                "stale_uploads_removed": [u.to_json() for u in self.stale_uploads_removed],
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
    """The repository side of a prune's execution (:class:`~.prune.PruneTarget`), and of
    every operation that replaces an image by one it makes from stored images: the new
    image is written into the store (:meth:`stage`) and published over the old one only
    once proven (:meth:`publish`). ``staging_path`` (a local file, put afterwards) is the
    older way, kept for callers that still write a file: ``publish``/``discard`` take
    either."""

    def __init__(self, storage: Storage, lease: Lease | None = None,
                 operation: str = "merge") -> None:
        self.storage = storage
        #: The repository lease the operation holds: confirmed before every change.
        self.lease = lease
        self.operation = operation

    def _confirm(self) -> None:
        if self.lease is not None:
            self.lease.confirm(self.operation)

    def image_path(self, record: ImageRecord) -> ImageLocation:
        return self.storage.image(record.key)

    def stage(self, record: ImageRecord) -> StagedImage:
        """A new image streamed into the store at ``record``'s key (see StagedImage)."""
        return StagedImage(self.storage, record.key)

    def staging_path(self) -> Path:
        """A fresh local file path (its image is put by :meth:`publish`)."""
        return self.storage.staging_dir() / f"merge-{uuid.uuid4().hex}{L.IMAGE_SUFFIX}"

    def publish(self, record: ImageRecord, staged: StagedImage | Path) -> int:
        """Publish ``staged`` over ``record``'s key (a StagedImage: proven first); returns
        the published image's size. Confirms the lease first (LockedError: lost)."""
        if isinstance(staged, StagedImage):
            staged.prove()
            self._confirm()
            return staged.publish()
        self._confirm()
        self.storage.put_file(record.key, staged)
        return self.storage.stat(record.key).size

    def delete(self, record: ImageRecord) -> None:
        self._confirm()
        self.storage.delete(record.key)

    def discard(self, staged: StagedImage | Path) -> None:
        if isinstance(staged, StagedImage):
            staged.discard()
            return
        with contextlib.suppress(StorageError):
            fileio.unlink(staged)


@contextlib.contextmanager
def _lease_guard(lease: Lease, operation: str) -> Iterator[None]:
    """An operation cancelled because its lease was lost ends with the lease's LockedError
    (nothing was published: every publication confirms the lease first)."""
    try:
        yield
    except CancelledError:
        if lease.lost:
            raise lease.lost_error(operation) from None
        raise


def _combine(paths: list[ImageLocation], staged: StagedImage, backup_id: uuid.UUID,
             cancel: CancelToken = None) -> tuple[uuid.UUID, int, bool]:
    """One synthetic full image of the chain ``paths``, streamed into ``staged``, that
    keeps the replaced backup's id (so layers on it still link): the assembled state is
    proven before it is written and the bytes as they are written (``staged.prove``), all
    before the caller publishes it (it replaces a layer that restores today)."""
    chain.combine_chain_to(paths, staged.stream, workdir=staged.workdir, image_id=backup_id,
                           cancel=cancel)
    report = staged.prove()
    return (report.header.image_id, report.manifest.vp.commit_seq,
            report.manifest.kind == F.ImageKind.FULL)


def _stands_for(info: ImageInfo, old: ImageInfo, base: ImageRecord, staged: Path) -> None:
    """CorruptionError unless the merged layer ``info`` stands for the layer ``old`` it
    replaces, on ``base``: a layer with its image id, database, incarnation, VP (seq, time)
    and root hash, on ``base``'s image and VP."""
    def identity(i: ImageInfo) -> tuple[object, ...]:
        return (i.header.image_id, i.header.database_id, i.header.incarnation,
                i.manifest.kind, i.vp.commit_seq, i.vp.wall_ns, i.manifest.root_hash.hex(),
                i.header.sealed)

    got = (*identity(info), info.manifest.base_image_id, info.manifest.base_vp_seq)
    want = (*identity(old), base.image_id, base.vp_seq)
    if got != want:
        raise CorruptionError(f"merged layer of backup {old.header.image_id} does not stand "
                              f"for it: (image id, database, incarnation, kind, VP seq, VP "
                              f"time, root hash, sealed, base, base VP) {got}, expected "
                              f"{want}", path=staged)


class Repository:
    """A backup repository (see the module doc).

    Create one with :meth:`init`, open one with :meth:`open` (a directory path, or an
    ``s3://BUCKET/PREFIX`` URL). The object holds no open files or locks between calls;
    it may be shared by threads. An encrypted repository's object holds its master key
    (:attr:`master`) and the key file that opened it.
    """

    def __init__(self, storage: Storage, config: RepoConfig, *,
                 lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
                 lease_ttl: float | None = None,
                 master: MasterKey | None = None, keyfile: KeyFile | None = None) -> None:
        self.storage = storage
        self.config = config
        self.locks = RepositoryLock(storage, storage.url, lock_timeout, lease_ttl)
        self.master = master
        self.keyfile = keyfile
        if config.encrypted and (master is None or master.key_id != config.key_id):
            raise AuthenticationError(f"authentication failed: repository {storage.url} "
                                      "is encrypted and the key given is not its key")
        #: What every operation reads and writes images with: the master key, sealing new
        #: images, refusing unsealed ones; for a plaintext repository, no key at all.
        self.keyring = Keyring() if master is None else Keyring(
            seal=SealSpec(master), required=f"repository {storage.url} is encrypted")

    @property
    def url(self) -> str:
        """Where the repository is: its directory, or ``s3://bucket/prefix``."""
        return self.storage.url

    @property
    def keys(self) -> RepoKeys:
        """The key files (UsageError for a repository that is not encrypted)."""
        if self.config.key_id is None:
            raise UsageError(f"repository {self.url} is not encrypted: it has no keys")
        return RepoKeys(self.storage, self.config.key_id)

    @property
    def path(self) -> Path:
        """The directory of a local repository (UsageError for one on an object store)."""
        if not isinstance(self.storage, LocalStorage):
            raise UsageError(f"repository {self.url} is not a local directory")
        return self.storage.root

    # ------------------------------------------------------------------ open / init
    @classmethod
    def init(cls, path: str | os.PathLike[str], *, chain_limit: int = L.DEFAULT_CHAIN_LIMIT,
             lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
             s3_endpoint: str | None = None,
             passphrase: bytes | None = None) -> Repository:
        """Create a repository at ``path`` (a new or empty directory; or an ``s3://``
        URL: the bucket is created if missing, the prefix must hold nothing) and return it;
        with ``passphrase``, an encrypted one: a random master key and one key file
        wrapping it under ``passphrase``.

        The config object is written last, so an interrupted init leaves no repository.
        Raises AlreadyExistsError (a repository or other objects are there), UsageError
        (bad chain limit or URL, an empty passphrase), StorageError, AccessDeniedError.
        """
        if passphrase is not None and not passphrase:
            raise UsageError("the passphrase is empty")
        master = None if passphrase is None else MasterKey.generate()
        config = RepoConfig.new(chain_limit, None if master is None else master.key_id)
        storage = open_storage(path, s3_endpoint=s3_endpoint)
        storage.create_container()
        if storage.exists(L.CONFIG_KEY):
            raise AlreadyExistsError(f"{storage.url} is a Lamina repository already")
        allowed = (L.INDEX_KEY, L.IMAGES_PREFIX, f"{L.LOCKS_DIR}/", f"{L.STAGING_DIR}/",
                   f"{L.UPLOADS_DIR}/", L.KEYS_PREFIX)
        if any(not s.key.startswith(allowed) for s in storage.list("")) or (
                isinstance(storage, LocalStorage) and _foreign_entries(storage.root)):
            raise AlreadyExistsError(f"{storage.url} exists and is not empty")
        if isinstance(storage, LocalStorage):
            for sub in (L.IMAGES_PREFIX.rstrip("/"), L.STAGING_DIR, L.LOCKS_DIR):
                fileio.mkdir(storage.root / sub, exist_ok=True)
        save_index(storage, Index([]))
        keyfile = None
        if master is not None and passphrase is not None and config.key_id is not None:
            keyfile = RepoKeys(storage, config.key_id).add(master, passphrase)
        storage.put_bytes(L.CONFIG_KEY, config.encode())
        return cls(storage, config, lock_timeout=lock_timeout, master=master, keyfile=keyfile)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *,
             lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
             s3_endpoint: str | None = None, lease_ttl: float | None = None,
             passphrase: PassphraseSource | None = None,
             hint: str = "give its passphrase") -> Repository:
        """Open the repository at ``path`` (a directory, or an ``s3://`` URL); an
        encrypted one is unlocked with ``passphrase()`` (called only then; ``hint`` says
        how to give one, in errors).

        Raises NotFoundError (no such directory, or nothing under the S3 prefix),
        NoSuchBucketError, AccessDeniedError, NotADatabaseError (a directory or prefix
        that holds something else than a repository), VersionError (a repository of a
        newer format), CorruptionError (damaged config or key file), UsageError
        (encrypted, and no passphrase given: nothing was authenticated), AuthenticationError
        (a wrong passphrase), StorageError.
        """
        storage = open_storage(path, s3_endpoint=s3_endpoint)
        storage.check_container()
        try:
            data = storage.get_bytes(L.CONFIG_KEY, limit=L.MAX_CONFIG_SIZE)
        except NotFoundError:
            if not isinstance(storage, LocalStorage) and not storage.list(""):
                raise NotFoundError(f"no repository at {storage.url} (nothing there; "
                                    "create one with 'lamina repo init')") from None
            raise NotADatabaseError(f"{storage.url} is not a Lamina repository (no "
                                    f"{L.CONFIG_KEY}; create one with 'lamina repo init')"
                                    ) from None
        config = RepoConfig.decode(data, f"{storage.url}/{L.CONFIG_KEY}")
        if config.key_id is None:
            if storage.list(L.KEYS_PREFIX):  # a config stripped of its encryption field
                raise AuthenticationError(f"authentication failed: repository {storage.url} "
                                          "holds key files but its config says it is not "
                                          "encrypted (the config was changed)")
            return cls(storage, config, lock_timeout=lock_timeout, lease_ttl=lease_ttl)
        secret = None if passphrase is None else passphrase()
        if secret is None:  # nothing was tried: a request that lacks what it needs
            raise UsageError(f"repository {storage.url} is encrypted: no passphrase given "
                             f"({hint})")
        master, keyfile = RepoKeys(storage, config.key_id).unlock(secret)
        return cls(storage, config, lock_timeout=lock_timeout, lease_ttl=lease_ttl,
                   master=master, keyfile=keyfile)

    # ------------------------------------------------------------------ helpers
    @contextlib.contextmanager
    def _shared(self, operation: str, cancel: CancelToken = None) -> Iterator[Lease]:
        """Hold the repository lock shared, with the repository's keys current; yields the
        lease (``lost`` once another process took it over; see :meth:`exclusive`)."""
        with self.locks.repository(exclusive=False, operation=operation,
                                   cancel=cancel) as lease, keyrings.using(self.keyring), \
                _lease_guard(lease, operation):
            yield lease

    @contextlib.contextmanager
    def exclusive(self, operation: str, cancel: CancelToken = None) -> Iterator[Lease]:
        """Hold the repository lock alone (prune, key changes), with its keys current;
        yields the lease. An operation inside passes ``lease.cancel_token(cancel)`` as its
        cancel token, so it stops promptly once the lease is lost (a renewal found it
        taken over, or could not renew it before it expired), and the CancelledError that
        ends it leaves the block as the lease's LockedError (one line, exit 8)."""
        with self.locks.repository(exclusive=True, operation=operation, cancel=cancel) \
                as lease, keyrings.using(self.keyring), _lease_guard(lease, operation):
            yield lease

    def _load(self) -> tuple[Index, str | None]:
        with self.locks.index():
            loaded = load_index(self.storage)
        return loaded.index, loaded.rebuilt

    def _paths(self, chain: Sequence[ImageRecord]) -> list[ImageLocation]:
        return [self.storage.image(r.key) for r in chain]

    def _candidates(self, index: Index, database: str | None) -> list[ImageRecord]:
        records = [r for r in index.records.values() if r.error is None]
        if database is not None:
            wanted = database.strip().lower()
            records = [r for r in records if str(r.database_id).startswith(wanted)]
            if not records:
                check_point(index, None, [], f"backup of database {database}", self.url)
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
        check_point(index, target, pool, what, self.url)
        if target is None and at is not None:
            raise NotFoundError(f"no backup with a validity point at or before {at}")
        if target is None:
            raise NotFoundError(f"the repository {self.url} holds no backup")
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
               cancel: CancelToken = None, resume: bool = False,
               resume_lease: float = pins.DEFAULT_LEASE_NS / 1e9,
               part_size: int = DEFAULT_PART_SIZE,
               base: str | None = None, vp: str = "begin") -> RepoBackupResult:
        """Back up ``db`` into the repository: a layer on the newest backup of this database
        here, or a full when there is none, when ``full``, when that backup's chain is
        broken, or when its chain already has ``chain_limit`` layers. ``base`` (a backup id)
        makes it a layer on that backup instead, whatever the chain limit (the replicator
        chooses its bases itself); NotFoundError if it is not here, ChainError if it is not
        of this database's history. ``vp`` ("begin" or "end") chooses "at begin" or "at end"
        drivers (see :func:`lamina.online.backup`); images of both kinds chain with each
        other. An "at end" backup takes no pin: interrupted, it cannot be resumed (its VP
        is taken after the bulk copy, which a resume would have to repeat).

        The image streams into a resumable upload (parts of ``part_size`` bytes) and is
        published under ``images/`` with its index entry only when complete. Its validity
        point is pinned in ``db`` (a lease of ``resume_lease`` seconds) as soon as it
        exists (renewed while the backup runs): interrupted (killed, failed, cancelled),
        the backup can be finished later with
        ``resume=True``, which re-attaches to the pinned VP, stores only the parts missing
        and publishes exactly the image the uninterrupted backup would have (same bytes,
        same image hash; ``full`` and ``codec`` are then the interrupted backup's). The
        pin is released once the image is published, when its lease ends, or by
        :meth:`abandon` (see :mod:`lamina.repository.resumable`).

        Raises LockedError (repository or commit blocker), CancelledError, StorageError
        and whatever ``online.backup`` raises; on any error nothing is published. With
        ``resume``: NotFoundError (no interrupted backup of ``db`` here), PinExpiredError
        (its lease ended: its VP may be gone), ChainError (its base image was pruned),
        TableNotFoundError (a table of its VP was dropped since), UsageError (written by
        another Lamina version).
        """
        lease_ns = _lease_ns(resume_lease)
        if resume:
            outcome = resumable.resume(self, db, progress=progress, cancel=cancel,
                                       lease_ns=lease_ns)
        else:
            outcome = resumable.backup(self, db, full=full, codec=codec, progress=progress,
                                       cancel=cancel, lease_ns=lease_ns, part_size=part_size,
                                       base_id=base, vp=vp)
        return RepoBackupResult(outcome.result.image_id,
                                "layer" if outcome.base_id else "full", outcome.base_id,
                                outcome.reason, outcome.result, outcome.rebuilt,
                                outcome.parts.to_json(), outcome.resumed)

    def abandon(self, db: Database) -> pins.PinRecord | None:
        """Give up the interrupted backup of ``db`` into this repository: release its
        durable pin (the pinned pages become reusable) and remove its upload. Returns the
        released pin, or None if there was none. Raises LockedError (that backup is still
        running on this host), StorageError."""
        return resumable.abandon(self, db)

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
        with self._shared("restore", cancel) as lease:
            index, rebuilt = self._load()
            record = self.resolve(index, id, at, database)
            images = index.chain(record)
            summary = chain.restore_chain(self._paths(images), Path(dest), tables=tables,
                                          force=force, progress=progress,
                                          cancel=lease.cancel_token(cancel), check=check)
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
        with self._shared("verify", cancel) as lease:
            cancel = lease.cancel_token(cancel)
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

    def forget(self, backup_ids: Sequence[uuid.UUID]) -> builtins.list[uuid.UUID]:
        """Delete the backups ``backup_ids`` (the replicator's retention), newest first,
        holding the repository lock exclusively; returns the ids deleted.

        Never breaks a chain: a backup that some backup not being deleted builds on (or
        that an unreadable image may build on) is refused with ChainError before anything
        is deleted. Ids not in the repository are skipped (deletes are idempotent, so a
        re-run after a crash finishes the job). Raises LockedError, StorageError.
        """
        with self.exclusive("forget") as lease:
            index, _ = self._load()
            doomed = {i for i in backup_ids if i in index.records}
            damaged = [r for r in index.records.values() if r.error is not None]
            if damaged and doomed:
                raise ChainError(f"image {damaged[0].backup_id} is unreadable; nothing is "
                                 "deleted while the repository has unreadable images")
            for record in index.records.values():
                if record.backup_id in doomed:
                    continue
                images = index.chain_or_none(record) or []
                needs = [r.backup_id for r in images if r.backup_id in doomed]
                if needs:
                    raise ChainError(f"backup {needs[0]} is needed by the chain of backup "
                                     f"{record.backup_id}; it is not deleted")
            order = sorted((index.records[i] for i in doomed),
                           key=lambda r: (r.vp_seq, r.vp_wall_ns, str(r.backup_id)),
                           reverse=True)
            try:
                for record in order:
                    lease.confirm("forget")  # a stalled holder deletes nothing
                    self.storage.delete(record.key)
            finally:
                with self.locks.index():  # the index follows the images, even after a failure
                    save_index(self.storage, load_index(self.storage, save=False).index)
        return [r.backup_id for r in order]

    def merge_to_full(self, backup_id: str, *, cancel: CancelToken = None) -> ImageRecord:
        """Replace the layer ``backup_id`` by a synthetic full of its chain (same backup id
        and image id, same VP: layers on it still link), streamed from the repository back
        into it (:class:`~lamina.repository.staged_image.StagedImage`: no local copy of the
        image), proven whole before it is published over the layer; returns its new record
        (a full is returned as it is). Holds the repository lock exclusively. Raises NotFoundError,
        ChainError, CorruptionError & co., CancelledError, LockedError, StorageError; on
        any error the layer stays as it was."""
        with self.exclusive("merge", cancel=cancel) as lease:
            index, _ = self._load()
            record = index.find(backup_id)
            if not record.is_layer:
                return record
            images = index.chain(record)
            target = _Target(self.storage, lease, "merge")
            staged = target.stage(record)
            try:
                image_id, vp_seq, is_full = _combine(self._paths(images), staged,
                                                     record.backup_id,
                                                     lease.cancel_token(cancel))
                if image_id != record.backup_id or vp_seq != record.vp_seq or not is_full:
                    raise CorruptionError(f"synthetic full of backup {record.backup_id} "
                                          "does not stand for it", path=staged.key)
            except BaseException:
                target.discard(staged)
                raise
            with self.locks.index():
                try:
                    target.publish(record, staged)
                except BaseException:
                    target.discard(staged)
                    raise
                loaded = load_index(self.storage, save=False)
                save_index(self.storage, loaded.index)
            return loaded.index.records[record.backup_id]

    def merge_layers(self, backup_id: str | uuid.UUID, onto: str | uuid.UUID, *,
                     cancel: CancelToken = None) -> ImageRecord:
        """Rewrite the layer ``backup_id`` in place as ONE layer on ``onto``, a strict
        ancestor in its chain (a full or a layer): same key, backup id, image id and VP, so
        layers built on it still link; its base becomes ``onto``. The images strictly
        between stay (other points may need them; retention deletes them later). Returns
        the new record (the record as it is when ``onto`` is already its base).

        Streams the segment (the images after ``onto`` up to the layer) from the
        repository into one layer (:func:`lamina.online.segment.combine_segment`: it
        proves every page it keeps against the Merkle tree under the layer's root hash and
        every archive block), then proves the staged result on its own before the atomic
        put, in O(its size) (:func:`lamina.online.segment.prove_layer`: the image whole,
        each stream against its facts, and its btree walk reaching exactly its own pages;
        its identity: same image id, VP, root hash, base ``onto``); the next restore of
        the chain proves the root hash and the whole checker. The index follows (the
        record's base changes). Holds the repository lock exclusively; sealed like every
        image of an encrypted repository.

        Crash-safe: the image is replaced by one atomic put, so a kill at any moment
        leaves the old layer or the new one (both restore the same point); a staged file
        left behind is removed by the next prune. Raises NotFoundError (unknown backup),
        ChainError (``backup_id`` is a full, or ``onto`` is not a strict ancestor of it),
        UnsupportedError ("at end" layers in the segment), CorruptionError & co.,
        CancelledError, LockedError, StorageError; on any error the layer stays as it
        was."""
        with self.exclusive("merge", cancel=cancel) as lease:
            cancel = lease.cancel_token(cancel)
            index, _ = self._load()
            record = index.find(str(backup_id))
            base = index.find(str(onto))
            if not record.is_layer:
                raise ChainError(f"backup {record.backup_id} is a full image: only a layer "
                                 "can be merged onto an ancestor")
            images = index.chain(record)
            ancestors = [r.backup_id for r in images[:-1]]
            if base.backup_id not in ancestors:
                raise ChainError(f"backup {base.backup_id} is not an ancestor of layer "
                                 f"{record.backup_id} (its chain: "
                                 f"{' '.join(str(i) for i in ancestors)})")
            segment = images[ancestors.index(base.backup_id) + 1:]
            if len(segment) == 1:
                return record
            # A layer is staged as a local file (its proof walks the file), then put; a
            # full is streamed (StagedImage). Both confirm the lease before publishing.
            target = _Target(self.storage, lease, "merge")
            staged = target.staging_path()
            paths = self._paths(segment)
            try:
                last = read_info(paths[-1])
                online.combine_segment(paths, staged,
                                       image_id=record.image_id, cancel=cancel)
                online.prove_layer(staged, cancel=cancel,
                                   on_read=lambda info: _stands_for(info, last, base, staged))
            except BaseException:
                target.discard(staged)
                raise
            failpoint("repository.merge_staged")
            try:
                with self.locks.index():
                    target.publish(record, staged)
                    failpoint("repository.merge_published")
                    # The record is read from the new image whatever its size and stamp
                    # (an object store's stamp has one-second steps).
                    fresh = record_from_image(self.storage, self.storage.stat(record.key))
                    merged = load_index(self.storage, save=False).index.with_record(fresh)
                    save_index(self.storage, merged)
            finally:
                target.discard(staged)
            return merged.records[record.backup_id]

    def replicator(self, db: Database, **options: Any) -> Any:
        """A :class:`~lamina.repository.replicate.Replicator` of ``db`` into this
        repository (what ``Database.replicate(repo)`` returns); ``options`` as for
        :func:`lamina.repository.replicate.replicate`. Raises UsageError (bad options)."""
        from lamina.repository.replicate import replicate

        return replicate(db, self, **options)

    def prune(self, policy: KeepPolicy, dry_run: bool = False, *,
              cancel: CancelToken = None) -> PruneResult:
        """Delete the backups ``policy`` does not keep and nothing kept needs; merge a kept
        layer's chain into a synthetic full where that frees a full image (see
        :mod:`lamina.repository.prune`). Holds the repository lock exclusively.

        Crash-safe: killed at any moment, every kept backup still restores and a new
        prune finishes the job. It also removes what dead writers left: temporary objects
        (``stale_files_removed``) and unfinished uploads (``stale_uploads_removed``: a
        killed merge's or upload's multipart upload, a killed backup's resumable upload
        once its lease ended; :mod:`lamina.repository.stale`).

        Refuses (CorruptionError, nothing deleted; a dry run too) while any image is
        unreadable: which backups build on it cannot be known, so any deletion could break
        a kept chain (restic's rule: check, repair, then prune).

        A missing image (a layer here builds on it, and it is gone) is damage too, which
        never costs a restorable point: the damaged backups are kept as they are, nothing
        their chains may stand on is deleted (every image of that database at or below the
        missing image's commit seq), and each database's newest intact backup is always
        kept, so a prune never leaves a database without a restorable backup while one
        exists. What the policy alone would delete but these rules keep is reported as
        ``refused`` (with the reason), the damage as ``damaged``: see
        :mod:`lamina.repository.prune`. Raises LockedError, StorageError, and what merging
        raises (the repository is then as a crash would leave it), CancelledError
        (``cancel``, checked before the work starts and before every chunk a merge reads
        or writes: the repository is then as after any failed merge), LockedError also
        when the lease is lost mid-prune (it stops at once; every change confirms the
        lease first).
        """
        with self.exclusive("prune", cancel=cancel) as lease:
            cancel = lease.cancel_token(cancel)
            index, rebuilt = self._load()
            damaged = sorted((r for r in index.records.values() if r.error is not None),
                             key=lambda r: str(r.backup_id))
            if damaged:
                raise CorruptionError(
                    f"image {damaged[0].backup_id} is unreadable ({damaged[0].error}); prune "
                    "deletes nothing while the repository has unreadable images: run "
                    "'lamina verify --repo', then remove or restore that image",
                    path=f"{self.url}/{damaged[0].key}")
            plan = plan_prune(index, policy)
            result = PruneResult(plan, index, dry_run, rebuilt)
            if dry_run:
                return result
            failpoint("repository.prune_planned")
            # Exclusive lock: no backup is writing, so every staged file is a dead one's —
            # if the lock is still ours (a prune that stalled past its lease removes
            # nothing: the writers it would meet are live ones of the lease's new holder).
            # Not under locks/: a waiter creates its lease while we hold the lock.
            lease.confirm("prune")
            result.stale_files_removed = len(self.storage.remove_stale_temps(
                keep=(L.LOCKS_DIR,)))
            # ... and every unfinished upload is a dead writer's, but for the resumable
            # uploads of backups whose pin's lease lasts (they may still be resumed).
            result.stale_uploads_removed = remove_stale_uploads(self.storage)
            if is_cancelled(cancel):
                raise CancelledError("prune cancelled")
            try:
                execute(plan, index, _Target(self.storage, lease, "prune"),
                        lambda paths, out, backup_id: _combine(paths, out, backup_id, cancel))
            finally:
                with self.locks.index():  # the index is written last, even after a failure
                    loaded = load_index(self.storage, save=False)
                    save_index(self.storage, loaded.index)
        return result


#: The longest resume lease: a pin holds pages from reuse for that long.
MAX_RESUME_LEASE_S = 366 * 86_400


def _lease_ns(seconds: float) -> int:
    if not 0 < seconds <= MAX_RESUME_LEASE_S:
        raise UsageError(f"the resume lease must be a positive duration of at most 366 days, "
                         f"not {seconds:g} s")
    return int(seconds * 1e9)


def open_storage(path: str | os.PathLike[str], *, s3_endpoint: str | None = None) -> Storage:
    """The storage of a repository at ``path``: an ``s3://BUCKET/PREFIX`` URL (boto3 is
    imported only then; ``s3_endpoint`` overrides the AWS settings' endpoint), else a
    local directory. Sends no request. Raises UsageError (bad URL, boto3 missing)."""
    from lamina.repository.s3client import S3Location, is_s3_url

    if is_s3_url(path):
        from lamina.repository.s3storage import S3Storage

        return S3Storage(S3Location.parse(str(path)), endpoint=s3_endpoint)
    if s3_endpoint is not None:
        raise UsageError("--s3-endpoint applies only to an s3:// repository")
    return LocalStorage(Path(path), staging=L.STAGING_DIR, private=(L.UPLOADS_DIR,))


def _foreign_entries(root: Path) -> set[str]:
    """Top-level entries of a local directory that a repository would not have made."""
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir()} - {
        L.STAGING_DIR, L.LOCKS_DIR, L.UPLOADS_DIR, L.IMAGES_PREFIX.rstrip("/"), L.INDEX_KEY,
        L.CONFIG_KEY,
        ".cas.lock"}

