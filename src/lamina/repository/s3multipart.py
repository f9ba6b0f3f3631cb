"""Multipart uploads to an S3 store: one upload (start, or resume by id and list its parts),
and a stream writer that uploads parts concurrently while it is written.

:class:`MultipartUpload` is the protocol-level object: ``start`` a new upload of a key, or
``resume`` one by its upload id (``uploads`` finds unfinished ones under a prefix, ``parts``
lists what is stored), ``upload_part``, ``complete`` (the object becomes visible, whole, at
that moment and not before) or ``abort``. Every part but the last must be at least
:data:`MIN_PART_SIZE` bytes (the S3 rule).

:class:`MultipartWriter` is a binary stream (``write``/``flush``) that cuts what it is given
into parts of ``part_size`` bytes and uploads up to ``concurrency`` of them at once; a
writer that would get ahead of that waits (back-pressure), so memory stays below
``part_size x (concurrency + 1)`` plus a constant whatever the object's size. ``commit``
uploads the rest and completes; ``abort`` (or any failure) aborts the upload, so nothing is
published. An object smaller than one part is sent with one plain PUT. Every part's ETag
must be the MD5 of the bytes sent (else StorageError: the store received other bytes).

Concurrency: a writer is used by one thread (its upload threads are its own).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lamina.errors import LaminaError, NotFoundError, StorageError
from lamina.repository.s3client import error_code, translate

#: The smallest part S3 accepts (all but the last part).
MIN_PART_SIZE = 5 * 1024 * 1024
#: Defaults: 8 MiB parts, 4 in flight (about 40 MiB of buffers per upload).
DEFAULT_PART_SIZE = 8 * 1024 * 1024
DEFAULT_CONCURRENCY = 4
#: S3's largest part number.
MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class Part:
    """A stored part: its number (1-based), ETag (as the store quotes it) and size."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """An unfinished multipart upload: key (the bucket's), upload id, start time (ns)."""

    object_key: str
    upload_id: str
    initiated_ns: int


class MultipartUpload:
    """One multipart upload of ``object_key`` in ``bucket`` (see the module doc).

    ``where`` (an ``s3://`` URL) names it in errors. Methods raise StorageError,
    AccessDeniedError or NoSuchBucketError (one line); ``upload_part`` may be called from
    several threads at once.
    """

    def __init__(self, client: Any, bucket: str, object_key: str, upload_id: str,
                 where: str) -> None:
        self.client = client
        self.bucket = bucket
        self.object_key = object_key
        self.upload_id = upload_id
        self.where = where

    @classmethod
    def start(cls, client: Any, bucket: str, object_key: str, where: str) -> MultipartUpload:
        """Begin a new upload of ``object_key``."""
        try:
            answer = client.create_multipart_upload(Bucket=bucket, Key=object_key)
        except Exception as exc:
            raise translate(exc, "start an upload of", where) from exc
        return cls(client, bucket, object_key, str(answer["UploadId"]), where)

    @classmethod
    def resume(cls, client: Any, bucket: str, object_key: str, upload_id: str,
               where: str) -> MultipartUpload:
        """Attach to the unfinished upload ``upload_id`` (its parts: :meth:`parts`)."""
        return cls(client, bucket, object_key, upload_id, where)

    @staticmethod
    def uploads(client: Any, bucket: str, prefix: str, where: str) -> list[PendingUpload]:
        """Every unfinished upload whose key starts with ``prefix``, oldest first."""
        found: list[PendingUpload] = []
        try:
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    found.append(PendingUpload(str(up["Key"]), str(up["UploadId"]),
                                               int(up["Initiated"].timestamp() * 1e9)))
        except Exception as exc:
            raise translate(exc, "list the unfinished uploads of", where) from exc
        return sorted(found, key=lambda u: (u.initiated_ns, u.upload_id))

    def parts(self) -> list[Part]:
        """The parts stored so far, by number. Raises NotFoundError when the upload is
        gone (completed or aborted, e.g. by another process since it was listed)."""
        found: list[Part] = []
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self.object_key, UploadId=self.upload_id)
            for page in pages:
                for p in page.get("Parts", []):
                    found.append(Part(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"])))
        except Exception as exc:
            if error_code(exc) == "NoSuchUpload":
                raise NotFoundError(f"the upload of {self.where} no longer exists (completed "
                                    "or aborted)") from exc
            raise translate(exc, "list the parts of the upload of", self.where) from exc
        return sorted(found, key=lambda p: p.number)

    def upload_part(self, number: int, data: bytes) -> Part:
        """Store ``data`` as part ``number`` (1..10000; replaces an earlier one)."""
        if not 1 <= number <= MAX_PARTS:
            raise StorageError(f"cannot upload {self.where}: more than {MAX_PARTS} parts "
                               "(use a larger part size)")
        try:
            answer = self.client.upload_part(Bucket=self.bucket, Key=self.object_key,
                                             UploadId=self.upload_id, PartNumber=number,
                                             Body=data)
        except Exception as exc:
            raise translate(exc, f"upload part {number} of", self.where) from exc
        return Part(number, str(answer["ETag"]), len(data))

    def complete(self, parts: list[Part]) -> None:
        """Publish the object from ``parts`` (in number order): visible only from now."""
        body = {"Parts": [{"PartNumber": p.number, "ETag": p.etag}
                          for p in sorted(parts, key=lambda p: p.number)]}
        try:
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.object_key,
                                                  UploadId=self.upload_id,
                                                  MultipartUpload=body)
        except Exception as exc:
            raise translate(exc, "complete the upload of", self.where) from exc

    def abort(self) -> None:
        """Drop the upload and its parts (an upload already gone is fine)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key,
                                               UploadId=self.upload_id)
        except Exception as exc:
            err = translate(exc, "abort the upload of", self.where)
            if "NoSuchUpload" in str(err):
                return
            raise err from exc


class MultipartWriter:
    """A write-only binary stream that becomes the object ``object_key`` on :meth:`commit`
    (see the module doc). ``put_small(data)`` sends an object smaller than a part in one
    request. Raises what :class:`MultipartUpload` raises; after an error the upload is
    aborted and the writer is closed."""

    def __init__(self, client: Any, bucket: str, object_key: str, where: str, *,
                 part_size: int = DEFAULT_PART_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
                 put_small: Callable[[bytes], None] | None = None) -> None:
        if part_size < MIN_PART_SIZE or concurrency < 1:
            raise ValueError(f"part size must be >= {MIN_PART_SIZE}, concurrency >= 1")
        self._client, self._bucket, self._key, self._where = client, bucket, object_key, where
        self.part_size = part_size
        self.concurrency = concurrency
        self._put_small = put_small
        self._buf = bytearray()
        self._upload: MultipartUpload | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots = threading.Semaphore(concurrency)
        self._futures: list[Future[Part]] = []
        self._next = 1
        self._closed = False
        self.bytes_written = 0

    def _check(self) -> None:
        if self._closed:
            raise ValueError("write to a closed upload")
        for future in self._futures:
            if future.done() and future.exception() is not None:
                self.abort()
                exc = future.exception()
                assert exc is not None
                raise exc

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Buffer ``data``; every full part is handed to an upload thread (waiting while
        ``concurrency`` parts are in flight). Returns ``len(data)``."""
        self._check()
        self._buf += data
        self.bytes_written += len(data)
        while len(self._buf) >= self.part_size:
            with memoryview(self._buf) as view:  # one copy of the part, not two
                part = bytes(view[:self.part_size])
            del self._buf[:self.part_size]
            self._send(part)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: parts are sent as they fill (kept for the stream protocol)."""

    def _send(self, part: bytes) -> None:
        if self._upload is None:
            try:
                self._upload = MultipartUpload.start(self._client, self._bucket, self._key,
                                                     self._where)
            except BaseException:
                self._closed = True
                raise
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="lamina-up")
        assert self._pool is not None
        # Back-pressure: block while `concurrency` parts are in flight; a failed part
        # surfaces on the next write.
        while not self._slots.acquire(timeout=0.5):
            self._check()
        number, self._next = self._next, self._next + 1
        upload = self._upload

        def run() -> Part:
            try:
                stored = upload.upload_part(number, part)
                # The ETag of a part is the MD5 of the bytes the store received: a part
                # changed on the way is refused here, before the upload can complete.
                if stored.etag.strip('"').lower() != hashlib.md5(
                        part, usedforsecurity=False).hexdigest():
                    raise StorageError(f"cannot upload {self._where}: part {number} was "
                                       f"stored with ETag {stored.etag}, not the MD5 of "
                                       "its bytes")
                return stored
            finally:
                self._slots.release()

        self._futures.append(self._pool.submit(run))

    def commit(self) -> None:
        """Upload what is buffered, wait for every part, publish the object. On any error
        the upload is aborted (nothing is published) and the error raised."""
        self._check()
        try:
            if self._upload is None:
                data = bytes(self._buf)
                self._buf.clear()
                if self._put_small is None:
                    self._send(data)
                else:
                    self._put_small(data)
                    self._closed = True
                    return
            elif self._buf or not self._futures:
                data = bytes(self._buf)
                self._buf.clear()
                self._send(data)
            assert self._upload is not None
            parts = [f.result() for f in self._futures]
            self._upload.complete(parts)
        except BaseException:
            self.abort()
            raise
        self._upload = None
        self._shutdown()
        self._closed = True

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        """Stop, and drop the upload and its parts (nothing is published). Idempotent;
        a failure to abort is not raised (a leftover upload is never visible as an
        object; :meth:`MultipartUpload.uploads` lists it)."""
        self._closed = True
        for future in self._futures:
            future.cancel()
        self._shutdown()
        upload, self._upload = self._upload, None
        if upload is not None:
            try:
                upload.abort()
            except LaminaError:
                pass
        self._buf.clear()
