"""Backup repositories: a directory (an object store later) of images that knows their
chains, with ``list``, ``restore``/``verify`` by id or time, and ``prune``.

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
    "parse_time",
]
