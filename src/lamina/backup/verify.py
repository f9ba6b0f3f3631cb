"""``verify``: prove an image whole without restoring it, reading it front to back once.

Works on a path or on any readable binary stream, including a non-seekable one (stdin, a
pipe, a download), because every check is made in reading order: header, catalog, each
chunk (header checksum, payload checksum, stream number, sequence continuity, last flag,
decompression to the recorded length), then the manifest (hash, cross-checks), every
stream's size and blake2b-128 against the manifest, the footer and the whole-image hash,
and that nothing follows the footer.

A sealed image is never decrypted here: with its key (the current keyring) the manifest MAC
and the whole-image Poly1305 prove every stored byte authentic (``authenticated``); without
it only the checksums are checked, and the report says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.backup import image_format
from lamina.backup.image_reader import (
    ImageReader,
    ImageSource,
    ReadableStream,
    image_summary,
    location,
    open_image_file,
    public_summary,
)
from lamina.backup.kernel import CancelToken, is_cancelled
from lamina.errors import CancelledError


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """A verified image: its header, catalog, manifest, size and chunk count."""

    header: image_format.ImageHeader
    catalog: image_format.ImageCatalog
    manifest: image_format.Manifest
    size: int
    chunks: int
    raw_bytes: int
    #: A sealed image whose MACs were checked with its key.
    authenticated: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report (for ``lamina verify --json``)."""
        if self.header.sealed and not self.authenticated:  # only what is not secret
            out = public_summary(self.header, self.manifest, self.size)
        else:
            out = image_summary(self.header, self.catalog, self.manifest, self.size,
                                self.authenticated)
        out["ok"] = True
        return out


def verify_image(source: str | os.PathLike[str] | ImageSource | ReadableStream, *,
                 cancel: CancelToken = None) -> VerifyReport:
    """Verify every byte of the image at ``source`` (a path, an :class:`ImageSource`, or a
    readable binary stream positioned at the image's first byte; it is read to its end,
    not closed).

    ``cancel`` is checked before every chunk. Returns a :class:`VerifyReport`. Raises
    CorruptionError naming the stream, chunk and offset of the first damage found,
    NotADatabaseError (not an image), VersionError (newer format), UnsupportedError
    (unknown codec/flag), NotFoundError (no such file), StorageError (read error),
    CancelledError. Never raises anything else.
    """
    if isinstance(source, (str, os.PathLike, ImageSource)):
        where = location(source)
        with open_image_file(where) as f:
            return _verify(f, where, cancel)
    return _verify(source, None, cancel)


def _verify(stream: ReadableStream, path: Path | ImageSource | None,
            cancel: CancelToken) -> VerifyReport:
    reader = ImageReader(stream, path=path, decrypt=False)
    chunks = 0
    raw = 0
    if is_cancelled(cancel):
        raise CancelledError("verify cancelled")
    for chunk in reader.chunks():
        if is_cancelled(cancel):
            raise CancelledError("verify cancelled")
        chunks += 1
        raw += chunk.header.raw_length
    assert reader.manifest is not None and reader.size is not None  # set when chunks() ends
    return VerifyReport(reader.header, reader.catalog, reader.manifest, reader.size, chunks,
                        raw, reader.authenticated)
