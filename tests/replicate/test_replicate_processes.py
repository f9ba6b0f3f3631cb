"""``lamina replicate`` as a real process beside a real writer (``lamina workload``, both
engines), on a local and on an S3 repository: killed with SIGKILL at seeded random moments
(after some commits; right after a point is published, when that step's compaction
starts; right after a compaction merge, when the next merge of the plan or the step's end
runs; inside the 1st-3rd merge, by the failpoints ``repository.merge_staged`` (merged
layer proven, not published) and ``repository.merge_published`` (published, index not
saved)) and started again, then stopped with SIGTERM (exit 0). Restores run beside the
replicator while it compacts. Every listed point restores to exactly the writer's state at
its VP, points are in time order, no point reported before a kill is lost, no VP is
replicated twice, the repository verifies and ends compacted (every chain within its
level's bound). Moments are counted in events, points and commits (the replicator's JSON
lines, the status file, the workload log), never in seconds."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina import workload
from lamina.repository import Repository
from lamina.repository.levels import LevelPolicy
from lamina.repository.points import list_points
from support import cli
from support.waiting import wait_for
from support.workload_log import logged, wait_for_workload

from .helpers import S, check_compacted, prove_every_point

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


#: The levels of the replicators below (``--levels 1s,5s``).
POLICY = LevelPolicy(levels_ns=(S, 5 * S), level_keep_ns=(None, None))


def _replicator(db: Path, repo: str, status: Path,
                failpoint: str | None = None) -> subprocess.Popen[str]:
    """A replicator process (``failpoint``: it kills itself there, see core.failpoints)."""
    env = None if failpoint is None else {**os.environ, "LAMINA_FAILPOINT": failpoint}
    return cli.start("replicate", str(db), "--repo", repo, "--interval", "100ms",
                     "--levels", "1s,5s", "--fine-window", "1d", "--retain", "7d",
                     "--full-every", "4s", "--compact-every", "1s",
                     "--status-file", str(status), "--json", env=env)


class Events:
    """The JSON event lines of a running replicator, read as they come (a thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def count(self, *kinds: str) -> int:
        """Whole event lines of these kinds so far."""
        return sum(1 for line in list(self.lines)
                   if line.endswith("\n") and json.loads(line)["event"] in kinds)

    def wait(self, n: int, *kinds: str) -> None:
        """Wait until ``n`` events of ``kinds`` were printed (polled 1 ms apart at first:
        the moment matters)."""
        wait_for(lambda: self.count(*kinds) >= n, f"{n} {'/'.join(kinds)} event(s)",
                 proc=self.proc, guard=GUARD, max_interval=0.005)

    def finish(self) -> str:
        """Every line, once the process ended (its stdout closed)."""
        self._thread.join(timeout=GUARD)
        assert not self._thread.is_alive()
        return "".join(self.lines)


def _reported(out: str, kinds: tuple[str, ...] = ("point", "full")) -> set[str]:
    ids = set()
    for line in out.splitlines(keepends=True):
        if line.endswith("\n"):  # a kill may cut the last line
            event = json.loads(line)  # every whole line is one JSON object
            if event["event"] in kinds:
                ids.add(event["id"])
    return ids


def _restore_newest(repo: Repository, out: Path, restored: list[tuple[Path, int]]) -> None:
    """Restore the newest listed point now (the replicator may be compacting): the restore
    proves its root hash and the checker; the writer's state is checked at the end."""
    points, _ = list_points(repo)
    if points:
        out.mkdir(exist_ok=True)
        dest = out / f"beside-{len(restored)}"
        result = repo.restore(dest, id=str(points[-1].backup_id))
        restored.append((dest, result.summary.vp.commit_seq))


@pytest.mark.parametrize("seed", [14, 41])
def test_kill_9_at_random_moments_and_restart(repo_url: str, tmp_path: Path,
                                              seed: int) -> None:
    rng = random.Random(seed)
    db, log, status = tmp_path / "db", tmp_path / "wl.log", tmp_path / "status.json"
    cli.run_ok("repo", "init", repo_url)
    repository = Repository.open(repo_url)
    writer = cli.start("workload", str(db), "--seconds", "600", "--rate", "300",
                       "--log", str(log))
    reported: set[str] = set()
    restored: list[tuple[Path, int]] = []
    compacted = 0
    try:
        wait_for_workload(writer, log, commits=5)
        moments = ["commits", "point", "compact", "merge_staged", "merge_published"]
        rng.shuffle(moments)
        for moment in moments:
            if moment.startswith("merge_"):  # dies inside a compaction merge, by itself
                rep = _replicator(db, repo_url, status,
                                  f"repository.{moment}:{rng.randint(1, 3)}")
                events = Events(rep)
                rep.wait(timeout=GUARD)
                out = events.finish()
                _out, err = rep.communicate(timeout=GUARD)
                assert rep.returncode == -signal.SIGKILL, err
                reported |= _reported(out)
                compacted += len(_reported(out, ("compact",)))
                continue
            rep = _replicator(db, repo_url, status)
            events = Events(rep)
            events.wait(rng.randint(1, 4), "point", "full")
            if moment == "commits":
                commits, _ = logged(log)
                wait_for_workload(writer, log, commits=commits + rng.randint(0, 60))
            elif moment == "point":  # the step's compaction starts right after this line
                events.wait(events.count("point") + 1, "point")
            else:  # the next merge of the plan, or the end of the step, runs now
                events.wait(events.count("compact") + rng.randint(1, 2), "compact")
            _restore_newest(repository, tmp_path / "out", restored)
            rep.kill()
            rep.wait(timeout=GUARD)
            out = events.finish()
            rep.communicate(timeout=GUARD)
            assert rep.returncode == -signal.SIGKILL
            reported |= _reported(out)
            compacted += len(_reported(out, ("compact",)))
        rep = _replicator(db, repo_url, status)
        events = Events(rep)
        wait_for_status(rep, status, lambda s: s["points"] >= 1)
        writer.send_signal(signal.SIGTERM)  # stops after the commit under way, logged
        _out, err = writer.communicate(timeout=GUARD)
        assert writer.returncode == 10, err
        _, last_seq = logged(log)
        final = wait_for_status(rep, status, lambda s: s["commit_seq"] >= last_seq
                                and s["last_vp_seq"] == s["commit_seq"])
        rep.send_signal(signal.SIGTERM)
        rep.wait(timeout=GUARD)
        out = events.finish()
        _out, err = rep.communicate(timeout=GUARD)
        assert rep.returncode == 0, err
        reported |= _reported(out)
        compacted += len(_reported(out, ("compact",)))
    finally:
        for proc in (writer, rep):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    stopped = _status(status)
    assert stopped is not None and stopped["state"] == "stopped"
    assert stopped["last_vp_seq"] == final["commit_seq"]
    verified = cli.run("verify", "--repo", repo_url, "--json")
    assert verified.returncode == 0, verified.stderr
    listed = json.loads(cli.run_ok("list", "--repo", repo_url, "--points",
                                   "--json").stdout)["points"]
    ids = {p["id"] for p in listed}
    assert reported <= ids, reported - ids  # no point reported before a kill was lost
    seqs = [p["vp_seq"] for p in listed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # no VP twice
    assert [p["vp_time_ns"] for p in listed] == sorted(p["vp_time_ns"] for p in listed)
    assert compacted >= 2 and len(listed) >= 5
    check_compacted(repository, POLICY)  # what any kill left was compacted after
    assert prove_every_point(repository, log, tmp_path / "proved") == len(listed)
    assert len(restored) == 3
    for dest, seq in restored:  # restored while the replicator compacted: exact too
        with lamina.open(dest, create=False, readonly=True) as again:
            assert workload.verify(again, log, seq)["at_seq"] == seq


def test_sigint_ends_cleanly_with_exit_0(tmp_path: Path) -> None:
    db, repo, status = tmp_path / "db", tmp_path / "repo", tmp_path / "s.json"
    cli.run_ok("repo", "init", str(repo))
    cli.run_ok("workload", str(db), "--steps", "20")
    rep = _replicator(db, str(repo), status)
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
    for args in (("--interval", "soon"), ("--levels", "1h,1m"), ("--levels", "10s,15s"),
                 ("--retain", "-1d"),
                 ("--metrics-addr", "nowhere"), ("--full-fraction", "-1")):
        proc = cli.run("replicate", str(tmp_path / "db"), "--repo", str(repo), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("lamina: ") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "db").exists()
    proc = cli.run("replicate", str(tmp_path / "nodb"), "--repo", str(repo))
    assert proc.returncode == 3, proc.stderr
