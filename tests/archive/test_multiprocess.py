"""Several processes: one writer, concurrent readers, optimize under a long scan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable

from .conftest import batch_rows, spawn

Make = Callable[..., ArchiveTable]
SIZE = 10


def test_readers_never_see_partial_commits(db: Path) -> None:
    ArchiveTable.create(db, "t", 1, block_target=300)
    writer = spawn("write", str(db), "--batches", "1500", "--size", str(SIZE),
                   "--optimize-every", "500")
    # Each reader reads until it has seen the writer's last commit (counted in rows, not
    # timed: a busy machine only makes it take longer; --seconds is a hang guard).
    readers = [spawn("read", str(db), "--size", str(SIZE), "--until-rows", str(1500 * SIZE),
                     "--seconds", "240") for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in readers]
    w_out, w_err = writer.communicate(timeout=120)
    assert writer.returncode == 0, w_err
    assert "DONE" in w_out and w_out.count("OPTIMIZED") == 3
    for r, (out, err) in zip(readers, outs):
        assert r.returncode == 0, (out, err)
        status, checks, top, distinct = out.split()
        assert status == "OK" and int(checks) > 3
        assert int(top) % SIZE == 0
        # the reader overlapped the writer: it saw the table at many different sizes
        assert int(distinct) >= 3, out


def test_optimize_in_other_process_during_long_scan(make_table: Make, db: Path) -> None:
    t = make_table(block_target=500)
    expected = []
    for b in range(60):
        rows = batch_rows(b, SIZE)
        t.append_many(rows)
        expected += rows
    it = t.scan()
    head = [next(it) for _ in range(123)]
    proc = spawn("optimize", str(db))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "OPTIMIZED 2"
    rest = list(it)
    assert [r for _i, r in head + rest] == expected
    assert [i for i, _r in head + rest] == list(range(1, len(expected) + 1))
    # A new scan uses the new generation; this handle follows it.
    assert [r for _i, r in t.scan()] == expected
    st = t.stat()
    assert st["generation"] == 2 and st["blocks"] < 60
    t.append(b"more")
    assert t.count() == len(expected) + 1 and t.check().ok


def test_reader_process_sees_commits_of_this_process(make_table: Make, db: Path) -> None:
    t = make_table()
    for b in range(5):
        t.append_many(batch_rows(b, SIZE))
    proc = spawn("read", str(db), "--size", str(SIZE), "--until-rows", str(5 * SIZE),
                 "--seconds", "120")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split()[0] == "OK" and out.split()[2] == str(5 * SIZE) and out.split()[3] == "1"


def test_two_handles_in_one_process_share_the_writer_lock(make_table: Make, db: Path,
                                                          lockfile: LockFile) -> None:
    import pytest

    from lamina.errors import LockedError

    a = make_table()
    b = ArchiveTable.open(db, "t", 1, lockfile)
    try:
        with a.writer() as w:
            w.append(b"a")
            with pytest.raises(LockedError):
                b.writer(timeout=0.05)
        b.append(b"b")
        assert [r for _i, r in a.scan()] == [b"a", b"b"]
        b.optimize()
        a.append(b"c")  # a notices the new generation and appends to it
        assert [r for _i, r in b.scan()] == [b"a", b"b", b"c"]
        assert a.check().ok
    finally:
        b.close()


def test_threads_share_one_handle(make_table: Make) -> None:
    """Reader threads scan and count one handle while a thread appends and optimizes."""
    import threading

    t = make_table(block_target=400)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for b in range(120):
                t.append_many(batch_rows(b, SIZE))
                if b % 40 == 39:
                    t.optimize()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                n = t.count()
                assert n % SIZE == 0
                got = list(t.scan())
                assert len(got) % SIZE == 0 and len(got) >= n
                for row_id, row in got[-SIZE:]:
                    batch, j = divmod(row_id - 1, SIZE)
                    assert row == batch_rows(batch, SIZE)[j]
                if got:
                    assert t.get(len(got)) == got[-1][1]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                    for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    assert t.count() == 120 * SIZE and t.stat()["generation"] == 4
    assert t.check().ok
