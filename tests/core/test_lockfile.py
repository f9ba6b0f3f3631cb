"""The LOCK file across real processes: slots, dead-process reclaim, blocker, seq counter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from lamina.core import lockfile_format as F
from lamina.core.lockfile import LockFile
from lamina.errors import LockedError, NotADatabaseError, VersionError
from support.waiting import wait_for


def _seed(seq: int):
    def init(lf: LockFile) -> None:
        lf.set_commit_seq(seq)
        lf.publish_btree_meta(b"meta-%d" % seq)
    return init


def _child(code: str, directory: Path) -> subprocess.Popen[str]:
    """A Python child that opens the lock file and runs ``code`` with ``lf`` bound."""
    prog = textwrap.dedent(f"""
        import sys, time
        from lamina.core.lockfile import LockFile
        lf = LockFile.open({str(directory)!r}, init=lambda lf: lf.set_commit_seq(0))
    """) + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def test_first_opener_initializes_and_second_shares(tmp_path: Path) -> None:
    a = LockFile.open(tmp_path, init=_seed(41))
    try:
        assert a.initialized_here
        assert a.commit_seq() == 41
        assert a.btree_meta() == b"meta-41"
        # Same process: the same instance comes back (one fd per process and file).
        b = LockFile.open(tmp_path, init=_seed(99))
        assert b is a
        b.close()
        child = _child("print(lf.commit_seq(), lf.initialized_here, flush=True)", tmp_path)
        out, _ = child.communicate(timeout=30)
        assert out.split() == ["41", "False"]
    finally:
        a.close()
    # Nobody has it open now: the next opener resets and reseeds.
    c = LockFile.open(tmp_path, init=_seed(7))
    try:
        assert c.initialized_here and c.commit_seq() == 7
    finally:
        c.close()


def test_next_commit_seq_is_unique_across_processes(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        code = """
            out = []
            for _ in range(300):
                with lf.publishing_commit():
                    out.append(lf.next_commit_seq())
            print(" ".join(map(str, out)), flush=True)
        """
        kids = [_child(code, tmp_path) for _ in range(3)]
        mine = []
        for _ in range(300):
            with lf.publishing_commit():
                mine.append(lf.next_commit_seq())
        seqs = list(mine)
        for kid in kids:
            out, _ = kid.communicate(timeout=60)
            got = [int(x) for x in out.split()]
            assert got == sorted(got), "each process sees strictly increasing seqs"
            seqs.extend(got)
        assert sorted(seqs) == list(range(1, 1201))
        assert lf.commit_seq() == 1200
    finally:
        lf.close()


def test_dead_process_slot_is_reclaimed(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(5))
    try:
        child = _child("""
            s = lf.acquire_slot(); s.set(3)
            print("pinned", flush=True)
            time.sleep(60)
        """, tmp_path)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "pinned"
        assert lf.oldest_reader_txnid() == 3  # alive: it counts
        mine = lf.acquire_slot()
        mine.set(9)
        assert lf.oldest_reader_txnid() == 3
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert lf.oldest_reader_txnid() == 9  # the dead pin is gone
        assert [t for _i, _p, t, _k in lf.live_slots()] == [9]
        mine.release()
        assert lf.oldest_reader_txnid() is None
    finally:
        lf.close()


def test_slots_run_out_with_a_clear_error(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        slots = [lf.acquire_slot() for _ in range(F.SLOT_COUNT)]
        with pytest.raises(LockedError, match="reader slots"):
            lf.acquire_slot()
        slots[0].release()
        again = lf.acquire_slot()  # comes from this process's pool
        assert again.index == slots[0].index
    finally:
        lf.close()


def _waits_for_lock(pid: int, path: Path, offset: int) -> bool:
    """True while process ``pid`` is blocked in the kernel waiting for a POSIX record lock
    on byte ``offset`` of ``path``: /proc/locks lists such a waiter as ``-> POSIX ...``."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" not in fields:
                continue
            # N: -> POSIX ADVISORY READ|WRITE PID MAJ:MIN:INODE START END
            kind, _adv, _mode, who, dev_ino, first = fields[fields.index("->") + 1:][:6]
            if (kind == "POSIX" and int(who) == pid and int(dev_ino.rsplit(":", 1)[1]) == ino
                    and int(first) == offset):
                return True
    return False


def test_commit_blocker_excludes_commits_in_other_processes(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        child = _child("""
            sys.stdin.readline()
            print("committing", flush=True)
            with lf.publishing_commit():
                seq = lf.next_commit_seq()
            print(seq, flush=True)
        """, tmp_path)
        assert child.stdin is not None and child.stdout is not None
        with lf.commits_blocked(timeout=5):
            vp = lf.commit_seq()
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "committing"
            # Proof that the child tried to commit while we block: the kernel has it waiting
            # for the commit gate (held exclusively here) - whatever the machine's speed.
            wait_for(lambda: _waits_for_lock(child.pid, tmp_path / F.FILE_NAME,
                                             F.LOCK_COMMIT_GATE),
                     "the child to wait for the commit gate (not commit through it)",
                     proc=child)
            assert lf.commit_seq() == vp  # the child could not commit meanwhile
            assert child.poll() is None
        out, _ = child.communicate(timeout=30)
        assert int(out) == vp + 1  # it committed once we let go, right after the VP
        assert child.returncode == 0
    finally:
        lf.close()


def test_exclusive_blocker_times_out_while_a_commit_publishes(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        child = _child("""
            with lf.publishing_commit():
                print("in", flush=True)
                sys.stdin.readline()
        """, tmp_path)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "in"
        with pytest.raises(LockedError), lf.commits_blocked(timeout=0.2):
            pass
        child.stdin.write("done\n")
        child.stdin.flush()
        child.wait(timeout=30)
        with lf.commits_blocked(timeout=5):
            pass  # free again, and the gate was released after the timeout
        with lf.publishing_commit():
            pass
    finally:
        lf.close()


def test_in_process_threads_are_excluded_too(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        order: list[str] = []
        timed_out = threading.Event()
        lf.btree_writer.acquire(1)

        def other() -> None:
            with pytest.raises(LockedError):
                lf.btree_writer.acquire(0.1)
            order.append("timed out")
            timed_out.set()
            lf.btree_writer.acquire(60)
            order.append("got it")
            lf.btree_writer.release()

        t = threading.Thread(target=other)
        t.start()
        assert timed_out.wait(60)  # the other thread was excluded while we held the lock
        order.append("release")
        lf.btree_writer.release()
        t.join(10)
        assert order == ["timed out", "release", "got it"]
    finally:
        lf.close()


def test_table_writer_lock_across_processes(tmp_path: Path) -> None:
    lf = LockFile.open(tmp_path, init=_seed(0))
    try:
        child = _child("""
            lk = lf.table_writer_lock(7, "t")
            lk.acquire(5)
            print("held", flush=True)
            sys.stdin.readline()
        """, tmp_path)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match="table 't'"):
            lf.table_writer_lock(7, "t").acquire(0.2)
        other = lf.table_writer_lock(8, "u")  # a different table is free
        other.acquire(0.2)
        other.release()
        child.stdin.write("x\n")
        child.stdin.flush()
        child.wait(timeout=30)
        lk = lf.table_writer_lock(7, "t")
        lk.acquire(5)
        lk.release()
    finally:
        lf.close()


@pytest.mark.parametrize("damage, error", [
    (lambda b: b"NOTLOCK!" + b[8:], NotADatabaseError),
    (lambda b: b[:8] + (99).to_bytes(4, "little") + b[12:], VersionError),
    (lambda b: b[:24] + bytes(8) + b[32:], NotADatabaseError),
])
def test_a_foreign_lock_file_in_use_is_refused(tmp_path: Path, damage, error) -> None:
    holder = _child("print('up', flush=True); sys.stdin.readline()", tmp_path)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "up"
        path = tmp_path / F.FILE_NAME
        path.write_bytes(damage(path.read_bytes()))
        with pytest.raises(error):
            LockFile.open(tmp_path, init=_seed(0))
    finally:
        holder.stdin.write("x\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
