"""Consistency under load: real processes, both engines, every image proven exact at its VP.

A writer process runs the deterministic workload (btree puts/deletes touching two tables
atomically, archive appends) and logs every commit's seq. Other processes take backups with
the ``lamina`` command at random moments. Every image is then restored, and the restored
database must hold exactly the workload's state after the image's VP commit seq — no commit
after it, none before it missing — and pass the checker.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lamina
from lamina import workload
from support import cli
from support.workload_log import stop_workload, wait_for_workload


def test_backups_under_load_restore_to_exactly_the_vp_state(tmp_path: Path) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)  # created before the VPs, so every image has them
    writer = cli.start("workload", str(db_path), "--seconds", "600", "--seed", "7",
                       "--log", str(log))
    rng = random.Random(1234)
    images: list[tuple[Path, int]] = []
    try:
        wait_for_workload(writer, log, commits=5)
        for i in range(5):
            # A random moment in the workload's stream: 1..40 of its commits after the
            # previous VP (so every VP differs from the one before).
            wait_for_workload(writer, log, seq=(images[-1][1] if images else 0)
                               + rng.randint(1, 40))
            image = tmp_path / f"img{i}.lamina"
            proc = cli.run("backup", str(db_path), str(image), "--json", "--no-progress")
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
            images.append((image, summary["vp_commit_seq"]))
            assert summary["blocker_held_ms"] < 100
        # The writer goes on after the last VP (and makes more than 20 commits in all).
        wait_for_workload(writer, log, commits=21, seq=images[-1][1] + 1)
    finally:
        stop_workload(writer)
    seqs = [seq for _img, seq in images]
    assert seqs == sorted(seqs) and len(set(seqs)) > 1, "backups must land at different VPs"
    commits = workload.WorkloadLog.read(log).commits
    assert len(commits) > 20
    last_seq = commits[-1][1]
    assert any(seq < last_seq for seq in seqs), "the writer kept committing after the VPs"
    for image, seq in images:
        dest = tmp_path / f"restored-{image.stem}"
        proc = cli.run("restore", str(image), "--to", str(dest), "--json", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["vp_commit_seq"] == seq
        proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        verified = json.loads(proc.stdout)
        assert verified["at_seq"] == seq
        later = [s for _n, s in commits if s > seq]
        if later:  # the verifier is not a rubber stamp: one commit more must not match
            proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--at",
                           str(later[0]))
            assert proc.returncode == 7, proc.stdout + proc.stderr
        with lamina.open(dest, create=False) as restored:
            assert restored.check().ok
            stat = restored.stat()
            assert stat["restored_from"]["vp_seq"] == seq
            # The next commit continues after the VP's seq.
            assert restored.put("wl_kv", b"after-restore", b"x") > seq
    with lamina.open(db_path, create=False) as db:
        assert db.lockfile.live_slots() == []  # no backup left a pin behind
