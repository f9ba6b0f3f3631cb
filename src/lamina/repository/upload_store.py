"""Which resumable-upload store a repository's storage has (:mod:`lamina.repository.uploads`):
a local directory's ``uploads/``, or an object store's multipart uploads
(:mod:`lamina.repository.s3uploads`, imported only for an S3 storage: it needs boto3)."""

from __future__ import annotations

from lamina.errors import UsageError
from lamina.repository.storage import LocalStorage
from lamina.repository.uploads import LocalUploads, UploadStore


def uploads_of(storage: object) -> UploadStore:
    """The upload store of a repository's storage. Pure (sends no request). Raises
    UsageError for a storage that has none."""
    if isinstance(storage, LocalStorage):
        return LocalUploads(storage)
    from lamina.repository.s3storage import S3Storage

    if isinstance(storage, S3Storage):
        from lamina.repository.s3uploads import S3Uploads

        return S3Uploads(storage)
    raise UsageError(f"the storage {type(storage).__name__} cannot resume uploads")


__all__ = ["uploads_of"]
