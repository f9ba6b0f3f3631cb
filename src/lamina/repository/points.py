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
from lamina.repository.damage import check_point, order_key
from lamina.repository.index import Index
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
    """The newest point with VP time <= ``at_ns`` (to the nanosecond).

    An older point is never chosen silently: exactly as ``Repository.resolve`` does for
    ``at=``, a damaged backup at or before the time, or a damaged image that may be a newer
    point, is a CorruptionError naming it and the newest intact point (to pass as
    ``--id``). Raises NotFoundError (nothing that early), UsageError (several databases
    and no ``database``), LockedError, StorageError.
    """
    entries, _ = repo.list()
    index = Index([e.record for e in entries])
    readable = [r for r in index.records.values() if r.error is None]
    if database is not None:
        readable = [r for r in readable if str(r.database_id).startswith(database.lower())]
    dbs = {r.database_id for r in readable}
    if len(dbs) > 1:
        raise UsageError(f"the repository holds backups of {len(dbs)} databases; choose one "
                         "with --database")
    target = max((r for r in readable if r.vp_wall_ns <= at_ns), key=order_key, default=None)
    check_point(index, target, readable, f"newest backup at or before {iso_ns(at_ns)}",
                repo.url)
    if target is None:
        raise NotFoundError(f"no point at or before {iso_ns(at_ns)} in the repository")
    found = [p for p in _points(entries, None) if p.backup_id == target.backup_id]
    if not found:  # pragma: no cover - check_point refuses a target that does not restore
        raise CorruptionError(f"backup {target.backup_id} does not restore")
    return found[0]


__all__ = ["Point", "list_points", "point_at"]
