"""Verifying one image without restoring it (``lamina verify IMAGE [--deep]``).

Concurrency: the image is a read-only input; nothing is written and no lock is held.
"""

from __future__ import annotations

import os
from typing import Any

from lamina.backup.image_reader import ReadableStream, image_summary
from lamina.backup.kernel import CancelToken, ProgressCallback
from lamina.backup.restore import run_restore
from lamina.backup.verify import verify_image
from lamina.online.facts import ImageFacts
from lamina.online.plan import restore_engines
from lamina.online.root import has_logical_driver, image_root_inputs, prove_root_hash


def verify(source: str | os.PathLike[str] | ReadableStream, *, deep: bool = False,
           progress: ProgressCallback | None = None,
           cancel: CancelToken = None) -> dict[str, Any]:
    """Verify an image without restoring it; returns a JSON-ready report.

    Always: every chunk checksum, per-stream sequence and hash, the manifest hash and the
    footer. ``deep``: also runs every restore driver in verify-only mode (with its VP
    facts), which rebuilds the btree Merkle root from the image's pages (compared with the
    VP's root hash) and decodes every archive block and its chain — writing nothing — checks
    every driver's VP facts against the image's VP, and the database root hash those facts
    give against the manifest's (images without logical drivers;
    :class:`~lamina.online.facts.ImageFacts`). Raises
    CorruptionError naming the first damage, NotADatabaseError, VersionError,
    UnsupportedError, StorageError, CancelledError (``cancel``, checked before every
    chunk, like a backup's or a restore's).
    """
    if not deep:
        report = verify_image(source, cancel=cancel)
        out = report.to_json()
        out.update(chunks=report.chunks, streams=report.catalog.stream_count, deep=False)
        return out
    result = run_restore(source, restore_engines(), None, progress=progress, cancel=cancel)
    # Each driver proved its own facts; these are the ones against the image's VP.
    label = f"image {result.header.image_id}"
    ImageFacts(result, label).check()
    if not has_logical_driver(result.catalog):
        # The facts were proven against the streams (Merkle root from the pages, each
        # archive chain from its blocks), so the root hash they give is the content's.
        prove_root_hash(result.manifest.root_hash,
                        image_root_inputs(result.catalog, result.manifest.vp.drivers, label),
                        f"verify of {label}")
    # Every chunk of a sealed image was opened (its tag checked) and both MACs checked.
    out = image_summary(result.header, result.catalog, result.manifest, result.size,
                        result.header.sealed)
    out.update(ok=True, chunks=result.chunks, streams=result.catalog.stream_count, deep=True)
    return out


__all__ = ["verify"]
