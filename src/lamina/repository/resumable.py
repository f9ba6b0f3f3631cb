"""Resumable backups into a repository (ZFS resume tokens; restic#2960).

Every backup into a repository streams its image into a resumable upload
(:mod:`lamina.repository.uploads`) named by the image id, and pins its validity point in
the database (:mod:`lamina.online.pinning`) the moment it exists. Killed, disconnected or
failing after that, the backup leaves both behind:

* :func:`resume` renews the pin's lease, re-attaches to the pinned VP, regenerates the
  image from it (the same header, VP and driver output — sealed: under the salt the pin
  records — so the same bytes), skips every part the upload already holds with the same
  checksum, stores the rest and publishes the image that the uninterrupted backup would
  have published — the same image hash. A sealed image whose stored part regenerates
  differently (never seen; it would mean the regeneration is not deterministic) is not
  patched under the same key and nonces: a fresh salt is recorded and every part stored
  again (a valid image, not the same bytes);
* :func:`abandon` releases the pin (writers reuse its pages again) and removes the upload;
* the lease's end releases the pin by itself (``--resume`` then fails with
  PinExpiredError and a hint); the upload of an expired or replaced pin is removed by the
  next backup of the same database into the repository, or by a prune: the upload's
  description mirrors the pin's lease (:func:`lease_until`), renewed as the pin is, so a
  prune — which sees the repository, not the database — keeps every upload that may still
  be resumed and removes the rest (:mod:`lamina.repository.stale`).

Concurrency: as :meth:`Repository.backup <lamina.repository.repository.Repository.backup>`
(the shared repository lock); one pin per database and repository: a new backup replaces
an older pin (whose upload it removes once its owner is gone).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from lamina.backup.image_reader import read_info
from lamina.backup.kernel import BackupResult, CancelToken, ProgressCallback
from lamina.core import pins
from lamina.core.failpoints import failpoint
from lamina.database import Database
from lamina.errors import ChainError, CorruptionError, LaminaError, LockedError, NotFoundError
from lamina.online import pinning
from lamina.repository import layout as L
from lamina.repository.index import (
    ImageRecord,
    Index,
    load_index,
    record_from_image,
    save_index,
)
from lamina.repository.layout import RepoConfig
from lamina.repository.lease import Lease
from lamina.repository.lock import RepositoryLock
from lamina.repository.storage import Storage
from lamina.repository.upload_store import uploads_of
from lamina.repository.uploads import (
    DEFAULT_PART_SIZE,
    PartStats,
    PartWriter,
    Upload,
    UploadInfo,
    UploadStore,
    check_part_size,
)


class Repository(Protocol):
    """What this module needs of :class:`~lamina.repository.repository.Repository` (a
    protocol, so the two modules do not import each other)."""

    storage: Storage
    config: RepoConfig
    locks: RepositoryLock

    def _shared(self, operation: str,
                cancel: CancelToken = None) -> AbstractContextManager[Lease]: ...

    def _load(self) -> tuple[Index, str | None]: ...

    def _choose_base(self, db: Database, index: Index, full: bool
                     ) -> tuple[ImageRecord | None, str]: ...

#: What a failed ``--resume`` suggests instead.
RESUME_HINT = ("take a new backup with 'lamina backup DB --repo REPO' (add --abandon first "
               "to remove what the interrupted one left)")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A backup published into the repository: the kernel's result, its base (None: a
    full), why that kind, the index rebuild note, the upload's part counts, and whether
    it resumed an interrupted backup."""

    result: BackupResult
    base: ImageRecord | None
    base_id: uuid.UUID | None
    reason: str
    rebuilt: str | None
    parts: PartStats
    resumed: bool


#: The upload description's field mirroring the pin's lease (:func:`lease_until`).
LEASE_FIELD = "lease_until_ns"


def _mirror_until(lease_ns: int, now_ns: int | None = None) -> int:
    """The lease end an upload's description states when its pin's lease is renewed now:
    a quarter of the lease beyond the pin's, so it outlives the pin however the two
    renewals fall (the pin is taken a moment after the upload is created)."""
    return (time.time_ns() if now_ns is None else now_ns) + lease_ns + lease_ns // 4


def lease_until(info: UploadInfo) -> int:
    """Until when the upload ``info`` describes may still be resumed (wall clock, ns): what
    its description mirrors of its pin's lease, or (written by an older version) its
    creation time plus the default lease. The pin itself lives in the database; a prune,
    which sees only the repository, removes an upload once this has passed."""
    value = info.info.get(LEASE_FIELD)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return info.created_ns + pins.DEFAULT_LEASE_NS


def _keep_alive(db: Database, uploads: UploadStore, name: str, info: dict[str, Any],
                lease_ns: int, pin_id: str | None = None) -> Callable[[], None]:
    """What a backup calls after each part: renews the pin (:func:`pinning.keep_alive`)
    and, as often (a quarter of the lease), the lease its upload's description mirrors
    (one small write; a failure is retried at the next renewal). Never raises."""
    renew_pin = pinning.keep_alive(db, pin_id or name, lease_ns)
    state = {"last": time.monotonic_ns()}

    def on_part() -> None:
        renew_pin()
        now = time.monotonic_ns()
        if now - state["last"] < lease_ns // 4:
            return
        state["last"] = now
        with contextlib.suppress(LaminaError):
            uploads.set_info(name, {**info, LEASE_FIELD: _mirror_until(lease_ns)})

    return on_part


def _scope(repo: Repository) -> str:
    return str(repo.config.repository_id)


def _publish(repo: Repository, upload: Upload, writer: PartWriter, image_id: uuid.UUID,
             rebuilt: str | None, held: Lease) -> str | None:
    """Store the last part, publish the image and its index entry together (under the
    index lock); on an index failure the image is withdrawn. Returns the rebuild note."""
    count = writer.finish()
    failpoint("backup.before_publish")
    key = L.image_key(image_id)
    with repo.locks.index():
        try:  # a prune may have started meanwhile: publish nothing (it stays resumable)
            held.confirm("backup")
        except LockedError as exc:
            raise LockedError(f"{exc}; finish it with --resume") from None
        loaded = load_index(repo.storage, save=False)
        rebuilt = rebuilt or loaded.rebuilt
        upload.complete(key, count)
        try:
            record = record_from_image(repo.storage, repo.storage.stat(key))
            save_index(repo.storage, loaded.index.with_record(record))
        except BaseException:
            with contextlib.suppress(LaminaError):
                repo.storage.delete(key)
            raise
    failpoint("backup.after_publish")
    return rebuilt


#: Uploads being written by backups of this process (never removed by :func:`_tidy`).
_ACTIVE: set[str] = set()


def _idle(pin: pins.PinRecord) -> bool:
    """True if no backup writes ``pin``'s upload now: its process is gone, or it is this
    process and no backup of it is writing that upload."""
    if pin.pid == os.getpid():
        return pin.pin_id not in _ACTIVE
    return not pin.owner_alive()


def _tidy(db: Database, uploads: UploadStore, scope: str) -> None:
    """Remove uploads of ``db`` that no pin will resume: the upload of this scope's pin
    (the new backup replaces it) unless a backup still writes it, uploads of expired or
    replaced pins, and uploads without a pin here whose mirrored lease (:func:`lease_until`)
    ended (a backup killed before its VP, or one of a copy of this database). Best effort
    (a failure leaves an upload for the next backup)."""
    now = time.time_ns()
    try:
        recorded = {p.pin_id: p for p in pins.load(db.path)}
        found = uploads.list()
    except LaminaError:
        return
    for info in found:
        if info.name in _ACTIVE or info.info.get("database_id") != str(db.identity.db_id):
            continue
        pin = recorded.get(info.name)
        if pin is not None and not pin.expired(now) and not (pin.scope == scope
                                                                and _idle(pin)):
            continue
        if pin is None and lease_until(info) > now:
            # A backup that has not reached its VP yet, or one of another copy of this
            # database (its pin is in that copy): its mirrored lease is all we know.
            continue
        with contextlib.suppress(LaminaError):
            uploads.remove(info.name)


def backup(repo: Repository, db: Database, *, full: bool, codec: str,
           progress: ProgressCallback | None, cancel: CancelToken,
           lease_ns: int = pins.DEFAULT_LEASE_NS,
           part_size: int = DEFAULT_PART_SIZE, base_id: str | None = None,
           vp: str = "begin") -> Outcome:
    """A new backup of ``db`` into ``repo`` (see the module doc and
    :meth:`Repository.backup <lamina.repository.repository.Repository.backup>`);
    ``base_id`` (unless ``full``) names the backup to layer on instead of the chosen one;
    ``vp`` is :func:`lamina.online.backup`'s."""
    check_part_size(part_size)
    uploads = uploads_of(repo.storage)
    scope = _scope(repo)
    with repo._shared("backup", cancel) as held:
        index, rebuilt = repo._load()
        if base_id is not None and not full:
            base: ImageRecord | None = index.find(base_id)
            reason = f"layer on {base_id} (requested)"
        else:
            base, reason = repo._choose_base(db, index, full)
        _tidy(db, uploads, scope)
        image_id = uuid.uuid4()
        name = str(image_id)
        _ACTIVE.add(name)
        info = {"database_id": str(db.identity.db_id), "image_id": name}
        upload = uploads.create(name, part_size,
                                {**info, LEASE_FIELD: _mirror_until(lease_ns)})
        writer = PartWriter(upload, on_part=_keep_alive(db, uploads, name, info, lease_ns),
                            concurrency=uploads.concurrency)
        extra = {"upload": name, "part_size": part_size, "reason": reason,
                 "base": None if base is None else str(base.backup_id)}
        request = pinning.PinRequest(scope, repo.storage.url, lease_ns, extra)
        try:
            base_path = None if base is None else repo.storage.image(base.key)
            result = pinning.pinned_backup(db, writer, request, codec=codec, base=base_path,
                                           progress=progress,
                                           cancel=held.cancel_token(cancel),
                                           image_id=image_id, vp=vp)
            rebuilt = _publish(repo, upload, writer, image_id, rebuilt, held)
        except BaseException:
            writer.close()  # parts in flight end first (a resume finds what they stored)
            pinned = pinning.find_pin(db, scope)
            if pinned is None or pinned.pin_id != name:  # nothing to resume: clean up
                with contextlib.suppress(LaminaError):
                    upload.abort()
            raise
        finally:
            _ACTIVE.discard(name)
        with contextlib.suppress(LaminaError):  # an unreleased pin just runs out
            pinning.release(db, name)
    return Outcome(result, base, None if base is None else base.backup_id, reason, rebuilt,
                   writer.stats, False)


def _refuse_running(db: Database, pin: pins.PinRecord) -> None:
    """LockedError if the backup ``pin`` names may still be running (or being resumed):
    its unexpired pin's process lives on this host."""
    if pin.pid != os.getpid() and not pin.expired() and pin.owner_alive():
        raise LockedError(f"the backup {pin.pin_id} of {db.path} is still running in "
                          f"process {pin.pid}; stop it first")


def _published_result(repo: Repository, record: ImageRecord) -> BackupResult:
    """The result of a backup whose image was published before its pin was released."""
    info = read_info(repo.storage.image(record.key))
    m = info.manifest
    return BackupResult(path=None, size=info.size, header=info.header, catalog=info.catalog,
                        manifest=m, blocker_held_ns=m.blocker_held_ns, blocker_wait_ns=0,
                        raw_bytes=sum(s.raw_bytes for s in m.streams), elapsed_ns=0)


def resume(repo: Repository, db: Database, *, progress: ProgressCallback | None,
           cancel: CancelToken, lease_ns: int = pins.DEFAULT_LEASE_NS) -> Outcome:
    """Finish the interrupted backup of ``db`` into ``repo`` (see the module doc)."""
    uploads = uploads_of(repo.storage)
    pin = pinning.find_pin(db, _scope(repo))
    if pin is None:
        raise NotFoundError(f"no interrupted backup of {db.path} into {repo.storage.url} to "
                            f"resume; {RESUME_HINT.split(' (')[0]}")
    _refuse_running(db, pin)
    with repo._shared("backup", cancel) as held:
        pin = pinning.renew(db, pin, lease_ns, RESUME_HINT)
        extra: dict[str, Any] = pin.resume
        image_id = uuid.UUID(pin.pin_id)
        index, rebuilt = repo._load()
        reason = str(extra.get("reason", "resumed"))
        done = index.records.get(image_id)
        base_id = None if extra.get("base") is None else uuid.UUID(str(extra["base"]))
        base = None if base_id is None else index.records.get(base_id)
        if done is not None and done.error is None:  # published; only the pin was left
            pinning.release(db, pin.pin_id)
            with contextlib.suppress(LaminaError):
                uploads.remove(str(extra.get("upload", pin.pin_id)))
            return Outcome(_published_result(repo, done), base, base_id, reason, rebuilt,
                           PartStats(), True)
        if base_id is not None and (base is None or base.error is not None):
            raise ChainError(f"the base image {base_id} of the interrupted backup "
                             f"{pin.pin_id} is no longer in the repository; {RESUME_HINT}")
        name = str(extra.get("upload", pin.pin_id))
        part_size = int(extra.get("part_size", DEFAULT_PART_SIZE))
        info = {"database_id": str(db.identity.db_id), "image_id": pin.pin_id}
        resealed = pinning.reseal(db, pin)
        found: Upload | None
        try:
            found = uploads.open(name)
        except (NotFoundError, CorruptionError):  # gone or damaged: upload it all again
            found = None
        mirrored = {**info, LEASE_FIELD: _mirror_until(lease_ns)}
        if found is None or found.part_size != part_size or resealed.seal != pin.seal:
            # (A new salt: the stored parts were sealed under another one, useless now.)
            upload: Upload = uploads.create(name, part_size, mirrored)
            present = {}
        else:
            uploads.set_info(name, mirrored)
            upload, present = found, found.parts_present()
        pin = resealed
        base_path = None if base is None else repo.storage.image(base.key)
        while True:
            # Sealed under the recorded salt, a part that regenerates other bytes than
            # those stored must not be stored (that would reuse the key's nonces on other
            # plaintext): record a fresh salt, then store every part again.
            writer = PartWriter(upload, present,
                                on_part=_keep_alive(db, uploads, name, info, lease_ns,
                                                    pin.pin_id),
                                concurrency=uploads.concurrency,
                                strict=pin.seal is not None and bool(present))
            try:
                result = pinning.resume_backup(db, writer, pin, base=base_path,
                                               progress=progress,
                                               cancel=held.cancel_token(cancel))
                rebuilt = _publish(repo, upload, writer, image_id, rebuilt, held)
                break
            except CorruptionError:
                if writer.diverged is None:
                    raise
                writer.close()
                pin = pinning.reseal(db, pin, fresh=True)  # durable before any new part
                upload.abort()
                upload, present = uploads.create(name, part_size, mirrored), {}
            finally:
                writer.close()
        with contextlib.suppress(LaminaError):
            pinning.release(db, pin.pin_id)
    return Outcome(result, base, base_id, reason, rebuilt, writer.stats, True)


def abandon(repo: Repository, db: Database) -> pins.PinRecord | None:
    """Give up the interrupted backup of ``db`` into ``repo``: release its pin (writers
    may reuse the pinned pages again) and remove its upload. Returns the pin released, or
    None when there was none. Raises LockedError when the backup still runs (its process
    lives on this host), StorageError."""
    pin = pinning.find_pin(db, _scope(repo))
    if pin is None:
        return None
    _refuse_running(db, pin)
    pinning.release(db, pin.pin_id)
    uploads_of(repo.storage).remove(str(pin.resume.get("upload", pin.pin_id)))
    return pin


__all__ = ["LEASE_FIELD", "RESUME_HINT", "Outcome", "abandon", "backup", "lease_until",
           "resume"]
