"""Backup repositories: images in a local directory or an S3 bucket prefix
(``s3://BUCKET/PREFIX``), that know their chains, with ``list``, ``restore``/``verify`` by
id or time, and ``prune``.

Layer: imports ``lamina.backup``, ``lamina.database``, ``lamina.core`` and
``lamina.errors``, never ``lamina.cli``. Start with :class:`Repository`.
"""

from __future__ import annotations

from lamina.repository.index import ImageRecord, Index
from lamina.repository.layout import RepoConfig
from lamina.repository.policy import KeepPolicy
from lamina.repository.repository import (
    BackupEntry,
    PruneResult,
    RepoBackupResult,
    RepoRestoreResult,
    Repository,
    RepoVerifyReport,
    open_storage,
    parse_time,
)
from lamina.repository.storage import LocalStorage, ObjectStat, Storage

__all__ = [
    "BackupEntry",
    "ImageRecord",
    "Index",
    "KeepPolicy",
    "LocalStorage",
    "ObjectStat",
    "PruneResult",
    "RepoBackupResult",
    "RepoConfig",
    "RepoRestoreResult",
    "RepoVerifyReport",
    "Repository",
    "Storage",
    "open_storage",
    "parse_time",
]
