"""The default driver's table locks, with real writer processes: a writer of a locked table
waits and completes once its table is sent; writers of other tables go on; a cancelled
backup releases every lock; a lock that cannot be taken in time is a clear LockedError with
nothing held afterwards."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from drivers_helpers import make_db, snapshot_of, wait_line, writer_proc

import lamina
from lamina import online
from lamina.core.table_locks import probe_free
from lamina.errors import CancelledError, LockedError
from support import cli

#: Lock timeout of the writers that must wait for a locked table: longer than the test.
WRITER_WAIT = 300


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    make_db(path, rows=500)
    with lamina.open(path) as db:
        db.create_table("other")
        db.create_table("log2", "archive")
    return path


def _finished_within(proc: Any, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except Exception:
        return False
    return True


def test_writer_of_a_locked_table_waits_others_do_not(tmp_path: Path) -> None:
    path = _db(tmp_path)
    paused = threading.Event()
    go = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if not paused.is_set():
            paused.set()  # first chunk of the first table: every table is still locked
            go.wait(300)  # a hang guard only: the test sets it

    errors: list[BaseException] = []
    with lamina.open(path, create=False) as db:
        def run() -> None:
            try:
                # Small buffers: the first one is only part of "log", still locked.
                online.backup(db, tmp_path / "img", tables=["log", "t1", "t2"],
                              driver="default", progress=progress, lock_timeout=10,
                              buf_size=1024)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        assert paused.wait(120)
        ids = {t.name: t.table_id for t in db.tables()}
        # A btree writer of a table outside the backup is not blocked: with a lock timeout
        # of 0 any wait would be a LockedError (not a guess at how long it may take).
        other = writer_proc(path, """
            with db.write(timeout=0) as txn:
                txn.table("other").put(b"k", b"v")
        """)
        assert _finished_within(other, 120), "writer of another btree table hangs"
        assert other.returncode == 0, "writer of another btree table was blocked"
        # A writer of a locked table waits (with a lock timeout far longer than the test
        # can take, so a slow machine cannot turn its wait into a LockedError) ...
        blocked = writer_proc(path, """
            with db.write(timeout=WAIT) as txn:
                txn.table("t1").put(b"new", b"v")
        """.replace("WAIT", str(WRITER_WAIT)))
        wait_line(blocked, "started")
        archived = writer_proc(path, """
            with db.archive("log").writer(timeout=WAIT) as w:
                w.backup_lock_timeout = WAIT
                w.append(b"late row")
        """.replace("WAIT", str(WRITER_WAIT)))
        wait_line(archived, "started")
        # ... while an archive writer of another table goes on meanwhile.
        log2 = writer_proc(path, """
            with db.archive("log2").writer(timeout=0) as w:
                w.backup_lock_timeout = 0
                w.append(b"row")
        """)
        assert _finished_within(log2, 120), "writer of another archive table hangs"
        assert log2.returncode == 0, "writer of another archive table was blocked"
        assert not _finished_within(blocked, 1.0), "writer of a locked table did not wait"
        assert archived.poll() is None, "archive writer of a locked table did not wait"
        assert not probe_free(db.lockfile, ids["t1"])
        go.set()
        thread.join(120)
        assert not errors, errors
        # Released: both waiting writers complete.
        assert _finished_within(blocked, 120) and blocked.returncode == 0
        assert _finished_within(archived, 120) and archived.returncode == 0
        for name in ("log", "t1", "t2"):
            assert probe_free(db.lockfile, ids[name])
    # The image holds neither waiting writer's change: they committed after the VP.
    dest = tmp_path / "restored"
    online.restore(tmp_path / "img", dest)
    got = snapshot_of(dest)
    assert (b"new", b"v") not in got["t1"]  # type: ignore[operator]
    assert len(got["log"]) == 500  # type: ignore[arg-type]


def test_cancelled_default_backup_releases_every_lock(tmp_path: Path) -> None:
    path = _db(tmp_path)
    cancel = threading.Event()

    def progress(done: int, total: int | None) -> None:
        cancel.set()  # while the first table is being sent: every lock is held

    with lamina.open(path, create=False) as db:
        ids = {t.name: t.table_id for t in db.tables()}
        with pytest.raises(CancelledError):
            db.backup(tmp_path / "img", driver="default", progress=progress, cancel=cancel)
        for name, table_id in ids.items():
            assert probe_free(db.lockfile, table_id), name
        assert not (tmp_path / "img").exists()
    # No lock wait at all: table lock timeouts of 0 fail at once on a table still locked.
    w = writer_proc(path, """
        with db.write(timeout=0) as txn:
            txn.table("t2").put(b"x", b"y")
        with db.archive("log").writer(timeout=0) as a:
            a.backup_lock_timeout = 0
            a.append(b"z")
    """)
    assert _finished_within(w, 60), "writer did not finish"
    assert w.returncode == 0, w.stderr.read() if w.stderr else ""


def test_lock_not_obtained_in_time_is_locked_error_and_holds_nothing(tmp_path: Path) -> None:
    path = _db(tmp_path)
    release = tmp_path / "release"
    holder = writer_proc(path, f"""
        import pathlib
        release = pathlib.Path({str(release)!r})
        with db.write() as txn:
            txn.table("t2").put(b"held", b"1")
            print("holding", flush=True)
            while not release.exists():  # holds t2 until the test lets it commit
                time.sleep(0.01)
    """)
    try:
        wait_line(holder, "holding")
        with lamina.open(path, create=False) as db:
            ids = {t.name: t.table_id for t in db.tables()}
            # The holder keeps t2 until released: the backup gives up after the lock
            # timeout it was given (named in the error; the default is 30 s).
            with pytest.raises(LockedError, match=r"'t2' within 0\.5s"):
                db.backup(tmp_path / "img", driver="default", lock_timeout=0.5)
            assert holder.poll() is None  # still holding: the backup did not outwait it
            for name in ("t1", "log"):
                assert probe_free(db.lockfile, ids[name]), name
            assert not (tmp_path / "img").exists()
            # The CLI: one line, exit code 8.
            proc = cli.run("backup", str(path), str(tmp_path / "img2"), "--driver", "default",
                           "--table-lock-timeout", "0.3", "--no-progress")
            assert proc.returncode == 8, proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1 and "t2" in proc.stderr
            assert "within 0.3s" in proc.stderr
            # The holder commits normally; other tables stay writable.
            release.touch()
            with db.write(timeout=60) as txn:  # the btree writer lock: after the holder's
                txn.table("t1").put(b"free", b"1")
            entries = online.BackupHistory(db.path, db.lockfile).entries()
            assert [e.state for e in entries][-2:] == ["error", "error"]
    finally:
        release.touch()
    assert _finished_within(holder, 60) and holder.returncode == 0
