"""Online backup: the driver API, the backup and restore kernels, and image format v1.

Layering: this package imports :mod:`lamina.core` and :mod:`lamina.errors` only. Engines
implement :class:`BackupEngine` / :class:`BackupDriver` / :class:`RestoreDriver` by importing
:mod:`lamina.core.driver`; they never import the kernels.

Modules: ``driver`` (API), ``kernel`` (backup protocol), ``restore`` (restore protocol and
destination directory), ``image_format`` (constants, structs, block codecs),
``image_writer``, ``image_reader`` (incl. ``read_info``), ``verify``, ``codec``.
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
