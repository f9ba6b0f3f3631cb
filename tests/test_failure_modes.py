"""Regression tests for failure modes found in review: each reproduces the original bug.

Concurrent creation, orphan cleanup of unreadable tables, interrupted creation, I/O errors
after a commit's meta write began (btree and archive), torn reads of the published meta,
the in-process slot-reclaim race, and sync=False followed by sync=True.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import lamina
from lamina.core import fileio
from lamina.core.lockfile import LockFile
from lamina.errors import StorageError, TransactionClosedError, VersionError, storage_error
from support.waiting import wait_for


def _run(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_creation_loses_nothing(tmp_path: Path) -> None:
    """Several processes create the same new database at once and each commits a key: every
    acknowledged commit is there and they all agree on the database id."""
    for trial in range(4):
        path = tmp_path / f"db{trial}"
        kids = [_run("""
            import sys, lamina
            with lamina.open(sys.argv[1]) as db:
                try:
                    db.create_table("t")
                except lamina.errors.AlreadyExistsError:
                    pass
                db.put("t", sys.argv[2].encode(), b"v")
                print(db.identity.db_id, flush=True)
        """, str(path), f"k{i}") for i in range(4)]
        ids = set()
        for kid in kids:
            out, err = kid.communicate(timeout=60)
            assert kid.returncode == 0, err
            ids.add(out.strip())
        assert len(ids) == 1
        with lamina.open(path, create=False) as db:
            with db.read() as txn:
                assert sorted(txn.table("t").items()) == [(b"k%d" % i, b"v") for i in range(4)]
            assert str(db.identity.db_id) in ids


@pytest.mark.unchecked_db("rewrites logs.ARM with a newer format version")
def test_orphan_cleanup_never_deletes_a_catalogued_table(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("logs", engine="archive")
        db.append_many("logs", [b"row"] * 10)
    arm = path / "logs.ARM"
    raw = bytearray(arm.read_bytes())
    struct.pack_into("<I", raw, 8, 99)  # as if written by a newer build
    arm.write_bytes(bytes(raw))
    with lamina.open(path) as db:  # a writable open runs the orphan cleanup
        assert (path / "logs.ARM").exists() and (path / "logs.ARZ").exists()
        with pytest.raises(VersionError):
            db.archive("logs")
    (path / "ghost.ARZ").write_bytes(b"junk")  # no catalog entry: an orphan
    with lamina.open(path):
        assert not (path / "ghost.ARZ").exists()


def test_creation_killed_with_a_temporary_data_file_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "LOCK").write_bytes(b"")
    (path / "data.lamina.tmp").write_bytes(b"half a file")
    with lamina.open(path) as db:
        db.create_table("t")


def _failing_nth(real, n: int, calls: list[int]):
    def fail(fd: int, p: object = "") -> None:
        calls.append(1)
        if len(calls) == n:
            raise storage_error(OSError(errno.EIO, "Input/output error"), "sync", p)
        real(fd, p)
    return fail


def test_btree_meta_sync_failure_is_undone(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on the meta's fsync: the commit fails, and neither this process nor a reopen ever
    sees it; the next commit works and the file is sound."""
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("t")
        db.put("t", b"k", b"original")
        calls: list[int] = []
        # A commit syncs twice: its pages, then its meta. Fail the second one.
        monkeypatch.setattr(fileio, "fdatasync", _failing_nth(fileio.fdatasync, 2, calls))
        with pytest.raises(StorageError):
            db.put("t", b"k", b"FAILED")
        monkeypatch.undo()
        assert db.get("t", b"k") == b"original"
    with lamina.open(path, create=False) as db:  # reopen at once: the meta slots on disk
        assert db.get("t", b"k") == b"original"
        assert db.check().ok
        db.put("t", b"k2", b"next")
    with lamina.open(path, create=False) as db:
        assert db.get("t", b"k") == b"original" and db.get("t", b"k2") == b"next"


def test_archive_meta_sync_failure_closes_the_appender(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on the .ARM fsync: the outcome is unknown, so the appender refuses to go on
    (it must never publish the same row ids twice); a new writer sees a consistent table."""
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("t", engine="archive")
        db.append_many("t", [b"committed"] * 3)
        real = fileio.fsync

        def fail(fd: int, p: object = "") -> None:
            if str(p).endswith(".ARM"):
                raise storage_error(OSError(errno.EIO, "Input/output error"), "sync", p)
            real(fd, p)

        table = db.archive("t")
        writer = table.writer()
        writer.append_many([b"A", b"B"])
        monkeypatch.setattr(fileio, "fsync", fail)
        with pytest.raises(StorageError, match="unknown"):
            writer.commit()
        monkeypatch.undo()
        with pytest.raises(TransactionClosedError):
            writer.append(b"C")
        ids = table.append_many([b"next"])
        rows = [row for _id, row in table.scan()]
        assert rows[-1] == b"next" and ids == [len(rows)]
        assert rows[:3] == [b"committed"] * 3


def test_published_meta_is_never_read_torn(tmp_path: Path) -> None:
    """A process republishes two records of equal length as fast as it can (yielding the CPU
    between pairs: a real writer publishes once per commit); every read in this process sees
    one or the other, never a mix (the seqlock, whose counter is one aligned 8-byte word)."""
    a, b = b"A" * 168, b"B" * 168
    lf = LockFile.open(tmp_path, init=lambda lf: lf.publish_btree_meta(a))
    try:
        stop = tmp_path / "stop"
        writer = _run(f"""
            import os
            from lamina.core.lockfile import LockFile
            lf = LockFile.open({str(tmp_path)!r}, init=lambda lf: None)
            print("publishing", flush=True)
            while not os.path.exists({str(stop)!r}):
                for _ in range(1000):
                    lf.publish_btree_meta({a!r}); lf.publish_btree_meta({b!r})
                    os.sched_yield()  # a seqlock starves readers of a writer that never pauses
            print("done", flush=True)
        """)
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "publishing", writer.communicate()
        # Read while it publishes: a fixed number of reads, and until both records were
        # seen (counted, not timed: on a busy machine the writer may start late).
        seen = set()
        reads = 0
        deadline = time.monotonic() + 120  # a hang guard only
        try:
            while reads < 1_000_000 or len(seen) < 2:
                assert writer.poll() is None, writer.communicate()
                assert time.monotonic() < deadline, seen
                for _ in range(1000):
                    seen.add(lf.btree_meta())
                reads += 1000
        finally:
            stop.touch()
            out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0 and out.strip() == "done", err
        assert seen <= {a, b} and seen == {a, b}
    finally:
        lf.close()


def test_reclaiming_dead_slots_never_wipes_a_live_one(tmp_path: Path) -> None:
    """Threads of one process claim slots while another thread reclaims dead processes'
    slots: no live pin is ever wiped (the reclaim holds the in-process slot lock)."""
    lf = LockFile.open(tmp_path, init=lambda lf: None)
    try:
        dead = _run(f"""
            from lamina.core.lockfile import LockFile
            import os, signal
            lf = LockFile.open({str(tmp_path)!r}, init=lambda lf: None)
            slots = [lf.acquire_slot() for _ in range(120)]
            for s in slots:
                s.set(7)
            print("pinned", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        dead.wait(timeout=60)
        assert dead.returncode == -signal.SIGKILL
        wiped: list[int] = []
        stop = threading.Event()
        rounds = [0, 0, 0, 0]  # per thread: claims (three claimers), reclaims (the last)

        def claimer(me: int) -> None:
            while not stop.is_set():
                slot = lf.acquire_slot()
                slot.set(99)
                os.sched_yield()  # let the reclaimer run between set and check
                if lf._read_slot(slot.index)[1] != 99:
                    wiped.append(slot.index)
                slot.release()
                rounds[me] += 1

        def reclaimer() -> None:
            while not stop.is_set():
                lf.live_slots()
                rounds[3] += 1

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=reclaimer))
        for t in threads:
            t.start()
        # Run for a number of rounds of every thread, not for a time: a busy machine only
        # makes it take longer (120 s is a hang guard).
        try:
            wait_for(lambda: min(rounds) >= 300, "300 rounds of every thread")
        finally:
            stop.set()
        for t in threads:
            t.join(30)
        assert wiped == [] and min(rounds) >= 300, rounds
        assert all(txnid != 7 for _i, _p, txnid, _k in lf.live_slots())
    finally:
        lf.close()


def test_a_sync_writer_after_an_unsynced_commit_syncs_first(tmp_path: Path) -> None:
    """sync=False leaves the last meta unsynced; a sync=True writer may reuse the pages of
    the snapshot before it, so it must make that meta durable before writing anything."""
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("t")
    fast = lamina.open(path, sync=False)
    safe = lamina.open(path)
    try:
        fast.put("t", b"k", b"v")
        assert safe.lockfile.btree_meta_unsynced()
        before = fileio.COUNTERS["fdatasync"]
        txn = safe.write()
        assert fileio.COUNTERS["fdatasync"] == before + 1  # before any page is written
        txn.abort()
        assert not safe.lockfile.btree_meta_unsynced()
        safe.put("t", b"k2", b"v")
        assert not safe.lockfile.btree_meta_unsynced()
    finally:
        fast.close()
        safe.close()
    assert os.path.exists(path / "data.lamina")
