"""Concurrency, on a local repository and on S3 alike: backup and prune in two processes
at once, lock timeouts (exit 8), 8 processes racing for one repository (exactly one at a
time), and a lease whose holder was killed, or that expired, never blocks anyone."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lamina.errors import LockedError
from lamina.repository import KeepPolicy, Repository
from lamina.repository.lease import LeaseInfo
from lamina.repository.lock import EXCLUSIVE_KEY, RepositoryLock
from lamina.repository.repository import open_storage
from support import cli

from .helpers import make_db

HOLD = """
import sys
from lamina.repository.lock import RepositoryLock
from lamina.repository.repository import open_storage
locks = RepositoryLock(open_storage(sys.argv[1]), sys.argv[1], timeout=10)
with locks.repository(exclusive=sys.argv[2] == "exclusive", operation="test holder"):
    print("held", flush=True)
    sys.stdin.readline()  # held until the test writes a line or closes our stdin
"""

#: A racer: ROUNDS times, take the repository lock exclusively, log "enter", say "held",
#: wait for the test's "go", log "exit", let go.
RACER = """
import os, sys
from lamina.repository.lock import RepositoryLock
from lamina.repository.repository import open_storage
url, rounds, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
locks = RepositoryLock(open_storage(url), url, timeout=120)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for _ in range(rounds):
    with locks.repository(exclusive=True, operation="racer"):
        os.write(fd, b"enter %d\\n" % os.getpid())
        print("held", flush=True)
        if sys.stdin.readline() != "go\\n":
            sys.exit(3)
        os.write(fd, b"exit %d\\n" % os.getpid())
"""


def _holder(repo: str, mode: str) -> subprocess.Popen[str]:
    """A process holding the repository lock (``mode``) until :func:`_let_go`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, repo, mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _let_go(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def _consistent(repo_url: str) -> list[str]:
    repo = Repository.open(repo_url)
    entries, rebuilt = repo.list()
    assert rebuilt is None, rebuilt  # index and images agree: nobody crashed mid-way
    assert all(e.chain is not None for e in entries)
    assert repo.verify().ok
    return [str(e.record.backup_id) for e in entries]


def test_backup_and_prune_processes_at_once(repo_url: str, tmp_path: Path) -> None:
    db = tmp_path / "db"
    Repository.init(repo_url)
    with make_db(db) as d:
        d.put("t", b"k", b"v")
    assert cli.run("backup", str(db), "--repo", repo_url).returncode == 0
    for _round in range(3):
        backup = cli.start("backup", str(db), "--repo", repo_url)
        prune = cli.start("prune", "--repo", repo_url, "--keep-last", "1")
        b_out, b_err = backup.communicate(timeout=120)
        _p_out, p_err = prune.communicate(timeout=120)
        assert backup.returncode == 0, b_err
        assert prune.returncode == 0, p_err
        listed = _consistent(repo_url)
        new_id = b_out.strip()
        # Either the prune ran first (the new backup is there with the one it kept) or
        # second (only the new backup is left): never a half state.
        assert listed[-1] == new_id and len(listed) in (1, 2)


def test_live_holder_makes_others_wait_then_time_out(repo_url: str, tmp_path: Path) -> None:
    db = tmp_path / "db"
    Repository.init(repo_url)
    with make_db(db):
        pass
    holder = _holder(repo_url, "exclusive")  # as a prune would
    try:
        proc = cli.run("backup", str(db), "--repo", repo_url, "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
        assert "locked by test holder" in proc.stderr, proc.stderr  # names the holder
        assert len(proc.stderr.strip().splitlines()) == 1
        assert "gave up after 0.3s" in proc.stderr  # the timeout it was given (default 60)
        assert holder.poll() is None  # it gave up while the lock was still held
    finally:
        holder.kill()
        holder.wait()
    assert cli.run("backup", str(db), "--repo", repo_url).returncode == 0
    assert len(_consistent(repo_url)) == 1
    # A shared holder (a backup) lets list run but makes prune wait: the waiting prune
    # holds the exclusive lease (visible to all) and proceeds once the holder lets go.
    holder = _holder(repo_url, "shared")
    try:
        assert cli.run("list", "--repo", repo_url, "--lock-timeout", "0").returncode == 0
        proc = cli.run("prune", "--repo", repo_url, "--keep-last", "1",
                       "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
        assert "in use by test holder" in proc.stderr, proc.stderr
        waiter = cli.start("prune", "--repo", repo_url, "--keep-last", "1",
                           "--lock-timeout", "300")
        storage = open_storage(repo_url)
        deadline = time.monotonic() + 120  # a hang guard only
        while not storage.exists(EXCLUSIVE_KEY):
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline, "the prune never took the exclusive lease"
        assert waiter.poll() is None  # it cannot get past the shared holder
        _let_go(holder)
        _out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_does_not_block(repo_url: str, tmp_path: Path) -> None:
    db = tmp_path / "db"
    Repository.init(repo_url)
    with make_db(db):
        pass
    for mode in ("exclusive", "shared"):
        holder = _holder(repo_url, mode)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        # A lock timeout of 0 tries once: its lease is left, but its process is gone.
        proc = cli.run("backup", str(db), "--repo", repo_url, "--lock-timeout", "0")
        assert proc.returncode == 0, proc.stderr
        proc = cli.run("prune", "--repo", repo_url, "--keep-last", "1", "--lock-timeout", "0")
        assert proc.returncode == 0, proc.stderr


def test_an_expired_lease_of_another_host_is_taken_over(repo_url: str) -> None:
    """A lease from a host we cannot ask about its processes blocks until it expires,
    then is taken over; a live one of that host makes a waiter time out naming it."""
    Repository.init(repo_url)
    storage = open_storage(repo_url)
    now = time.time_ns()
    foreign = LeaseInfo("f" * 32, "elsewhere", "boot", 1, None, "prune", now,
                        now + 1_500_000_000)
    assert storage.create_if_absent(EXCLUSIVE_KEY, foreign.encode())
    waiter = RepositoryLock(storage, repo_url, timeout=0.2)
    with pytest.raises(LockedError, match=r"locked by prune \(pid 1 on elsewhere"), \
            waiter.repository(exclusive=False, operation="backup"):
        pass
    started = time.time_ns()
    with RepositoryLock(storage, repo_url, timeout=60).repository(
            exclusive=True, operation="prune") as lease:
        assert time.time_ns() >= foreign.expires_ns  # waited for the expiry, no longer
        held = LeaseInfo.decode(storage.get_bytes(EXCLUSIVE_KEY))
        assert held is not None and held.owner == lease.owner and held.pid == os.getpid()
    assert (time.time_ns() - started) < 30e9
    assert not storage.exists(EXCLUSIVE_KEY)  # released


@pytest.mark.slow
@pytest.mark.parametrize("repo_kind", ["local", "s3"])
def test_eight_processes_race_one_at_a_time_and_survive_a_killed_holder(
        repo_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = str(tmp_path / "repo") if repo_kind == "local" else request.getfixturevalue("s3_url")
    Repository.init(url)
    log = tmp_path / "log"
    rounds, kill_at = 2, 5
    # The killed holder is taken over by its dead pid (same host), not by expiry; the
    # lease is still short (renewed every few seconds), but long enough that a renewal
    # thread starved on a busy machine does not lose a healthy holder's lease.
    env = {**os.environ, "LAMINA_LEASE_TTL": "10"}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, str(rounds), str(log)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env) for _ in range(8)]
    sel = selectors.DefaultSelector()
    for p in procs:
        assert p.stdout is not None
        sel.register(p.stdout, selectors.EVENT_READ, p)
    holds, killed, killed_holds = 0, None, 0
    by_proc: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 300  # a hang guard only
        while sel.get_map():
            assert time.monotonic() < deadline, "a racer waits forever"
            ready = sel.select(timeout=5)
            for key, _ in ready:
                proc: subprocess.Popen[str] = key.data
                line = key.fileobj.readline()  # type: ignore[union-attr]
                if not line:  # ended
                    sel.unregister(key.fileobj)
                    continue
                assert line == "held\n", line
                holds += 1
                by_proc[proc.pid] = by_proc.get(proc.pid, 0) + 1
                # While it holds, nobody else may say "held": look for a while (a
                # racer that finished its rounds only closes its output).
                for other, _ in sel.select(timeout=0.2):
                    if other.data is proc:
                        continue
                    said = other.fileobj.readline()  # type: ignore[union-attr]
                    assert not said, f"two racers held the lock at once: {said!r}"
                    sel.unregister(other.fileobj)
                assert proc.stdin is not None
                if holds == kill_at:
                    proc.send_signal(signal.SIGKILL)  # kill -9 while it holds the lease
                    proc.wait()
                    killed, killed_holds = proc.pid, by_proc[proc.pid]
                else:
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
        for p in procs:
            assert p.wait(timeout=60) == (-signal.SIGKILL if p.pid == killed else 0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert holds == 7 * rounds + killed_holds  # every other racer did all its rounds
    # The log proves it too: enter and exit alternate, by the same process, except after
    # the killed holder's enter.
    lines = log.read_text().split()
    events = list(zip(lines[::2], map(int, lines[1::2]), strict=True))
    inside: int | None = None
    for what, pid in events:
        if what == "enter":
            assert inside is None or inside == killed, events
            inside = pid
        else:
            assert inside == pid, events
            inside = None
    assert sum(1 for what, pid in events if what == "enter" and pid == killed) >= 1


def test_threads_share_one_repository(repo_url: str, tmp_path: Path) -> None:
    """Every acquisition has its own lease, so threads of one process exclude each other
    like processes do."""
    repo = Repository.init(repo_url)
    errors: list[BaseException] = []
    with make_db(tmp_path / "db") as db:
        repo.backup(db)

        def backups() -> None:
            try:
                for _ in range(4):
                    repo.backup(db)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def prunes() -> None:
            try:
                for _ in range(4):
                    repo.prune(KeepPolicy(last=2))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=backups), threading.Thread(target=prunes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors
    listed = _consistent(repo_url)
    assert len(listed) >= 1
