"""The backup kernel: the backup and restore protocols, image format v1, and the generic
(logical) drivers that back up tables of any engine.

Layering: the modules of this package import :mod:`lamina.core`, :mod:`lamina.errors` and
each other, nothing else: the kernel knows no engine and no database. Engines implement the
driver API (:mod:`lamina.core.driver`: :class:`BackupEngine`, :class:`BackupDriver`,
:class:`RestoreDriver`, typed VP facts) without importing this package; :mod:`lamina.online`
(above the database) builds a database's drivers and runs the kernels with them.

Modules: ``kernel`` (backup protocol, throttling, cancellation), ``restore`` (restore
protocol; publishing a restored directory), ``image_format`` (constants, structs, block
codecs), ``image_writer``, ``image_reader`` (incl. ``read_info``), ``verify`` (an image
proven whole without restoring it), ``codec`` (chunk compression), ``logical`` (logical
streams, the source/sink protocols, the logical drivers' VP facts), ``snapshot_driver`` and
``default_driver`` (the generic drivers), ``history`` (``BACKUP_HISTORY``).

The driver API names are re-exported here (from :mod:`lamina.core.driver`) for callers that
drive the kernels by hand.
"""

from __future__ import annotations

from lamina.backup.image_format import Codec, ImageKind
from lamina.backup.image_reader import ImageInfo, ImageReader, read_info
from lamina.backup.image_writer import ImageWriter
from lamina.backup.kernel import BackupResult, BaseImageRef, CommitBlocker, run_backup
from lamina.backup.restore import RestoreResult, restore_into_directory, run_restore
from lamina.backup.verify import VerifyReport, verify_image
from lamina.core.driver import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    Buffer,
    DriverGroup,
    DriverKind,
    DriverProtocolError,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
)

__all__ = [
    "BackupDriver",
    "BackupEngine",
    "BackupFlags",
    "BackupResult",
    "BaseImageRef",
    "Buffer",
    "Codec",
    "CommitBlocker",
    "DriverGroup",
    "DriverKind",
    "DriverProtocolError",
    "ImageInfo",
    "ImageKind",
    "ImageReader",
    "ImageWriter",
    "RestoreDriver",
    "RestoreFlags",
    "RestoreResult",
    "Result",
    "TableSpec",
    "VerifyReport",
    "read_info",
    "restore_into_directory",
    "run_backup",
    "run_restore",
    "verify_image",
]
