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
import subprocess
import sys
import time
from pathlib import Path

import lamina
from lamina import workload

LAMINA = [sys.executable, "-m", "lamina.cli"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=timeout)


def test_backups_under_load_restore_to_exactly_the_vp_state(tmp_path: Path) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)  # created before the VPs, so every image has them
    writer = subprocess.Popen([*LAMINA, "workload", str(db_path), "--seconds", "8",
                               "--seed", "7", "--log", str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(1234)
    images: list[tuple[Path, int]] = []
    try:
        time.sleep(0.5)
        for i in range(5):
            time.sleep(rng.uniform(0.1, 0.9))
            image = tmp_path / f"img{i}.lamina"
            proc = _cli("backup", str(db_path), str(image), "--json", "--no-progress")
            assert proc.returncode == 0, proc.stderr
            summary = json.loads(proc.stdout)
            images.append((image, summary["vp_commit_seq"]))
            assert summary["blocker_held_ms"] < 100
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    seqs = [seq for _img, seq in images]
    assert seqs == sorted(seqs) and len(set(seqs)) > 1, "backups must land at different VPs"
    commits = workload.WorkloadLog.read(log).commits
    assert len(commits) > 20
    last_seq = commits[-1][1]
    assert any(seq < last_seq for seq in seqs), "the writer kept committing after the VPs"
    for image, seq in images:
        dest = tmp_path / f"restored-{image.stem}"
        proc = _cli("restore", str(image), "--to", str(dest), "--json", "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["vp_commit_seq"] == seq
        proc = _cli("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        verified = json.loads(proc.stdout)
        assert verified["at_seq"] == seq
        later = [s for _n, s in commits if s > seq]
        if later:  # the verifier is not a rubber stamp: one commit more must not match
            proc = _cli("workload", "verify", str(dest), "--log", str(log), "--at",
                        str(later[0]))
            assert proc.returncode == 7, proc.stdout + proc.stderr
        with lamina.open(dest, create=False) as restored:
            assert restored.check().ok
            stat = restored.stat()
            assert stat["restored_from"]["vp_seq"] == seq
            # The next commit continues after the VP's seq.
            assert restored.put("wl_kv", b"after-restore", b"x") > seq
    with lamina.open(db_path, create=False) as db:
        assert db.check().ok  # the source is untouched and sound
        assert db.lockfile.live_slots() == []  # no backup left a pin behind
