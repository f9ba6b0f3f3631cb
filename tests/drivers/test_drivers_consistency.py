"""Consistency under load for the generic drivers: real processes, both engines.

As tests/online/test_online_consistency.py, but every backup is forced to the snapshot or
the default driver (alternating, and once mixed per table). A ``lamina workload`` writer
process commits btree transactions over two tables and archive appends; other processes
take backups at random moments; every image is restored and proven by ``lamina workload
verify`` to hold exactly the workload's state at its VP commit seq.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import lamina
from lamina import workload
from support import cli
from support.workload_log import stop_workload, wait_for_workload

CHOICES = ["snapshot", "default", "snapshot", "default", "wl_kv=default,snapshot", "default"]


def test_snapshot_and_default_backups_under_load_restore_exactly_the_vp(tmp_path: Path,
                                                                          ) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)
    writer = cli.start("workload", str(db_path), "--seconds", "600", "--seed", "11",
                       "--log", str(log))
    rng = random.Random(99)
    images: list[tuple[Path, int, str]] = []
    try:
        wait_for_workload(writer, log, commits=5)
        for i, choice in enumerate(CHOICES):
            # A random moment in the workload's stream: 1..40 of its commits after the
            # previous VP (so every VP differs from the one before).
            wait_for_workload(writer, log, seq=(images[-1][1] if images else 0)
                               + rng.randint(1, 40))
            image = tmp_path / f"img{i}.lamina"
            proc = cli.run("backup", str(db_path), str(image), "--driver", choice, "--json",
                           "--no-progress")
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
            used = set(summary["drivers"].values())
            if "=" in choice:
                assert summary["drivers"]["wl_kv"] == "default"
                assert summary["drivers"]["wl_idx"] == "snapshot"
            else:
                assert used == {choice}
            assert set(summary["rows"]) == {"wl_kv", "wl_idx", "wl_log"}
            images.append((image, summary["vp_commit_seq"], choice))
        # The writer goes on after the last VP.
        wait_for_workload(writer, log, seq=images[-1][1] + 1)
    finally:
        stop_workload(writer)  # checks the writer never failed (no lock timeout)
    seqs = [seq for _i, seq, _c in images]
    assert seqs == sorted(seqs) and len(set(seqs)) > 1
    commits = workload.WorkloadLog.read(log).commits
    assert any(seq < commits[-1][1] for seq in seqs)
    for image, seq, _choice in images:
        dest = tmp_path / f"restored-{image.stem}"
        proc = cli.run("restore", str(image), "--to", str(dest), "--json", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["vp_commit_seq"] == seq
        proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["at_seq"] == seq
        later = [s for _n, s in commits if s > seq]
        if later:  # one commit more must not match
            proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--at",
                           str(later[0]))
            assert proc.returncode == 7, proc.stdout + proc.stderr
        with lamina.open(dest, create=False) as restored:
            assert restored.check().ok
            assert restored.stat()["restored_from"]["vp_seq"] == seq
            assert restored.put("wl_kv", b"after-restore", b"x") > seq
    with lamina.open(db_path, create=False) as db:
        assert db.lockfile.live_slots() == []
