"""The validity point costs the archive driver no I/O and O(1) work, whatever the number of
tables; begin() marks a backup slot that pins only the current btree snapshot."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from io_spy import count_calls, io_spy
from lamina.backup import Result
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.archive.meta import read_meta_file

from .archive_backup_helpers import archive_specs, backup_slots, fill, new_driver, open_db


def vp_cost(path: Path, ntables: int) -> tuple[Counter[str], int]:
    """``ntables`` archive tables; lock()/unlock() under the real commit blocker:
    (I/O calls seen, profiled calls of lock + unlock)."""
    with open_db(path) as db:
        for i in range(ntables):
            db.create_table(f"t{i:03d}", engine="archive")
        fill(db, "t000", commits=3, per_commit=4)
        specs = archive_specs(db)
        assert len(specs) == ntables
        drv = new_driver(db, specs)
        assert drv.begin(4096) is Result.OK
        assert drv.prelock() is Result.READY
        with db.lockfile.commits_blocked(5.0):
            with io_spy() as seen:
                assert drv.lock() is Result.OK
                assert drv.unlock() is Result.OK
            seq = db.lockfile.commit_seq()
        assert drv.vp_seq == seq
        assert drv.cancel() is Result.OK
        drv2 = new_driver(db, specs)
        assert drv2.begin(4096) is Result.OK
        with db.lockfile.commits_blocked(5.0):
            r1, lock_calls = count_calls(drv2.lock)
            r2, unlock_calls = count_calls(drv2.unlock)
        assert (r1, r2) == (Result.OK, Result.OK)
        drv2.cancel()
        return seen, lock_calls + unlock_calls


@pytest.mark.parametrize("ntables", [1, 200])
def test_lock_and_unlock_do_no_io(tmp_path: Path, ntables: int) -> None:
    seen, _calls = vp_cost(tmp_path / "db", ntables)
    assert not +seen, dict(seen)


def test_lock_work_does_not_grow_with_tables(tmp_path: Path) -> None:
    _s1, one = vp_cost(tmp_path / "one", 1)
    _s2, many = vp_cost(tmp_path / "many", 200)
    assert one == many, (one, many)


def test_io_spy_sees_file_access(tmp_path: Path) -> None:
    """The spy is not blind: reading an archive meta file is counted everywhere."""
    with open_db(tmp_path / "db") as db:
        db.create_table("t", engine="archive")
    with io_spy() as seen:
        read_meta_file(tmp_path / "db" / "t.ARM")
    for key in ("os.open", "os.pread", "os.close", "fileio.open", "fileio.pread"):
        assert seen[key] >= 1, (key, dict(seen))


def test_begin_marks_a_backup_slot_at_the_btree_txnid(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("t", engine="archive")
        db.create_table("b")
        for i in range(5):
            db.put("b", b"k%d" % i, b"v")
        drv = new_driver(db)
        assert not backup_slots(db)
        assert drv.begin(100) is Result.OK
        (slot,) = backup_slots(db)
        assert slot[0] == drv.slot_index and slot[3] == SLOT_BACKUP
        assert slot[2] == db.store.current_meta().txnid > 1
        assert drv.cancel() is Result.OK
        assert not backup_slots(db) and drv.slot_index is None
