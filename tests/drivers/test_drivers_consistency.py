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
import signal
import subprocess
import time
from pathlib import Path

import lamina
from lamina import workload
from support import cli

CHOICES = ["snapshot", "default", "snapshot", "default", "wl_kv=default,snapshot", "default"]


def _logged(log: Path) -> tuple[int, int]:
    """(commits, last commit seq) of the complete lines the workload has logged so far."""
    try:
        text = log.read_text()
    except FileNotFoundError:
        return 0, 0
    lines = text.split("\n")[1:-1]  # after the header; a line is whole once its "\n" is
    return len(lines), int(lines[-1].split()[1]) if lines else 0


def _wait_for_workload(writer: subprocess.Popen[str], log: Path, *, commits: int = 1,
                       seq: int = 0) -> None:
    """Wait until the workload logged at least ``commits`` commits, the last with a seq of
    at least ``seq``: moments counted in its commits, not in seconds (a busy machine only
    makes this take longer; 120 s is a hang guard)."""
    deadline = time.monotonic() + 120
    while True:
        done, last = _logged(log)
        if done >= commits and last >= seq:
            return
        assert writer.poll() is None, writer.communicate()
        assert time.monotonic() < deadline, ("the workload made no progress", done, last)
        time.sleep(0.002)


def _stop_workload(writer: subprocess.Popen[str]) -> None:
    """SIGKILL the workload (it runs until stopped: ``--seconds`` is a hang guard), after
    checking it is still running: it never failed (a lock timeout would have ended it)."""
    alive = writer.poll() is None
    writer.kill()
    _out, err = writer.communicate(timeout=120)
    assert alive and writer.returncode == -signal.SIGKILL, (writer.returncode, err)


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
        _wait_for_workload(writer, log, commits=5)
        for i, choice in enumerate(CHOICES):
            # A random moment in the workload's stream: 1..40 of its commits after the
            # previous VP (so every VP differs from the one before).
            _wait_for_workload(writer, log, seq=(images[-1][1] if images else 0)
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
        _wait_for_workload(writer, log, seq=images[-1][1] + 1)
    finally:
        _stop_workload(writer)  # checks the writer never failed (no lock timeout)
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
