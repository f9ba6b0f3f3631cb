"""A :class:`~lamina.repository.storage.Storage` on an S3-compatible object store.

Repository key ``K`` is the object ``PREFIX/K`` of ``BUCKET`` (``s3://BUCKET/PREFIX``).
How each part of the protocol maps onto S3 requests:

* puts: ``put_bytes``/``put_stream``/``put_file``/``writer`` stream into a multipart upload
  (:mod:`lamina.repository.s3multipart`: parts uploaded concurrently while the stream is
  written, memory bounded by part size x concurrency); an object smaller than one part is
  one PUT. Either way the object appears, whole, when the PUT or the completion returns;
  a failed or aborted upload leaves no object;
* reads: ``get_range`` is a ranged GET; ``open``/``image`` give a seekable
  :class:`~lamina.repository.ranged.RangedReader` (probes, then read-ahead with a few
  parallel ranged GETs); every ranged GET of one stream names the ETag it opened
  (``If-Match``), so an object replaced during a read fails the read (StorageError)
  instead of mixing two versions;
* ``list``: ListObjectsV2 with the prefix, page after page (1,000 keys a page);
* conditional writes: ``create_if_absent`` is ``PUT If-None-Match: *``; ``replace_if`` is
  ``PUT If-Match: ETAG``; the ETag is the version token; ``delete_if`` is
  ``DELETE If-Match: ETAG`` (where a store refuses that: compare the ETag, then delete —
  a replacement landing between the two is lost, which the lease protocol tolerates: the
  lease's holder finds it gone at its next renewal);
* the change stamp of an :class:`~lamina.repository.storage.ObjectStat` is derived from
  the ETag (a replaced object with other bytes has another ETag).

Concurrency: thread-safe (one boto3 client, thread-safe, shared by every thread).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from lamina.backup.image_reader import ImageLocation, ReadableStream
from lamina.errors import LaminaError, NoSuchBucketError, NotFoundError, StorageError
from lamina.repository import ranged
from lamina.repository.s3client import (
    PRECONDITION_FAILED,
    S3Location,
    error_code,
    make_client,
    translate,
)
from lamina.repository.s3multipart import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    MultipartUpload,
    MultipartWriter,
)
from lamina.repository.storage import ObjectStat, ObjectWriter, check_key

_COPY_BLOCK = 1024 * 1024
#: Attempts at reading one ranged GET's body (botocore retries the request itself, not
#: a body cut off half-way).
_BODY_ATTEMPTS = 4


def _stamp(etag: str) -> int:
    """A change stamp (non-negative int) from an ETag."""
    return xxhash.xxh3_64_intdigest(etag.encode()) >> 1


class S3Image:
    """An image object of an S3 repository, for the image reader (an
    :class:`~lamina.backup.image_reader.ImageSource`)."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self.key = key

    @property
    def name(self) -> str:
        """The key's last component."""
        return self.key.rpartition("/")[2]

    def open_image(self) -> BinaryIO:
        """A ranged reader of the object (see :meth:`S3Storage.open`)."""
        return self._storage.open(self.key)

    def __str__(self) -> str:
        return self._storage.object_url(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3Image) and (other._storage, other.key) == (
            self._storage, self.key)

    def __hash__(self) -> int:
        return hash(self.key)



class S3Storage:
    """The objects of ``s3://bucket/prefix`` (see the module doc). ``endpoint`` overrides
    the AWS settings' endpoint; ``part_size``/``concurrency`` shape uploads,
    ``read_block``/``read_parallel`` ranged reads. Creating one imports boto3 but sends
    no request. Raises UsageError (boto3 missing, bad settings)."""

    def __init__(self, location: S3Location, *, endpoint: str | None = None,
                 part_size: int = DEFAULT_PART_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
                 read_block: int = ranged.DEFAULT_BLOCK_SIZE,
                 read_parallel: int = ranged.DEFAULT_PARALLEL, client: Any = None) -> None:
        self.location = location
        self.client = client if client is not None else make_client(endpoint)
        self.part_size = part_size
        self.concurrency = concurrency
        self.read_block = read_block
        self.read_parallel = read_parallel
        self._staging: Path | None = None

    @property
    def url(self) -> str:
        """``s3://bucket/prefix``."""
        return self.location.url

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self.location.bucket

    def object_key(self, key: str) -> str:
        """The bucket key of a (validated) repository key."""
        check_key(key)
        return self.location.object_key(key)

    def object_url(self, key: str) -> str:
        """``s3://bucket/prefix/key``, for messages."""
        return f"s3://{self.bucket}/{self.location.object_key(key)}"

    # ------------------------------------------------------------------ writes
    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                               **conditions)

    def put_bytes(self, key: str, data: bytes) -> None:
        """See :meth:`Storage.put_bytes`."""
        if len(data) < self.part_size:
            try:
                self._put(key, data)
            except Exception as exc:
                raise translate(exc, "store", self.object_url(key)) from exc
            return
        self.put_stream(key, _BytesStream(data))

    def writer(self, key: str) -> ObjectWriter:
        """A :class:`~lamina.repository.s3multipart.MultipartWriter`. See
        :meth:`Storage.writer`."""
        where = self.object_url(key)

        def put_small(data: bytes) -> None:
            try:
                self._put(key, data)
            except Exception as exc:
                raise translate(exc, "store", where) from exc

        return MultipartWriter(self.client, self.bucket, self.object_key(key), where,
                               part_size=self.part_size, concurrency=self.concurrency,
                               put_small=put_small)

    def put_stream(self, key: str, stream: ReadableStream) -> None:
        """See :meth:`Storage.put_stream`."""
        writer = self.writer(key)
        try:
            while block := stream.read(_COPY_BLOCK):
                writer.write(block)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def put_file(self, key: str, src: Path) -> None:
        """Upload ``src``, then delete it. See :meth:`Storage.put_file`."""
        try:
            f = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise NotFoundError(f"no file {src} to store") from None
        except OSError as exc:
            raise StorageError(f"cannot open {src}: {exc.strerror}") from exc
        with f:
            self.put_stream(key, f)
        with contextlib.suppress(OSError):
            os.unlink(src)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """``PUT If-None-Match: *``. See :meth:`Storage.create_if_absent`."""
        try:
            self._put(key, data, IfNoneMatch="*")
        except Exception as exc:
            if error_code(exc) in PRECONDITION_FAILED:
                return False
            raise translate(exc, "create", self.object_url(key)) from exc
        return True

    def replace_if(self, key: str, token: str, data: bytes) -> bool:
        """``PUT If-Match: token``. See :meth:`Storage.replace_if`."""
        try:
            self._put(key, data, IfMatch=token)
        except Exception as exc:
            if error_code(exc) in PRECONDITION_FAILED or error_code(exc) in (
                    "NoSuchKey", "404"):
                return False
            raise translate(exc, "replace", self.object_url(key)) from exc
        return True

    def delete_if(self, key: str, token: str) -> bool:
        """``DELETE If-Match: token``; a store that refuses conditional deletes gets a
        compare, then a delete (module doc). See :meth:`Storage.delete_if`."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key),
                                      IfMatch=token)
            return True
        except Exception as exc:
            code = error_code(exc)
            if code in PRECONDITION_FAILED or code in ("NoSuchKey", "404"):
                return False
            if code not in ("NotImplemented", "501", "InvalidArgument", "400"):
                raise translate(exc, "delete", self.object_url(key)) from exc
        try:
            current = self.stat_etag(key)
        except NotFoundError:
            return False
        if current != token:
            return False
        self.delete(key)
        return True

    def delete(self, key: str) -> None:
        """See :meth:`Storage.delete` (S3 deletes are idempotent)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            raise translate(exc, "delete", self.object_url(key)) from exc

    # ------------------------------------------------------------------ reads
    def _get(self, key: str, **extra: Any) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key),
                                          **extra)
        except Exception as exc:
            if error_code(exc) in ("InvalidRange", "416"):
                return None
            err = translate(exc, "read", self.object_url(key))
            if isinstance(err, NotFoundError):
                raise NotFoundError(f"no object {key} in {self.url}") from None
            raise err from exc

    def _body(self, key: str, **extra: Any) -> tuple[bytes, str]:
        """One GET's body (read again, up to a few times, when the connection drops in
        the middle of it) and the object's ETag."""
        for attempt in range(_BODY_ATTEMPTS):
            answer = self._get(key, **extra)
            if answer is None:
                return b"", ""
            try:
                return answer["Body"].read(), str(answer["ETag"])
            except Exception as exc:
                if attempt == _BODY_ATTEMPTS - 1:
                    raise translate(exc, "read", self.object_url(key)) from exc
        raise AssertionError("unreachable")

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """See :meth:`Storage.get_bytes`."""
        if limit is None:
            return self._body(key)[0]
        return self._body(key, Range=f"bytes=0-{limit}")[0]

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, str]:
        """The ETag (of the whole object, even for a ranged GET) is the token. See
        :meth:`Storage.read_versioned`."""
        if limit is not None:
            data, etag = self._body(key, Range=f"bytes=0-{limit}")
            if etag:
                return data, etag
            # An empty object has no byte 0 (416, no ETag): read it whole (it is empty).
        return self._body(key)

    def get_range(self, key: str, offset: int, length: int, *, etag: str | None = None
                  ) -> bytes:
        """A ranged GET (``etag``: only of that version, else StorageError). See
        :meth:`Storage.get_range`."""
        if length <= 0:
            return b""
        extra: dict[str, str] = {"Range": f"bytes={offset}-{offset + length - 1}"}
        if etag is not None:
            extra["IfMatch"] = etag
        try:
            return self._body(key, **extra)[0]
        except StorageError as exc:
            if etag is not None and ("PreconditionFailed" in str(exc) or "412" in str(exc)):
                raise StorageError(f"{self.object_url(key)} was replaced while it was "
                                   "read") from exc
            raise

    def _head(self, key: str) -> Any:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            err = translate(exc, "read", self.object_url(key))
            if isinstance(err, NotFoundError):
                raise NotFoundError(f"no object {key} in {self.url}") from None
            raise err from exc

    def stat_etag(self, key: str) -> str:
        """The object's current ETag. Raises NotFoundError, StorageError."""
        return str(self._head(key)["ETag"])

    def stat(self, key: str) -> ObjectStat:
        """See :meth:`Storage.stat`."""
        head = self._head(key)
        return ObjectStat(key, int(head["ContentLength"]), _stamp(str(head["ETag"])))

    def exists(self, key: str) -> bool:
        """See :meth:`Storage.exists`."""
        try:
            self._head(key)
        except NotFoundError:
            return False
        return True

    def open(self, key: str) -> BinaryIO:
        """A :class:`~lamina.repository.ranged.RangedReader` of the version there now.
        See :meth:`Storage.open`."""
        head = self._head(key)
        etag = str(head["ETag"])
        size = int(head["ContentLength"])

        def fetch(offset: int, length: int) -> bytes:
            data = self.get_range(key, offset, length, etag=etag)
            if len(data) != length:
                raise StorageError(f"short read of {self.object_url(key)}: {len(data)} of "
                                   f"{length} bytes at offset {offset}")
            return data

        reader = ranged.RangedReader(fetch, size, self.object_url(key),
                                     block_size=self.read_block, parallel=self.read_parallel)
        return reader  # type: ignore[return-value]  # a RawIOBase is a binary stream

    def image(self, key: str) -> ImageLocation:
        """An :class:`S3Image`. See :meth:`Storage.image`."""
        check_key(key)
        return S3Image(self, key)

    def list(self, prefix: str = "") -> builtins.list[ObjectStat]:
        """See :meth:`Storage.list`."""
        base = self.location.object_key("") if self.location.prefix else ""
        found: builtins.list[ObjectStat] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])[len(base):]
                    try:
                        check_key(key)
                    except LaminaError:
                        continue  # not a name this protocol uses (foreign or temporary)
                    found.append(ObjectStat(key, int(obj["Size"]), _stamp(str(obj["ETag"]))))
        except Exception as exc:
            raise translate(exc, "list", self.url) from exc
        return sorted(found, key=lambda s: s.key)

    # ------------------------------------------------------------------ local side
    def staging_dir(self) -> Path:
        """A private local temporary directory (removed by :meth:`close`). See
        :meth:`Storage.staging_dir`."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="lamina-s3-staging-"))
        return self._staging

    def remove_stale_temps(self, keep: tuple[str, ...] = ()) -> builtins.list[str]:
        """Nothing is left as an object by a dead writer (an unfinished multipart upload
        is never visible); the local staging directory is emptied. See
        :meth:`Storage.remove_stale_temps`."""
        removed: builtins.list[str] = []
        if self._staging is not None:
            for child in self._staging.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else \
                    child.unlink(missing_ok=True)
                removed.append(str(child))
        return removed

    def unfinished_uploads(self) -> builtins.list[MultipartUpload]:
        """Every unfinished multipart upload under the prefix (to resume or abort)."""
        base = self.location.object_key("") if self.location.prefix else ""
        return [MultipartUpload.resume(self.client, self.bucket, u.object_key, u.upload_id,
                                       f"s3://{self.bucket}/{u.object_key}")
                for u in MultipartUpload.uploads(self.client, self.bucket, base, self.url)]

    def close(self) -> None:
        """Remove the local staging directory."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    # ------------------------------------------------------------------ bucket
    def check_container(self) -> None:
        """HEAD the bucket. See :meth:`Storage.check_container`."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise translate(_NoSuchBucket(), "open", self.url) from exc
            raise translate(exc, "open", self.url) from exc

    def create_container(self) -> None:
        """Create the bucket unless it exists (ours already is fine). See
        :meth:`Storage.create_container`."""
        try:
            self.check_container()
            return
        except NoSuchBucketError:
            pass
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("BucketAlreadyOwnedByYou",):
                return
            raise translate(exc, "create the bucket of", self.url) from exc


class _NoSuchBucket(Exception):
    """A HEAD answer without a body, standing for S3's NoSuchBucket error."""

    response = {"Error": {"Code": "NoSuchBucket"}}


class _BytesStream:
    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1, /) -> bytes:
        end = len(self._view) if size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos:end])
        self._pos += len(chunk)
        return chunk
