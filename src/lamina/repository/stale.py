"""Uploads that dead writers left in a repository's store, and their removal by a prune.

A process killed while it writes into the store (kill -9, a lost server, a power cut)
leaves what it was writing unpublished but not gone:

* a merge or any other streamed put (:class:`~lamina.repository.staged_image.StagedImage`,
  :meth:`~lamina.repository.storage.Storage.writer`): on S3 an unfinished multipart upload
  (invisible, but its parts are stored and billed), locally a temporary object
  ``.NAME.tmp-XXXX`` (removed by :meth:`~lamina.repository.storage.Storage.remove_stale_temps`);
* a backup: its resumable upload (:mod:`lamina.repository.uploads`) — which must survive
  as long as the backup can be resumed, i.e. while its durable pin's lease lasts. The pin
  lives in the database, which a prune does not see; the upload's description mirrors the
  lease (:func:`lamina.repository.resumable.lease_until`), so a prune keeps every upload
  whose mirrored lease has not ended and removes the others (their ``--resume`` would fail
  with PinExpiredError anyway).

:func:`remove_stale_uploads` is called by a prune holding the repository lock exclusively:
no backup, merge or other prune runs, so every unfinished upload of a key the repository
writes (an image, the index: not another application's in the same bucket, nor a sibling
repository's) that no live resumable upload owns is a dead writer's.

Concurrency: only under the exclusive repository lock (see above).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lamina.errors import UsageError
from lamina.repository import layout as L
from lamina.repository.resumable import lease_until
from lamina.repository.storage import LocalStorage, Storage, check_key
from lamina.repository.upload_store import uploads_of

if TYPE_CHECKING:
    from lamina.repository.s3storage import S3Storage


@dataclass(frozen=True, slots=True)
class StaleUpload:
    """One thing removed: ``kind`` ("resumable upload" or "multipart upload"), ``name``
    (the upload's name, or the object URL an unfinished multipart upload was for) and
    why it was garbage."""

    kind: str
    name: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``lamina prune --json``: ``stale_uploads_removed``)."""
        return {"kind": self.kind, "name": self.name, "reason": self.reason}


def _iso(ns: int) -> str:
    """``ns`` (a wall-clock time a description states, maybe nonsense) as an ISO time."""
    try:
        return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ns} ns since the epoch (no representable time)"


def _s3(storage: Storage) -> S3Storage | None:
    """``storage`` if it is an S3 storage (whose module, needing boto3, is imported only
    for a storage that is not local)."""
    if isinstance(storage, LocalStorage):
        return None
    from lamina.repository.s3storage import S3Storage

    return storage if isinstance(storage, S3Storage) else None


def _repository_key(storage: S3Storage, object_key: str) -> str | None:
    """The key of this repository that the bucket key ``object_key`` is, when it is one
    this repository streams into (an image, the index); None for anything else in the
    bucket — another application's, a sibling repository's (``repo2`` beside ``repo``)."""
    base = storage.location.object_key("") if storage.location.prefix else ""
    if not object_key.startswith(base):
        return None
    key = object_key[len(base):]
    try:
        check_key(key)
    except UsageError:
        return None
    if key == L.INDEX_KEY or (key.startswith(L.IMAGES_PREFIX) and key.endswith(L.IMAGE_SUFFIX)
                              and key.count("/") == 1):
        return key
    return None


def remove_stale_uploads(storage: Storage, now_ns: int | None = None) -> list[StaleUpload]:
    """Remove the resumable uploads whose mirrored lease ended before ``now_ns`` (default:
    now) or whose description is damaged, and (S3) every unfinished multipart upload of a
    key this repository writes (:func:`_repository_key`: never another application's in
    the same bucket) that no resumable upload owns. Returns what was removed.
    Only under the exclusive repository lock (module doc); even so, an upload a backup
    starts meanwhile (a prune that stalled past its lease) is kept: the multipart uploads
    are listed before the descriptions, and a backup writes its description before its
    multipart upload. Raises StorageError."""
    now = time.time_ns() if now_ns is None else now_ns
    s3 = _s3(storage)
    pending = [] if s3 is None else s3.unfinished_uploads()
    uploads = uploads_of(storage)
    removed: list[StaleUpload] = []
    described: set[str] = set()  # kept (live), or removed whole with its multipart upload
    for name, info in uploads.entries():
        described.add(name)
        if info is not None:
            until = lease_until(info)
            if until > now:
                continue
            reason = f"its backup's lease ended at {_iso(until)}"
        else:
            reason = "its description is missing or damaged (it cannot be resumed)"
        uploads.remove(name)
        removed.append(StaleUpload("resumable upload", name, reason))
    if s3 is None:
        return removed  # a local one's temporary objects: Storage.remove_stale_temps
    from lamina.repository.s3uploads import image_key_of

    owned: set[str] = set()
    for name in described:
        try:
            owned.add(s3.object_key(image_key_of(name)))
        except UsageError:
            continue
    for upload in pending:
        if upload.object_key in owned or _repository_key(s3, upload.object_key) is None:
            continue
        upload.abort()
        removed.append(StaleUpload("multipart upload", upload.where,
                                   "no live writer (a merge or upload whose process died)"))
    return removed


__all__ = ["StaleUpload", "remove_stale_uploads"]
