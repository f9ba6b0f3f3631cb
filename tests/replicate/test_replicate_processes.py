"""``lamina replicate`` as a real process beside a real writer (``lamina workload``, both
engines): killed with SIGKILL at seeded random moments and started again, then stopped
with SIGTERM (exit 0). Every listed point restores to exactly the writer's state at its VP,
points are in time order, no point reported before a kill is lost, no VP is replicated
twice, and the repository verifies. Moments are counted in points and commits (the status
file and the workload log), never in seconds."""

from __future__ import annotations

import json
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lamina.repository import Repository
from support import cli
from support.waiting import wait_for
from support.workload_log import logged, wait_for_workload

from .helpers import prove_every_point

#: Hang guard of every wait (a busy machine only makes the waits longer).
GUARD = 120.0


def _status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def wait_for_status(proc: subprocess.Popen[str], path: Path, ok: Any) -> dict[str, Any]:
    """Wait until the status file written by ``proc`` satisfies ``ok`` (a predicate)."""
    def ready() -> dict[str, Any] | None:
        status = _status(path)
        return status if status is not None and status["pid"] == proc.pid and ok(status) \
            else None

    return wait_for(ready, f"the replicator's status file {path.name} to show progress",
                    proc=proc, guard=GUARD)


def _replicator(db: Path, repo: Path, status: Path) -> subprocess.Popen[str]:
    return cli.start("replicate", str(db), "--repo", str(repo), "--interval", "100ms",
                     "--levels", "1s,5s", "--fine-window", "1d", "--retain", "7d",
                     "--full-every", "4s", "--compact-every", "1s",
                     "--status-file", str(status), "--json")


def _reported(out: str) -> set[str]:
    ids = set()
    for line in out.splitlines():
        if line.strip():
            event = json.loads(line)  # every line is one JSON object (a kill may cut one)
            if event["event"] in ("point", "full"):
                ids.add(event["id"])
    return ids


@pytest.mark.parametrize("seed", [14, 41])
def test_kill_9_at_random_moments_and_restart(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db, repo, log, status = (tmp_path / "db", tmp_path / "repo", tmp_path / "wl.log",
                             tmp_path / "status.json")
    cli.run_ok("repo", "init", str(repo))
    writer = cli.start("workload", str(db), "--seconds", "600", "--rate", "300",
                       "--log", str(log))
    reported: set[str] = set()
    try:
        wait_for_workload(writer, log, commits=5)
        for _ in range(4):
            rep = _replicator(db, repo, status)
            points = rng.randint(1, 4)
            wait_for_status(rep, status, lambda s, n=points: s["points"] >= n)
            commits, _ = logged(log)
            wait_for_workload(writer, log, commits=commits + rng.randint(0, 60))
            rep.kill()
            out, _err = rep.communicate(timeout=GUARD)
            assert rep.returncode == -signal.SIGKILL
            lines = out.splitlines()
            reported |= _reported("\n".join(lines[:-1]))  # the last line may be cut
        rep = _replicator(db, repo, status)
        wait_for_status(rep, status, lambda s: s["points"] >= 1)
        writer.send_signal(signal.SIGTERM)  # stops after the commit under way, logged
        _out, err = writer.communicate(timeout=GUARD)
        assert writer.returncode == 10, err
        _, last_seq = logged(log)
        final = wait_for_status(rep, status, lambda s: s["commit_seq"] >= last_seq
                                and s["last_vp_seq"] == s["commit_seq"])
        rep.send_signal(signal.SIGTERM)
        out, err = rep.communicate(timeout=GUARD)
        assert rep.returncode == 0, err
        reported |= _reported(out)
    finally:
        for proc in (writer, rep):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    stopped = _status(status)
    assert stopped is not None and stopped["state"] == "stopped"
    assert stopped["last_vp_seq"] == final["commit_seq"]
    verified = cli.run("verify", "--repo", str(repo), "--json")
    assert verified.returncode == 0, verified.stderr
    listed = json.loads(cli.run_ok("list", "--repo", str(repo), "--points",
                                   "--json").stdout)["points"]
    ids = {p["id"] for p in listed}
    assert reported <= ids, reported - ids  # no point reported before a kill was lost
    seqs = [p["vp_seq"] for p in listed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # no VP twice
    assert [p["vp_time_ns"] for p in listed] == sorted(p["vp_time_ns"] for p in listed)
    assert max(p["images"] for p in listed) <= 4
    assert len(listed) >= 5
    assert prove_every_point(Repository.open(repo), log, tmp_path / "out") == len(listed)


def test_sigint_ends_cleanly_with_exit_0(tmp_path: Path) -> None:
    db, repo, status = tmp_path / "db", tmp_path / "repo", tmp_path / "s.json"
    cli.run_ok("repo", "init", str(repo))
    cli.run_ok("workload", str(db), "--steps", "20")
    rep = _replicator(db, repo, status)
    try:
        wait_for_status(rep, status, lambda s: s["points"] >= 1 and s["state"] == "idle")
        rep.send_signal(signal.SIGINT)
        out, err = rep.communicate(timeout=GUARD)
    finally:
        if rep.poll() is None:
            rep.kill()
            rep.communicate()
    assert rep.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "stop"
    assert _status(status)["state"] == "stopped"  # type: ignore[index]
    cli.run_ok("workload", str(db), "--steps", "5")  # the database is free again


def test_bad_arguments_exit_2_before_anything(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    cli.run_ok("repo", "init", str(repo))
    for args in (("--interval", "soon"), ("--levels", "1h,1m"), ("--retain", "-1d"),
                 ("--metrics-addr", "nowhere"), ("--full-fraction", "-1")):
        proc = cli.run("replicate", str(tmp_path / "db"), "--repo", str(repo), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("lamina: ") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "db").exists()
    proc = cli.run("replicate", str(tmp_path / "nodb"), "--repo", str(repo))
    assert proc.returncode == 3, proc.stderr
