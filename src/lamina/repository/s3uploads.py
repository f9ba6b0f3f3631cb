"""Resumable uploads on an S3 store: the upload protocol of :mod:`lamina.repository.uploads`
mapped onto multipart uploads (docs/format.md, "Upload staging").

Upload ``NAME`` (a backup's image id) is a multipart upload of the image's final key,
``images/NAME.lamina``, plus the object ``uploads/NAME`` holding its ``UPLOAD`` document
(the same JSON as a local upload's). A later process finds it again by listing the bucket's
unfinished multipart uploads of that key: nothing but the store remembers it. A part's
checksum is its ETag (the MD5 of its bytes, hex, as S3 and SeaweedFS compute it for a part
without server-side encryption by a customer key), so a resume compares regenerated parts
without downloading any. Completing publishes the object (visible only from then on) and
removes the description; aborting drops the upload's parts and the description.

Every method raises StorageError (AccessDeniedError, NoSuchBucketError) in one line, as the
storage does. Concurrency: one writer per upload (the backup's durable pin says which).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from lamina.core.failpoints import failpoint
from lamina.errors import (
    CorruptionError,
    LaminaError,
    NotFoundError,
    StorageError,
    UsageError,
)
from lamina.repository import layout as L
from lamina.repository.s3multipart import MultipartUpload, Part
from lamina.repository.uploads import (
    MAX_INFO_SIZE,
    MAX_PARTS,
    PartInfo,
    UploadInfo,
    check_name,
    check_part_size,
    info_document,
    parse_info,
)

if TYPE_CHECKING:
    from lamina.repository.s3storage import S3Storage

#: S3's smallest part (every part but the last).
S3_MIN_PART_SIZE = 5 << 20
#: Where upload descriptions live (keys of the repository).
UPLOADS_PREFIX = "uploads/"


def image_key_of(name: str) -> str:
    """The key an upload named ``name`` (an image id) completes into. Raises UsageError."""
    try:
        return L.image_key(uuid.UUID(name))
    except ValueError:
        raise UsageError(f"upload name {name!r} is not an image id") from None


def _unquote(etag: str) -> str:
    return etag.strip('"').lower()


class S3Upload:
    """One resumable upload on S3 (see the module doc): ``multipart`` is the store's
    upload of :func:`image_key_of` ``(name)``."""

    def __init__(self, store: S3Uploads, name: str, part_size: int,
                 multipart: MultipartUpload) -> None:
        self.store = store
        self.name = name
        self.part_size = part_size
        self.multipart = multipart
        # The parts this object stored, with the ETags the store answered: what completing
        # uses (a listing may show a part number stored twice, in any order, on SeaweedFS).
        self._stored: dict[int, Part] = {}

    def checksum(self, data: bytes) -> str:
        """MD5 of ``data``, hex: what the store reports as a part's ETag."""
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def _parts(self) -> list[Part]:
        return self.multipart.parts()

    def _unique_parts(self) -> dict[int, Part]:
        """The listed parts whose number is listed once (a number listed with several
        versions is ambiguous: which one a completion would take is unknown)."""
        seen: dict[int, list[Part]] = {}
        for p in self._parts():
            seen.setdefault(p.number, []).append(p)
        return {n: ps[0] for n, ps in seen.items() if len({x.etag for x in ps}) == 1}

    def parts_present(self) -> dict[int, PartInfo]:
        """See :meth:`Upload.parts_present <lamina.repository.uploads.Upload>`; a part
        number listed with two different ETags counts as absent (it is stored again)."""
        return {n: PartInfo(p.size, _unquote(p.etag)) for n, p in self._unique_parts().items()
                if 1 <= n <= MAX_PARTS and 0 < p.size <= self.part_size}

    def put_part(self, number: int, data: bytes) -> PartInfo:
        """Store part ``number``; its ETag must be the MD5 of ``data`` (else the store
        changed the bytes on the way: StorageError). Raises UsageError (bad number or
        size), StorageError."""
        if not 1 <= number <= MAX_PARTS:
            raise UsageError(f"part number must be 1..{MAX_PARTS}, not {number}")
        if not 0 < len(data) <= self.part_size:
            raise UsageError(f"part of {len(data)} bytes in an upload of "
                             f"{self.part_size}-byte parts")
        part = self.multipart.upload_part(number, data)
        self._stored[number] = part
        got = _unquote(part.etag)
        if got != self.checksum(data):
            raise StorageError(f"upload {self.name} on {self.store.storage.url}: part "
                               f"{number} stored with ETag {got}, not the MD5 of its bytes")
        failpoint("backup.upload_part_stored")
        return PartInfo(len(data), got)

    def complete(self, key: str, count: int) -> None:
        """Publish parts 1..``count`` as ``key`` (which must be the key this upload was
        started for) and remove the description. Raises CorruptionError (a part missing
        or short), UsageError (another key), StorageError."""
        if key != self.multipart_key:
            raise UsageError(f"upload {self.name} completes into {self.multipart_key}, "
                             f"not {key}")
        present = {**self._unique_parts(), **self._stored}
        chosen = []
        for number in range(1, count + 1):
            part = present.get(number)
            if part is None or (number < count and part.size != self.part_size):
                raise CorruptionError(f"upload {self.name}: part {number} of {count} is "
                                      "missing or short",
                                      path=self.store.storage.object_url(key))
            chosen.append(part)
        self.multipart.complete(chosen)
        with contextlib.suppress(NotFoundError):
            self.store.storage.delete(UPLOADS_PREFIX + self.name)

    @property
    def multipart_key(self) -> str:
        """The repository key this upload completes into."""
        return image_key_of(self.name)

    def abort(self) -> None:
        """Drop every unfinished multipart upload of this upload's key and the
        description (idempotent)."""
        self.store.abort_all(self.name)


class S3Uploads:
    """The resumable uploads of an S3 repository (see the module doc); a writer stores
    ``concurrency`` parts at once (one request each)."""

    concurrency = 4

    def __init__(self, storage: S3Storage,
                 key_of: Callable[[str], str] = image_key_of) -> None:
        self.storage = storage
        self.key_of = key_of

    def _pending(self, name: str) -> list[MultipartUpload]:
        object_key = self.storage.object_key(self.key_of(name))
        where = self.storage.object_url(self.key_of(name))
        client = self.storage.client
        return [MultipartUpload.resume(client, self.storage.bucket, u.object_key, u.upload_id,
                                       where)
                for u in MultipartUpload.uploads(client, self.storage.bucket, object_key,
                                                 where)
                if u.object_key == object_key]

    def abort_all(self, name: str) -> None:
        """Abort every unfinished upload of ``name``'s key; delete its description."""
        for pending in self._pending(name):
            pending.abort()
        with contextlib.suppress(NotFoundError):
            self.storage.delete(UPLOADS_PREFIX + name)

    def create(self, name: str, part_size: int, info: Mapping[str, Any]) -> S3Upload:
        """Start upload ``name`` (any earlier one of that name is aborted first). Raises
        UsageError (bad name, a part size under S3's 5 MiB), StorageError."""
        check_name(name)
        check_part_size(part_size)
        if part_size < S3_MIN_PART_SIZE:
            raise UsageError(f"an S3 repository needs parts of at least {S3_MIN_PART_SIZE} "
                             f"bytes, not {part_size}")
        self.abort_all(name)
        self.storage.put_bytes(UPLOADS_PREFIX + name, info_document(name, part_size, info))
        key = self.key_of(name)
        try:
            multipart = MultipartUpload.start(self.storage.client, self.storage.bucket,
                                              self.storage.object_key(key),
                                              self.storage.object_url(key))
        except BaseException:
            # A description without its multipart upload could never be opened (nor so
            # aborted by a later backup's tidying): withdraw it.
            with contextlib.suppress(LaminaError):
                self.storage.delete(UPLOADS_PREFIX + name)
            raise
        return S3Upload(self, name, part_size, multipart)

    def _info(self, name: str) -> UploadInfo:
        key = UPLOADS_PREFIX + check_name(name)
        try:
            raw = self.storage.get_bytes(key, limit=MAX_INFO_SIZE + 1)
        except NotFoundError:
            raise NotFoundError(f"no upload {name} in {self.storage.url}") from None
        return parse_info(raw, name, self.storage.object_url(key))

    def open(self, name: str) -> S3Upload:
        """The existing upload ``name`` (its newest unfinished multipart upload). Raises
        NotFoundError (no description, or no unfinished upload: it was completed or
        aborted), CorruptionError, StorageError."""
        info = self._info(name)
        pending = self._pending(name)
        if not pending:
            raise NotFoundError(f"no unfinished upload {name} in {self.storage.url}")
        return S3Upload(self, name, info.part_size, pending[-1])

    def list(self) -> list[UploadInfo]:
        """Every upload described under ``uploads/`` (a damaged description is skipped)."""
        return [info for _, info in self.entries() if info is not None]

    def entries(self) -> builtins.list[tuple[str, UploadInfo | None]]:
        """Every description under ``uploads/`` with what it says (None: damaged). An
        unfinished multipart upload without a description is not listed here (see
        :mod:`lamina.repository.stale`)."""
        out: builtins.list[tuple[str, UploadInfo | None]] = []
        for stat in self.storage.list(UPLOADS_PREFIX):
            name = stat.key[len(UPLOADS_PREFIX):]
            try:
                out.append((name, self._info(name)))
            except (NotFoundError, CorruptionError, UsageError):
                out.append((name, None))
        return out

    def set_info(self, name: str, info: Mapping[str, Any]) -> None:
        """Rewrite the description ``uploads/NAME`` (one PUT). See
        :meth:`UploadStore.set_info <lamina.repository.uploads.UploadStore.set_info>`."""
        old = self._info(name)
        self.storage.put_bytes(UPLOADS_PREFIX + name,
                               info_document(name, old.part_size, info, old.created_ns))

    def remove(self, name: str) -> None:
        """Abort the unfinished uploads of ``name``'s key (when it names one) and delete
        its description."""
        try:
            self.abort_all(name)
        except UsageError:  # not an image id: only a description to delete
            with contextlib.suppress(NotFoundError, UsageError):
                self.storage.delete(UPLOADS_PREFIX + name)


__all__ = ["S3_MIN_PART_SIZE", "S3Upload", "S3Uploads", "image_key_of"]
