"""Damage detection: flipped bytes in every block, in the meta slots, in the data header."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable
from lamina.engines.archive import format as F
from lamina.engines.archive.block import BlockHeader
from lamina.errors import (
    CorruptionError,
    NotADatabaseError,
    TableNotFoundError,
)

Make = Callable[..., ArchiveTable]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def block_headers(t: ArchiveTable) -> list[BlockHeader]:
    snap = t._snapshot()
    try:
        snap.data.ensure_index(snap.meta.data_length)
        return list(snap.data.blocks)
    finally:
        snap.data.release()


@pytest.fixture
def filled(make_table: Make) -> tuple[ArchiveTable, list[bytes]]:
    t = make_table(block_target=300)
    rows = []
    for batch in range(6):
        chunk = [b"batch %d row %d %s" % (batch, j, b"y" * (j * 3)) for j in range(20)]
        t.append_many(chunk)
        rows += chunk
    return t, rows


@pytest.mark.parametrize("part", ["header", "payload"])
def test_flipped_byte_in_every_block(filled: tuple[ArchiveTable, list[bytes]], db: Path,
                                     lockfile: LockFile, tmp_path_factory: pytest.TempPathFactory,
                                     part: str) -> None:
    t, rows = filled
    headers = block_headers(t)
    assert len(headers) >= 8
    t.close()
    for h in headers:
        work = tmp_path_factory.mktemp("flip")
        for f in db.glob("t.*"):
            shutil.copy(f, work / f.name)
        offset = h.offset + (20 if part == "header" else F.BLOCK_HEADER_SIZE + h.stored_length // 2)
        flip(work / "t.ARZ", offset)
        lf = LockFile.open(work, init=lambda lf: lf.set_commit_seq(0))
        try:
            damaged = ArchiveTable.open(work, "t", 1, lf, readonly=True)
            with pytest.raises(CorruptionError) as err:
                list(damaged.scan())
            msg = str(err.value)
            assert "'t'" in msg and f"offset {h.offset}" in msg, msg
            if part == "payload":
                assert f"rows {h.first_row_id}-{h.last_row_id}" in msg
                # Rows of other blocks stay readable; the damaged block's rows raise.
                with pytest.raises(CorruptionError, match=f"offset {h.offset}"):
                    damaged.get(h.first_row_id)
                if h.first_row_id > 1:
                    assert damaged.get(1) == rows[0]
            else:
                assert f"rows from {h.first_row_id}" in msg
            report = damaged.check()
            assert not report.ok
            assert any(f"offset {h.offset}" in f.where for f in report.findings), report.findings
            assert damaged.count() == len(rows)  # the meta is intact: nothing lost
            damaged.close()
        finally:
            lf.close()


def test_meta_slot_fallback(filled: tuple[ArchiveTable, list[bytes]], db: Path,
                            lockfile: LockFile) -> None:
    t, rows = filled
    read = t._arm_file().read()
    current, other = read.slot, 1 - read.slot
    n_prev_commit = len(rows) - 20
    t.close()
    arm = db / "t.ARM"
    pristine = arm.read_bytes()

    # Damage in the older slot: nothing changes for readers; the checker reports the slot.
    flip(arm, other * F.ARM_SLOT_STRIDE + 50)
    r = ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    assert r.count() == len(rows) and [x for _i, x in r.scan()] == rows
    report = r.check()
    assert [f.where for f in report.findings] == [f"meta slot {other}"]
    r.close()
    # A writable open repairs it.
    w = ArchiveTable.open(db, "t", 1, lockfile)
    assert w.check().ok and w.count() == len(rows)
    w.close()

    # Damage in the newest slot: the other slot (the previous commit) is used.
    arm.write_bytes(pristine)
    flip(arm, current * F.ARM_SLOT_STRIDE + 50)
    r = ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    assert r.count() == n_prev_commit
    assert [x for _i, x in r.scan()] == rows[:n_prev_commit]
    assert any(f.where == f"meta slot {current}" for f in r.check().findings)
    r.close()

    # Both slots damaged: one clear error; magic gone in both: not an archive meta file.
    arm.write_bytes(pristine)
    flip(arm, 60)
    flip(arm, F.ARM_SLOT_STRIDE + 60)
    with pytest.raises(CorruptionError, match="both archive meta slots are damaged"):
        ArchiveTable.open(db, "t", 1, lockfile)
    arm.write_bytes(b"\x00" * F.ARM_FILE_SIZE)
    with pytest.raises(NotADatabaseError, match="not an archive meta file"):
        ArchiveTable.open(db, "t", 1, lockfile)
    arm.write_bytes(b"")
    with pytest.raises(CorruptionError, match="empty"):
        ArchiveTable.open(db, "t", 1, lockfile)
    # Restored bytes: everything is back, nothing was lost.
    arm.write_bytes(pristine)
    t2 = ArchiveTable.open(db, "t", 1, lockfile)
    assert [x for _i, x in t2.scan()] == rows and t2.check().ok
    t2.close()


def test_data_header_and_missing_files(filled: tuple[ArchiveTable, list[bytes]], db: Path,
                                       lockfile: LockFile) -> None:
    t, rows = filled
    t.close()
    arz = db / "t.ARZ"
    pristine = arz.read_bytes()
    flip(arz, 30)
    with pytest.raises(CorruptionError, match="data file header checksum"):
        ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    arz.write_bytes(pristine)
    flip(arz, 0)
    with pytest.raises(NotADatabaseError, match="not an archive data file"):
        ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    arz.write_bytes(pristine[:-10])  # committed bytes missing
    with pytest.raises(CorruptionError, match="shorter than its committed length"):
        ArchiveTable.open(db, "t", 1, lockfile)
    arz.unlink()
    with pytest.raises(CorruptionError, match="no data file"):
        ArchiveTable.open(db, "t", 1, lockfile)
    arz.write_bytes(pristine)
    arm = (db / "t.ARM").read_bytes()
    (db / "t.ARM").unlink()
    with pytest.raises(CorruptionError, match="no meta file"):
        ArchiveTable.open(db, "t", 1, lockfile)
    arz.unlink()
    with pytest.raises(TableNotFoundError):
        ArchiveTable.open(db, "t", 1, lockfile)
    (db / "t.ARM").write_bytes(arm)
    arz.write_bytes(pristine)
    t2 = ArchiveTable.open(db, "t", 1, lockfile)
    assert t2.count() == len(rows) and t2.check().ok
    t2.close()


def test_torn_tail_ignored_then_truncated(filled: tuple[ArchiveTable, list[bytes]], db: Path,
                                          lockfile: LockFile) -> None:
    t, rows = filled
    t.close()
    arz = db / "t.ARZ"
    size = arz.stat().st_size
    with arz.open("ab") as f:
        f.write(b"ARZB" + b"\x99" * 100)  # half a block from a crashed commit
    r = ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    assert [x for _i, x in r.scan()] == rows
    assert r.check().ok and r.check().stats["tail_bytes"] == 104
    r.close()
    w = ArchiveTable.open(db, "t", 1, lockfile)
    assert arz.stat().st_size == size
    w.append(b"next")
    assert w.get(len(rows) + 1) == b"next" and w.check().ok
    w.close()
