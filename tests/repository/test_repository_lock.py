"""Concurrency: backup and prune in two processes at once, lock timeouts (exit 8), and a
lock whose holder was killed never blocks anyone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lamina.errors import LockedError
from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from lamina.repository.lock import FileLock
from support import cli

from .helpers import make_db

HOLD = """
import sys, time
from pathlib import Path
from lamina.repository.lock import FileLock
lock = FileLock(Path(sys.argv[1]), "test")
lock.acquire(shared=sys.argv[2] == "shared", timeout=10)
print("held", flush=True)
sys.stdin.readline()  # held until the test writes a line or closes our stdin
"""


def _holder(repo: Path, mode: str) -> subprocess.Popen[str]:
    """A process holding the repository lock (``mode``) until :func:`_let_go`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD,
                             str(repo / L.LOCKS_DIR / "repository"), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _let_go(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def _has_open(pid: int, path: Path) -> bool:
    """True if process ``pid`` has ``path`` open (FileLock opens it just before it tries
    to lock it, and keeps it open while it waits)."""
    want = os.path.realpath(path)
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = list(fds.iterdir())
    except FileNotFoundError:  # ended
        return False
    for fd in names:
        try:
            if os.readlink(fd) == want:
                return True
        except OSError:  # closed meanwhile
            continue
    return False


def _consistent(repo_path: Path) -> list[str]:
    repo = Repository.open(repo_path)
    entries, rebuilt = repo.list()
    assert rebuilt is None, rebuilt  # index and images agree: nobody crashed mid-way
    assert all(e.chain is not None for e in entries)
    assert repo.verify().ok
    return [str(e.record.backup_id) for e in entries]


def test_backup_and_prune_processes_at_once(tmp_path: Path) -> None:
    repo, db = tmp_path / "repo", tmp_path / "db"
    Repository.init(repo)
    with make_db(db) as d:
        d.put("t", b"k", b"v")
    assert cli.run("backup", str(db), "--repo", str(repo)).returncode == 0
    for _round in range(3):
        backup = cli.start("backup", str(db), "--repo", str(repo))
        prune = cli.start("prune", "--repo", str(repo), "--keep-last", "1")
        b_out, b_err = backup.communicate(timeout=120)
        _p_out, p_err = prune.communicate(timeout=120)
        assert backup.returncode == 0, b_err
        assert prune.returncode == 0, p_err
        listed = _consistent(repo)
        new_id = b_out.strip()
        # Either the prune ran first (the new backup is there with the one it kept) or
        # second (only the new backup is left): never a half state.
        assert listed[-1] == new_id and len(listed) in (1, 2)


def test_live_holder_makes_others_wait_then_time_out(tmp_path: Path) -> None:
    repo, db = tmp_path / "repo", tmp_path / "db"
    Repository.init(repo)
    with make_db(db):
        pass
    holder = _holder(repo, "exclusive")  # as a prune would
    try:
        proc = cli.run("backup", str(db), "--repo", str(repo), "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
        assert "locked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "gave up after 0.3s" in proc.stderr  # the timeout it was given (default 60)
        assert holder.poll() is None  # it gave up while the lock was still held
        # A backup with time to wait: it is waiting for the lock (it has the lock file
        # open) while the holder still holds it, and completes once the holder lets go.
        waiter = cli.start("backup", str(db), "--repo", str(repo), "--lock-timeout", "300")
        lock_path = repo / L.LOCKS_DIR / "repository"
        deadline = time.monotonic() + 120  # a hang guard only
        while not _has_open(waiter.pid, lock_path):
            assert waiter.poll() is None, waiter.communicate()
            assert time.monotonic() < deadline, "the backup never tried the lock"
            time.sleep(0.002)
        assert waiter.poll() is None  # it cannot get past a held exclusive lock
        _let_go(holder)
        _out, err = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, err  # waited for the holder to finish
    finally:
        holder.kill()
        holder.wait()
    assert len(_consistent(repo)) == 1
    # A shared holder (a backup) lets list run but makes prune wait.
    holder = _holder(repo, "shared")
    try:
        assert cli.run("list", "--repo", str(repo), "--lock-timeout", "0").returncode == 0
        proc = cli.run("prune", "--repo", str(repo), "--keep-last", "1", "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    repo, db = tmp_path / "repo", tmp_path / "db"
    Repository.init(repo)
    with make_db(db):
        pass
    holder = _holder(repo, "exclusive")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # A lock timeout of 0 tries once: any leftover of the dead holder would fail it (exit 8).
    proc = cli.run("backup", str(db), "--repo", str(repo), "--lock-timeout", "0")
    assert proc.returncode == 0, proc.stderr
    proc = cli.run("prune", "--repo", str(repo), "--keep-last", "1", "--lock-timeout", "0")
    assert proc.returncode == 0, proc.stderr


def test_threads_share_one_repository(tmp_path: Path) -> None:
    """flock belongs to the open file description, so threads of one process exclude
    each other like processes do."""
    repo = Repository.init(tmp_path / "repo")
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
    listed = _consistent(repo.path)
    assert len(listed) >= 1


def test_file_lock_timeout_in_process(tmp_path: Path) -> None:
    a = FileLock(tmp_path / "l", "thing")
    b = FileLock(tmp_path / "l", "thing")
    a.acquire(shared=False, timeout=0)
    with pytest.raises(LockedError, match="thing is locked"):
        b.acquire(shared=True, timeout=0.05)
    a.release()
    b.acquire(shared=True, timeout=0)
    c = FileLock(tmp_path / "l", "thing")
    c.acquire(shared=True, timeout=0)  # shared with shared
    b.release()
    c.release()
