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
import subprocess
import time
from pathlib import Path

from drivers_helpers import LAMINA, cli

import lamina
from lamina import workload

CHOICES = ["snapshot", "default", "snapshot", "default", "wl_kv=default,snapshot", "default"]


def test_snapshot_and_default_backups_under_load_restore_exactly_the_vp(tmp_path: Path,
                                                                          ) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)
    writer = subprocess.Popen([*LAMINA, "workload", str(db_path), "--seconds", "7",
                               "--seed", "11", "--log", str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(99)
    images: list[tuple[Path, int, str]] = []
    try:
        time.sleep(0.5)
        for i, choice in enumerate(CHOICES):
            time.sleep(rng.uniform(0.05, 0.6))
            image = tmp_path / f"img{i}.lamina"
            proc = cli("backup", str(db_path), str(image), "--driver", choice, "--json",
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
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err  # the writer never failed (no lock timeout)
    seqs = [seq for _i, seq, _c in images]
    assert seqs == sorted(seqs) and len(set(seqs)) > 1
    commits = workload.WorkloadLog.read(log).commits
    assert any(seq < commits[-1][1] for seq in seqs)
    for image, seq, _choice in images:
        dest = tmp_path / f"restored-{image.stem}"
        proc = cli("restore", str(image), "--to", str(dest), "--json", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["vp_commit_seq"] == seq
        proc = cli("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["at_seq"] == seq
        later = [s for _n, s in commits if s > seq]
        if later:  # one commit more must not match
            proc = cli("workload", "verify", str(dest), "--log", str(log), "--at",
                       str(later[0]))
            assert proc.returncode == 7, proc.stdout + proc.stderr
        with lamina.open(dest, create=False) as restored:
            assert restored.check().ok
            assert restored.stat()["restored_from"]["vp_seq"] == seq
            assert restored.put("wl_kv", b"after-restore", b"x") > seq
    with lamina.open(db_path, create=False) as db:
        assert db.check().ok
        assert db.lockfile.live_slots() == []
