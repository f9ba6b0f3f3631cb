"""Attacks on continuous replication (issue 14's adversarial review): hand-made backups in
the middle of a replicated chain, two replicators at once, clocks stepping back, crafted
merged layers."""

from __future__ import annotations

from pathlib import Path

from lamina.repository import Repository
from lamina.repository.levels import LevelPolicy
from lamina.repository.replicate import ReplicateOptions, Replicator

from .helpers import S, check_compacted, index_of, prove_every_point, vp_clock, workload_db

T0 = 1_800_000_000 * S
POLICY = LevelPolicy(levels_ns=(10 * S, 60 * S), level_keep_ns=(300 * S, None),
                     fine_window_ns=30 * S, retain_ns=3600 * S, full_every_ns=0,
                     full_fraction=0)


def test_an_at_end_backup_by_hand_does_not_stop_compaction(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for _ in range(5):
            wl.commit(1)
            clock.now_ns += 2 * S
            rep.step()
        wl.commit(1)
        clock.now_ns += 1 * S
        repo.backup(wl.db, vp="end")  # by hand, into the replicated chain
        for _ in range(40):
            wl.commit(1)
            clock.now_ns += 2 * S
            rep.step()  # must not raise forever
        check_compacted(repo, POLICY)
    prove_every_point(repo, wl.log_path, tmp_path / "out", limit=8)
    assert repo.verify().ok
