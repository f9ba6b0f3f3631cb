"""Retained generations for a running backup, and cutting a table at a commit seq."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina.core.lockfile import LockFile
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.archive import ArchiveTable
from lamina.engines.archive.datafile import DataFile
from lamina.engines.archive.meta import read_meta_file
from lamina.errors import NotFoundError

Make = Callable[..., ArchiveTable]


def rows_at(arm: Path, arz: Path, seq: int) -> list[bytes]:
    """What a backup does: the generation's blocks with commit seq <= ``seq``, in order."""
    meta = read_meta_file(arm).meta
    data = DataFile.open(arz, "t", writable=False)
    try:
        data.ensure_index(meta.data_length)
        out: list[bytes] = []
        for h in data.blocks:
            if h.commit_seq <= seq:
                out += data.read_rows(h)
        return out
    finally:
        data.retire()


def test_backup_keeps_replaced_generation(make_table: Make, db: Path,
                                          lockfile: LockFile) -> None:
    t = make_table(block_target=100)
    seqs, states = [], []
    rows: list[bytes] = []
    for b in range(5):
        batch = [b"b%d r%d" % (b, j) for j in range(8)]
        with t.writer() as w:
            w.append_many(batch)
            seqs.append(w.commit())
        rows += batch
        states.append(list(rows))
    vp = seqs[2]  # a backup's validity point: after the 3rd commit
    # The backup cuts the live generation after the fact by block seq.
    arm, arz = ArchiveTable.generation_files_at(db, "t", vp)
    assert (arm, arz) == (db / "t.ARM", db / "t.ARZ")
    assert rows_at(arm, arz, vp) == states[2]

    slot = lockfile.acquire_slot()
    slot.set(vp, kind=SLOT_BACKUP)
    try:
        stats = t.optimize()
        assert stats["retained"] is True
        assert (db / "t.ARM.g1").exists() and (db / "t.ARZ.g1").exists()
        t.append(b"after optimize")
        # the VP predates the new generation: the retained one is chosen, and still cuts
        arm, arz = ArchiveTable.generation_files_at(db, "t", vp)
        assert (arm.name, arz.name) == ("t.ARM.g1", "t.ARZ.g1")
        assert rows_at(arm, arz, vp) == states[2]
        # a VP after the optimize uses the current generation
        now = lockfile.commit_seq()
        assert ArchiveTable.generation_files_at(db, "t", now) == (db / "t.ARM", db / "t.ARZ")
        assert rows_at(db / "t.ARM", db / "t.ARZ", now) == [*rows, b"after optimize"]
        # cleanup refuses while the backup runs
        assert ArchiveTable.cleanup_generations(db, "t", lockfile) == 0
        assert t.check().stats["retained_generations"] == [1]
    finally:
        slot.release()
    assert ArchiveTable.cleanup_generations(db, "t", lockfile) == 2
    assert not list(db.glob("t.*.g*"))
    with pytest.raises(NotFoundError, match="not retained"):
        ArchiveTable.generation_files_at(db, "t", vp)


def test_no_backup_no_retention(make_table: Make, db: Path, lockfile: LockFile) -> None:
    t = make_table()
    t.append(b"x")
    slot = lockfile.acquire_slot()
    slot.set(3)  # an ordinary reader does not make optimize keep generations
    try:
        assert t.optimize()["retained"] is False
    finally:
        slot.release()
    assert sorted(os.listdir(db)) == ["LOCK", "t.ARM", "t.ARZ"]
    ArchiveTable.remove_files(db, "t")
    assert os.listdir(db) == ["LOCK"]


def test_leftover_retained_files_removed_at_open(make_table: Make, db: Path,
                                                 lockfile: LockFile) -> None:
    t = make_table()
    t.append(b"x")
    slot = lockfile.acquire_slot()
    slot.set(1, kind=SLOT_BACKUP)
    t.optimize()
    slot.release()  # the backup "died" without cleaning up
    t.close()
    assert (db / "t.ARZ.g1").exists()
    t2 = ArchiveTable.open(db, "t", 1, lockfile)
    assert not (db / "t.ARZ.g1").exists() and t2.check().ok
    t2.close()
