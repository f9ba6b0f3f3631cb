"""Several processes: readers keep their snapshots while a writer commits continuously;
a pinned snapshot survives churn of ~10x the database; freed pages are reused after the
reader ends (the file stops growing) and a reader killed with SIGKILL does not pin forever."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
from helpers import assert_clean, opened
from workload import TABLES

from lamina.engines.btree import BtreeStore

CTX = multiprocessing.get_context("spawn")
WORKLOAD = Path(__file__).with_name("workload.py")


def test_readers_see_stable_snapshots_while_writer_commits(tmp_path: Path) -> None:
    d = tmp_path / "db"
    with opened(d, page_size=1024):
        pass
    writer = subprocess.Popen([sys.executable, str(WORKLOAD), str(d), str(tmp_path / "log")],
                              env={k: v for k, v in os.environ.items()
                                   if k != "LAMINA_FAILPOINT"})
    try:
        queue = CTX.Queue()
        readers = [CTX.Process(target=procs.snapshot_reader, args=(str(d), 5, 3, queue))
                   for _ in range(2)]
        for p in readers:
            p.start()
        results = [queue.get(timeout=300) for _ in readers]
        for p in readers:
            p.join(30)
            assert p.exitcode == 0
    finally:
        writer.kill()
        writer.wait()
    for checked, distinct, problems in results:
        assert problems == []
        assert checked >= 5
        assert distinct >= 2  # the writer really committed while they read
    with opened(d) as store:
        assert_clean(store)
        with store.begin_read() as r:
            assert {e.name for e in r.catalog()} == set(TABLES)


def _churn(store: BtreeStore, rounds: int, start: int) -> None:
    for i in range(start, start + rounds):
        with store.begin_write() as w:
            t = w.table("t")
            for k in range(300):
                t.put(b"key%04d" % k, b"%06d" % i * 8)


def _file_pages(store: BtreeStore) -> int:
    return os.path.getsize(store.path) // store.page_size


def test_pinned_snapshot_survives_churn_then_space_is_reused(tmp_path: Path) -> None:
    d = tmp_path / "db"
    with opened(d, page_size=1024, sync=False) as store:
        with store.begin_write() as w:
            w.create_table("t")
        _churn(store, 1, 0)
        db_pages = _file_pages(store)
        ready, go, result = CTX.Event(), CTX.Event(), CTX.Queue()
        reader = CTX.Process(target=procs.pinning_reader, args=(str(d), ready, go, result))
        reader.start()
        assert ready.wait(60)
        _tag, pinned_txnid, before = result.get(timeout=30)
        _churn(store, 10, 1)  # rewrites every page 10 times: ~10x the database
        grown = _file_pages(store)
        assert grown > 5 * db_pages  # nothing the reader can see was reused
        go.set()
        tag, txnid, after = result.get(timeout=60)
        assert (tag, txnid, after) == ("after", pinned_txnid, before)
        reader.join(30)
        assert reader.exitcode == 0
        _churn(store, 3, 11)  # frees the pinned generation's pages for reuse
        settled = _file_pages(store)
        _churn(store, 20, 14)
        assert _file_pages(store) == settled  # steady state: no growth
        assert store.stat()["free_pages"] > 0
        assert_clean(store)

        # A reader killed with SIGKILL: its slot is reclaimed and stops pinning.
        ready2 = CTX.Event()
        victim = CTX.Process(target=procs.pin_forever, args=(str(d), ready2))
        victim.start()
        assert ready2.wait(60)
        assert store._lockfile.oldest_reader_txnid() is not None
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        victim.join(30)
        assert store._lockfile.oldest_reader_txnid() is None
        _churn(store, 5, 34)
        settled = _file_pages(store)
        _churn(store, 20, 39)
        assert _file_pages(store) == settled
        assert_clean(store)


def test_writer_lock_timeout_across_processes(tmp_path: Path) -> None:
    from lamina.errors import LockedError

    d = tmp_path / "db"
    with opened(d) as store:
        ready, release = CTX.Event(), CTX.Event()
        holder = CTX.Process(target=procs.hold_writer, args=(str(d), ready, release))
        holder.start()
        try:
            assert ready.wait(60)
            t0 = time.monotonic()
            with pytest.raises(LockedError, match=r"waited 0\.[23]\d*s"):  # its own timeout
                store.begin_write(timeout=0.3)
            assert time.monotonic() - t0 >= 0.25  # it did wait (the holder never lets go)
            with store.begin_read() as r:  # readers are never blocked by the writer
                assert r.catalog() == []
        finally:
            release.set()
            holder.join(30)
        with store.begin_write(timeout=10) as w:
            w.create_table("x")
