"""Shared helpers of the replication tests: a workload database with its log, a clock
that the VPs and the replicator share, restoring and proving every point."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import lamina
from lamina import workload
from lamina.database import Database
from lamina.repository import Repository
from lamina.repository.index import Index
from lamina.repository.levels import LevelPolicy, plan_compaction, point_levels, points_of
from lamina.repository.points import list_points
from repository.helpers import vp_clock

S = 10**9
__all__ = ["S", "Workload", "check_compacted", "index_of", "prove_every_point", "vp_clock"]


class Workload:
    """The deterministic workload (btree puts and deletes, archive appends) on ``db``,
    logged to ``log`` so that any restored point can be proven against it."""

    def __init__(self, db: Database, log: Path) -> None:
        self.db = db
        self.log_path = log
        self._log: IO[str] = open(log, "w")  # noqa: SIM115 - closed by close()
        self.steps = 0

    def commit(self, n: int = 1) -> int:
        """Make ``n`` workload commits; returns the database's commit seq."""
        self.steps += workload.run(self.db, steps=n, log=self._log, first_step=self.steps)
        return self.db.lockfile.commit_seq()

    def close(self) -> None:
        """Close the log."""
        self._log.close()


@contextlib.contextmanager
def workload_db(tmp_path: Path) -> Iterator[Workload]:
    """A new database ``db`` with the workload's tables and a log ``wl.log``."""
    with lamina.open(tmp_path / "db") as db:
        wl = Workload(db, tmp_path / "wl.log")
        try:
            wl.commit(1)
            yield wl
        finally:
            wl.close()


def prove_every_point(repo: Repository, log: Path, out: Path, *,
                      limit: int | None = None) -> int:
    """Restore every listed point (or every ``len // limit``-th, the newest included) and
    prove it holds exactly the workload's state at its VP; returns the points proven."""
    points, _ = list_points(repo)
    assert points, "no point to prove"
    times = [(p.vp_wall_ns, p.vp_seq) for p in points]
    assert times == sorted(times) and len({p.vp_seq for p in points}) == len(points)
    out.mkdir(parents=True, exist_ok=True)
    chosen = points if limit is None or len(points) <= limit \
        else [*points[::max(1, len(points) // limit)], points[-1]]
    for i, p in enumerate(chosen):
        dest = out / f"point-{i}-{p.vp_seq}"
        result = repo.restore(dest, id=str(p.backup_id))
        assert result.summary.vp.commit_seq == p.vp_seq
        with lamina.open(dest, create=False, readonly=True) as restored:
            summary = workload.verify(restored, log, p.vp_seq)
        assert summary["at_seq"] == p.vp_seq
    return len(chosen)


def index_of(repo: Repository) -> Index:
    """The repository's index, read through its public ``list``."""
    entries, _ = repo.list()
    return Index([e.record for e in entries])


def check_compacted(repo: Repository, policy: LevelPolicy) -> dict[int, int]:
    """Assert the repository is compacted (nothing left to plan) and every point's chain is
    within its level's bound (``k - i + 2`` images for level i >= 1, ``m + k + 2`` for
    level 0 with ``m`` points before it in its finest bucket); returns the longest chain
    per level."""
    index = index_of(repo)
    assert plan_compaction(index, lambda r: True, policy) == []
    points = points_of(index, lambda r: True)
    levels = point_levels(points, policy)
    fine = policy.levels_ns[0]
    longest: dict[int, int] = {}
    for i, r in enumerate(points):
        level = levels[r.backup_id]
        chain = len(index.chain(r))
        before = sum(1 for p in points[:i] if p.vp_wall_ns // fine == r.vp_wall_ns // fine)
        bound = 1 if not r.is_layer else policy.chain_bound(level, before)
        assert chain <= bound, (r.backup_id, level, chain, bound)
        longest[level] = max(longest.get(level, 0), chain)
    return longest
