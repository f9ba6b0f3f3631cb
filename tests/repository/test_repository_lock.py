"""Concurrency: backup and prune in two processes at once, lock timeouts (exit 8), and a
lock whose holder was killed never blocks anyone."""

from __future__ import annotations

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

from .helpers import LAMINA, cli, make_db

HOLD = """
import sys, time
from pathlib import Path
from lamina.repository.lock import FileLock
lock = FileLock(Path(sys.argv[1]), "test")
lock.acquire(shared=sys.argv[2] == "shared", timeout=10)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def _holder(repo: Path, mode: str, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD,
                             str(repo / L.LOCKS_DIR / "repository"), mode, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


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
    assert cli("backup", str(db), "--repo", str(repo)).returncode == 0
    for _round in range(3):
        backup = subprocess.Popen([*LAMINA, "backup", str(db), "--repo", str(repo)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        prune = subprocess.Popen([*LAMINA, "prune", "--repo", str(repo), "--keep-last", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    holder = _holder(repo, "exclusive", 3.0)  # as a prune would
    try:
        started = time.monotonic()
        proc = cli("backup", str(db), "--repo", str(repo), "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
        assert "locked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < 10
        proc = cli("backup", str(db), "--repo", str(repo), "--lock-timeout", "30")
        assert proc.returncode == 0, proc.stderr  # waited for the holder to finish
    finally:
        holder.kill()
        holder.wait()
    assert len(_consistent(repo)) == 1
    # A shared holder (a backup) lets list run but makes prune wait.
    holder = _holder(repo, "shared", 30.0)
    try:
        assert cli("list", "--repo", str(repo), "--lock-timeout", "1").returncode == 0
        proc = cli("prune", "--repo", str(repo), "--keep-last", "1", "--lock-timeout", "0.3")
        assert proc.returncode == 8, proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_does_not_block(tmp_path: Path) -> None:
    repo, db = tmp_path / "repo", tmp_path / "db"
    Repository.init(repo)
    with make_db(db):
        pass
    holder = _holder(repo, "exclusive", 600.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    proc = cli("backup", str(db), "--repo", str(repo), "--lock-timeout", "5")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 5
    proc = cli("prune", "--repo", str(repo), "--keep-last", "1", "--lock-timeout", "5")
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
