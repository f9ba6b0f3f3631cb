"""Restorable points of a repository: every backup whose chain resolves, in time order
(``lamina list --points``), and the newest point at or before a time (``restore --at``).

Concurrency: reads the repository under its shared lock (through
:meth:`~lamina.repository.repository.Repository.list`); safe beside a replicator.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from lamina.errors import CorruptionError, NotFoundError, UsageError
from lamina.repository.repository import BackupEntry, Repository
from lamina.repository.timespec import iso_ns


@dataclass(frozen=True, slots=True)
class Point:
    """One restorable point: the backup standing for it, its VP, and what restoring it
    reads (``images`` in its chain, ``chain_bytes``)."""

    backup_id: uuid.UUID
    database_id: uuid.UUID
    vp_seq: int
    vp_wall_ns: int
    kind: str
    images: int
    chain_bytes: int

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description (``lamina list --points --json``)."""
        return {"id": str(self.backup_id), "database_id": str(self.database_id),
                "vp_seq": self.vp_seq, "vp_time_ns": self.vp_wall_ns,
                "vp_time": iso_ns(self.vp_wall_ns), "kind": self.kind,
                "images": self.images, "chain_size": self.chain_bytes}


def _points(entries: list[BackupEntry], database: str | None) -> list[Point]:
    out = []
    for e in entries:
        r = e.record
        if r.error is not None or e.chain is None:
            continue
        if database is not None and not str(r.database_id).startswith(database.lower()):
            continue
        out.append(Point(r.backup_id, r.database_id, r.vp_seq, r.vp_wall_ns, r.kind,
                         len(e.chain), e.chain_bytes))
    out.sort(key=lambda p: (p.vp_wall_ns, p.vp_seq, str(p.backup_id)))
    return out


def list_points(repo: Repository, database: str | None = None,
                ) -> tuple[list[Point], str | None]:
    """Every restorable point (of ``database``, an id or prefix, if given), oldest VP
    first, and why the index was rebuilt (None if it was not). Raises LockedError,
    StorageError."""
    entries, rebuilt = repo.list()
    return _points(entries, database), rebuilt


def point_at(repo: Repository, at_ns: int, database: str | None = None) -> Point:
    """The newest point with VP time <= ``at_ns``.

    An older point is never chosen silently: if the newest backup at or before ``at_ns``
    does not restore (damaged, or its chain broken), CorruptionError names it and the
    point that would restore. Raises NotFoundError (nothing that early), UsageError
    (several databases and no ``database``), LockedError, StorageError.
    """
    entries, _ = repo.list()
    if database is not None:
        entries = [e for e in entries
                   if str(e.record.database_id).startswith(database.lower())]
    dbs = {e.record.database_id for e in entries if e.record.error is None}
    if len(dbs) > 1:
        raise UsageError(f"the repository holds backups of {len(dbs)} databases; choose one "
                         "with --database")
    early = [e for e in entries if e.record.vp_wall_ns <= at_ns]
    points = _points(early, None)
    if not early:
        raise NotFoundError(f"no point at or before {iso_ns(at_ns)} in the repository")
    newest = max(early, key=lambda e: (e.record.vp_wall_ns, e.record.vp_seq,
                                       str(e.record.backup_id)))
    if newest.record.error is not None or newest.chain is None:
        why = newest.record.error or newest.problem
        instead = (f"; the newest point that restores is {points[-1].backup_id} "
                   f"({iso_ns(points[-1].vp_wall_ns)}): pass it with --id" if points else "")
        raise CorruptionError(f"the newest backup at or before {iso_ns(at_ns)}, "
                              f"{newest.record.backup_id}, is damaged ({why}){instead}")
    return points[-1]


__all__ = ["Point", "list_points", "point_at"]
