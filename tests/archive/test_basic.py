"""Basic behaviour of ArchiveTable: create/open, commits, reads, stats, static helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.core import fileio
from lamina.core.lockfile import LockFile
from lamina.engines.archive import MAX_ROW_BYTES, ArchiveTable
from lamina.engines.archive import format as F
from lamina.errors import (
    AlreadyExistsError,
    ClosedError,
    CorruptionError,
    InvalidNameError,
    NotFoundError,
    ReadOnlyError,
    TableNotFoundError,
    TransactionClosedError,
    UsageError,
)

Make = Callable[..., ArchiveTable]


@pytest.mark.parametrize("codec", ["zstd", "zlib", "none"])
def test_roundtrip_each_codec(make_table: Make, codec: str) -> None:
    t = make_table(codec=codec, block_target=200)
    rows = [b"line %d " % i * (i % 7 + 1) for i in range(300)]
    ids = t.append_many(rows)
    assert ids == list(range(1, 301))
    assert t.count() == 300
    assert [r for _i, r in t.scan()] == rows
    assert t.get(1) == rows[0] and t.get(300) == rows[299] and t.get(150) == rows[149]
    st = t.stat()
    assert st["codec"] == codec and st["rows"] == 300 and st["blocks"] > 10
    assert st["raw_bytes"] == sum(map(len, rows))
    assert st["files"]["t.ARZ"] == st["committed_length"]
    assert t.check().ok


def test_both_payload_layouts(make_table: Make) -> None:
    """Text rows use the newline layout; a block with a row holding a newline (or any
    binary) uses the length table. Both read back exactly."""
    t = make_table(block_target=10_000)
    text = [b"plain line %d" % i for i in range(50)] + [b""]
    binary = [b"line\nwith newline", b"\n", b"", b"\x00\xff\n\n"]
    t.append_many(text)
    t.append_many(binary)
    snap = t._snapshot()
    try:
        snap.data.ensure_index(snap.meta.data_length)
        assert [h.flags for h in snap.data.blocks] == [F.BLOCK_FLAG_LINES, 0]
    finally:
        snap.data.release()
    assert [r for _i, r in t.scan()] == text + binary
    assert t.stat()["raw_bytes"] == sum(map(len, text + binary))
    assert t.check().ok


def test_empty_table(make_table: Make) -> None:
    t = make_table()
    assert t.count() == 0
    assert list(t.scan()) == []
    with pytest.raises(NotFoundError):
        t.get(1)
    assert t.check().ok
    assert t.stat()["ratio"] == 0.0


def test_commit_seq_is_global_and_stamped(make_table: Make, lockfile: LockFile) -> None:
    a = make_table("a", 1, block_target=50)
    b = make_table("b", 2)
    with a.writer() as w:
        w.append(b"1")
        s1 = w.commit()
        w.append(b"2")
        s2 = w.commit()
        assert w.commit() == 0  # nothing buffered: no seq taken
    with b.writer() as w:
        w.append(b"x")
        s3 = w.commit()
    assert (s1, s2, s3) == (1, 2, 3) and lockfile.commit_seq() == 3
    assert ArchiveTable.read_last_commit_seq(a.directory, "a") == 2
    assert ArchiveTable.read_last_commit_seq(b.directory, "b") == 3
    snap = a._snapshot()
    try:
        snap.data.ensure_index(snap.meta.data_length)
        assert [h.commit_seq for h in snap.data.blocks] == [1, 2]
    finally:
        snap.data.release()


def test_appender_semantics(make_table: Make) -> None:
    t = make_table()
    with t.writer() as w:
        assert w.append(b"a") == 1
        assert w.append_many([b"b", b"c"]) == [2, 3]
        assert t.count() == 0  # invisible until commit
        w.abort()
        assert w.append(b"A") == 1  # ids reused after abort
    assert [r for _i, r in t.scan()] == [b"A"]
    with pytest.raises(RuntimeError), t.writer() as w:
        w.append(b"lost")
        raise RuntimeError("boom")
    assert t.count() == 1
    w = t.writer()
    w.append(b"B")
    w.commit()
    w.close()
    with pytest.raises(TransactionClosedError):
        w.append(b"C")
    assert t.count() == 2
    # the lock was released: another writer gets it at once
    t.writer(timeout=0).close()


def test_scan_from_row_and_snapshot(make_table: Make) -> None:
    t = make_table(block_target=64)
    t.append_many([b"r%03d" % i for i in range(1, 101)])
    assert list(t.scan(95)) == [(i, b"r%03d" % i) for i in range(95, 101)]
    assert list(t.scan(101)) == []
    assert list(t.scan(0))[:1] == [(1, b"r001")]
    it = t.scan(50)
    assert next(it) == (50, b"r050")
    t.append_many([b"later"] * 10)  # committed after the scan started
    rest = list(it)
    assert rest[-1] == (100, b"r100") and len(rest) == 50
    assert t.count() == 110


def test_rows_edge_cases(make_table: Make) -> None:
    t = make_table(block_target=1)
    rows = [b"", b"\x00" * 5, bytearray(b"ba"), memoryview(b"mv")]
    t.append_many(rows)  # type: ignore[arg-type]
    assert [r for _i, r in t.scan()] == [b"", b"\x00" * 5, b"ba", b"mv"]
    assert t.stat()["blocks"] == 4  # one row per block at target 1
    with pytest.raises(UsageError, match="bytes"):
        t.append("text")  # type: ignore[arg-type]
    big = b"x" * MAX_ROW_BYTES
    assert t.append(big) == 5
    assert t.get(5) == big


def test_create_and_open_errors(db: Path, lockfile: LockFile, make_table: Make) -> None:
    make_table("t", 1)
    with pytest.raises(AlreadyExistsError):
        ArchiveTable.create(db, "t", 1)
    with pytest.raises(CorruptionError, match="table id 1, expected 2"):
        ArchiveTable.open(db, "t", 2, lockfile)
    with pytest.raises(TableNotFoundError):
        ArchiveTable.open(db, "nope", 3, lockfile)
    with pytest.raises(InvalidNameError):
        ArchiveTable.create(db, "../x", 4)
    with pytest.raises(UsageError, match="unknown codec"):
        ArchiveTable.create(db, "c", 5, codec="lz4")
    with pytest.raises(UsageError, match="level"):
        ArchiveTable.create(db, "c", 5, codec="zlib", level=12)
    with pytest.raises(UsageError, match="block target"):
        ArchiveTable.create(db, "c", 5, block_target=0)
    with pytest.raises(UsageError, match="table id"):
        ArchiveTable.create(db, "c", 0)
    assert not (db / "c.ARM").exists()


def test_readonly_and_closed(make_table: Make, db: Path, lockfile: LockFile) -> None:
    t = make_table()
    t.append(b"x")
    r = ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    assert r.get(1) == b"x"
    for call in (lambda: r.append(b"y"), lambda: r.writer(), lambda: r.optimize()):
        with pytest.raises(ReadOnlyError):
            call()
    r.close()
    r.close()
    with pytest.raises(ClosedError):
        r.count()
    with pytest.raises(ClosedError):
        r.scan()


def test_static_helpers(make_table: Make, db: Path) -> None:
    t = make_table("logs", 42)
    t.append(b"a")
    t.close()
    ArchiveTable.remove_files(db, "logs")
    assert not list(db.glob("logs.*"))
    with pytest.raises(TableNotFoundError):
        ArchiveTable.read_last_commit_seq(db, "logs")


def test_commit_io_is_one_data_sync_and_one_meta_sync(make_table: Make) -> None:
    t = make_table(block_target=100)
    with t.writer() as w:
        before = fileio.COUNTERS.copy()
        w.append_many([b"z" * 60] * 10)  # several blocks, still one commit
        w.commit()
        after = fileio.COUNTERS.copy()
    diff = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert diff.get("fdatasync") == 1 and diff.get("fsync") == 1
    assert "fsync_dir" not in diff and "rename" not in diff
    assert t.stat()["blocks"] > 1


def test_sync_false_skips_only_the_meta_syncs(db: Path, lockfile: LockFile) -> None:
    """sync=False never lets a meta (or a generation rename) reach the disk before the data
    it names: the data syncs stay, the meta and directory syncs go."""
    ArchiveTable.create(db, "t", 1, sync=False)
    t = ArchiveTable.open(db, "t", 1, lockfile, sync=False)
    before = fileio.COUNTERS.copy()
    t.append_many([b"a", b"b"])
    after = fileio.COUNTERS.copy()
    assert after["fdatasync"] - before["fdatasync"] == 1  # the block, before the meta
    assert after["fsync"] == before["fsync"] and after["fsync_dir"] == before["fsync_dir"]
    t.optimize()
    final = fileio.COUNTERS.copy()
    assert final["fdatasync"] - after["fdatasync"] == 2  # new data, then its header
    assert final["fsync"] == after["fsync"] and final["fsync_dir"] == after["fsync_dir"]
    assert t.count() == 2
    t.close()


def test_optimize_keeps_rows_and_seqs(make_table: Make) -> None:
    t = make_table(block_target=40)
    expected = []
    for batch in range(10):
        rows = [b"b%d-%d" % (batch, j) for j in range(5)]
        t.append_many(rows)
        expected += rows
    before = t.stat()
    stats = t.optimize(block_target=100)
    after = t.stat()
    assert stats["blocks_before"] == before["blocks"] > stats["blocks_after"] == after["blocks"]
    assert after["generation"] == 2 and after["generation_commit_seq"] == stats["commit_seq"]
    assert after["last_commit_seq"] == stats["commit_seq"] == 11
    assert [r for _i, r in t.scan()] == expected
    assert t.get(33) == expected[32]
    snap = t._snapshot()
    try:
        snap.data.ensure_index(snap.meta.data_length)
        seqs = [h.commit_seq for h in snap.data.blocks]
        # each block's seq is the max seq of the rows it holds: rows of batch b have seq b+1
        for h in snap.data.blocks:
            assert h.commit_seq == (h.last_row_id - 1) // 5 + 1
        assert seqs == sorted(seqs)
    finally:
        snap.data.release()
    t.append(b"after")
    assert t.count() == 51 and t.get(51) == b"after"
    assert t.check().ok
    assert not (t.directory / "t.ARZ.new").exists()


def test_old_generation_closed_when_scan_ends(make_table: Make) -> None:
    import os

    t = make_table(block_target=50)
    t.append_many([b"row %d" % i for i in range(200)])

    def deleted_fds() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").endswith("t.ARZ (deleted)"):
                    n += 1
            except OSError:
                pass
        return n

    it = t.scan()
    first = [next(it) for _ in range(10)]
    t.optimize()
    assert deleted_fds() == 1  # the old generation lives while the scan reads it
    rest = list(it)
    assert [r for _i, r in first + rest] == [b"row %d" % i for i in range(200)]
    assert deleted_fds() == 0
    # an abandoned scan releases its snapshot too
    it2 = t.scan()
    next(it2)
    t.optimize()
    del it2
    assert deleted_fds() == 0
    assert t.stat()["committed_length"] > F.ARZ_HEADER_SIZE
