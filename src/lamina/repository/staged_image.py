"""Write an image into the repository's storage; publish it only once it is proven.

:class:`StagedImage` is how a repository operation that makes an image from images already
stored (a prune's synthetic full, a merge) writes it: straight into the store, never to a
local copy first.

* The bytes go into the storage's :meth:`~lamina.repository.storage.Storage.writer` for the
  final key while they are produced: on S3 a multipart upload of that key (memory: part
  size x (parts in flight + 1) plus a constant, whatever the image's size), on a local
  directory a temporary object next to the key (``.NAME.tmp-XXXX``).
* They are proven as they go by a :class:`~lamina.backup.verifying_stream.VerifyingStream`
  (every chunk decoded, every stream hash, the manifest, the footer, the whole-image hash;
  a sealed image authenticated): the same proof a verify of a local file gives. Re-reading
  the object before publishing it is not possible on S3 (an unfinished multipart upload
  has no GET), and completing it under another key to read it back would need a
  server-side copy of the whole image to publish it; each part's ETag is checked against
  the MD5 of the bytes sent, so the store holds what was proven.
* :meth:`StagedImage.publish` completes the upload (or renames the temporary object over
  the key): the object that was there (the layer it replaces) stays as it was until that
  atomic moment. :meth:`StagedImage.discard` (or leaving the ``with`` block without
  publishing) aborts: nothing is published. A process killed before publishing leaves an
  unfinished upload or a temporary object, never a visible object: a prune removes it
  (:mod:`lamina.repository.stale`).

The working state of whatever produces the image (a chain's assembled pages) is the
producer's affair; :attr:`StagedImage.workdir` is a local scratch directory for it.

Concurrency: one thread writes a staged image; the caller holds the repository lock that
makes it the only writer of ``key``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType

from lamina.backup.verify import VerifyReport
from lamina.backup.verifying_stream import VerifyingStream
from lamina.errors import LaminaError, UsageError
from lamina.repository.storage import ObjectWriter, Storage


class StagedImage:
    """An image being written into ``storage`` at ``key`` (see the module doc).

    Write the image to :attr:`stream`; then :meth:`prove` (optional: ``publish`` proves
    too) and :meth:`publish`, or :meth:`discard`. Raises StorageError when the upload
    cannot start.
    """

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        #: A local scratch directory for the producer's working state (not the image).
        self.workdir: Path = storage.staging_dir()
        self._writer: ObjectWriter = storage.writer(key)
        #: Where the image is written: the store's writer, behind the verifier.
        self.stream = VerifyingStream(self._writer)
        self._report: VerifyReport | None = None
        self._done = False

    def prove(self) -> VerifyReport:
        """Wait for the verification of what was written (the whole image must be written
        by now). Returns the report (header, manifest, size). Raises CorruptionError & co.
        (then the image is discarded), UsageError (after publish or discard)."""
        if self._done:
            raise UsageError(f"the staged image {self.key} is closed")
        if self._report is None:
            try:
                self._report = self.stream.finish()
            except BaseException:
                self.discard()
                raise
        return self._report

    def publish(self) -> int:
        """Prove the image (if not yet), then publish it at the key atomically, replacing
        what is there. Returns its size. Raises what :meth:`prove` raises, StorageError;
        on any error nothing is published and the object at the key is as it was."""
        report = self.prove()
        try:
            self._writer.commit()
        except BaseException:
            self.discard()
            raise
        self._done = True
        return report.size

    def discard(self) -> None:
        """Publish nothing: stop the verifier and abort the upload (temporary object).
        Idempotent; never raises (a leftover is never visible; a prune removes it)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(LaminaError):
            self.stream.abort()
        self._writer.abort()

    def __enter__(self) -> StagedImage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.discard()  # after publish: nothing to do


__all__ = ["StagedImage"]
