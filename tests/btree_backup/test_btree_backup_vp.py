"""The validity point costs the btree driver no I/O and O(1) work, whatever the table count."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from btree_backup_helpers import backup_slots, btree_specs

import lamina
from io_spy import count_calls, io_spy
from lamina.backup import BackupFlags, Result
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.btree import BtreeStore
from lamina.engines.btree.backup import BtreeBackupEngine


def vp_cost(path: Path, ntables: int) -> tuple[Counter[str], int, int]:
    """Create ``ntables`` btree tables, run the driver to the VP under the real commit
    blocker, and measure lock()/unlock(): (I/O calls, profiled calls, pinned txnid)."""
    with lamina.open(path, sync=False) as db:
        with db.write() as w:
            for i in range(ntables):
                w.create_table(f"t{i:03d}")
                w.table(f"t{i:03d}").put(b"k", b"v" * 100)
        specs = btree_specs(db)
        assert len(specs) == ntables
        drv = BtreeBackupEngine(db.store).get_backup(specs, BackupFlags())
        assert drv.begin(1 << 20) is Result.OK
        assert drv.prelock() is Result.READY
        with db.lockfile.commits_blocked(5.0):
            with io_spy() as seen:
                assert drv.lock() is Result.OK
                assert drv.unlock() is Result.OK
            _r, calls = count_calls(drv.unlock)
            slots = backup_slots(db)
        assert [s[2] for s in slots] == [db.store.current_meta().txnid]
        assert slots[0][3] == SLOT_BACKUP
        assert drv.cancel() is Result.OK
        assert not backup_slots(db)
        # lock() again on a fresh driver, this time profiled.
        drv2 = BtreeBackupEngine(db.store).get_backup(specs, BackupFlags())
        drv2.begin(1 << 20)
        with db.lockfile.commits_blocked(5.0):
            _r, lock_calls = count_calls(drv2.lock)
        drv2.cancel()
        return seen, lock_calls + calls, slots[0][2]


@pytest.mark.parametrize("ntables", [1, 200])
def test_lock_and_unlock_do_no_io(tmp_path: Path, ntables: int) -> None:
    seen, _calls, txnid = vp_cost(tmp_path / "db", ntables)
    assert txnid > 0
    assert not +seen, dict(seen)


def test_lock_work_does_not_grow_with_tables(tmp_path: Path) -> None:
    _s1, one, _t1 = vp_cost(tmp_path / "one", 1)
    _s2, many, _t2 = vp_cost(tmp_path / "many", 200)
    assert one == many, (one, many)


def test_io_spy_sees_file_access(tmp_path: Path) -> None:
    """The spy is not blind: reading a meta from the data file is counted everywhere."""
    with lamina.open(tmp_path / "db", sync=False) as db:
        db.create_table("t")
    with io_spy() as seen:
        BtreeStore.read_committed_meta(tmp_path / "db")
    for key in ("os.open", "os.pread", "os.close", "fileio.open", "fileio.pread"):
        assert seen[key] >= 1, (key, dict(seen))
