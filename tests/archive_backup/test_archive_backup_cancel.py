"""Cancellation: a backup cancelled in begin, prelock, lock or while dumping releases its
slot and files and leaves no image; a restore cancelled at any point leaves no files;
retained generations of a cancelled backup are removed once no backup slot is live."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from lamina.backup import Buffer, Result, TableSpec
from lamina.database import Database
from lamina.engines.archive.backup import DriverState
from lamina.errors import CancelledError, TableNotFoundError

from .archive_backup_helpers import (
    HookedEngine,
    archive_specs,
    backup,
    backup_slots,
    drive_to_vp,
    feed,
    fill,
    new_driver,
    open_db,
    restore,
    restore_driver,
    retained_files,
    table_streams,
)


def open_fds() -> set[str]:
    """Targets of this process's open descriptors."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return out


def make(db: Database) -> None:
    for name in ("a", "b"):
        db.create_table(name, engine="archive", block_target=200)
        fill(db, name, commits=10, per_commit=5)


@pytest.mark.parametrize("point", ["begin", "prelock", "lock", "unlock", "get_data"])
def test_kernel_cancel_at_each_phase(tmp_path: Path, point: str) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        fds = open_fds()
        token = threading.Event()
        engine = HookedEngine(db, {point: token.set})
        (tmp_path / "out").mkdir()
        with pytest.raises(CancelledError):
            backup(db, tmp_path / "out" / "img", engine=engine, buf_size=100, cancel=token)
        drv = engine.inner
        assert engine.drivers[0].calls[-1] == "cancel"
        assert drv.state is DriverState.ERROR and drv.slot_index is None
        assert not backup_slots(db)
        assert os.listdir(tmp_path / "out") == []  # no image, no temporary file
        assert open_fds() == fds  # every data file closed
        if point == "get_data":
            assert drv.vp_seq is not None and drv.tables[0].state is not None


def test_begin_failure_is_cancelled_and_releases_the_slot(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        specs = [*archive_specs(db), TableSpec("ghost", "archive", 999)]
        engine = HookedEngine(db, {})
        with pytest.raises(TableNotFoundError):
            backup(db, tmp_path / "img", engine=engine, specs=specs)
        assert engine.drivers[0].calls == ["begin", "cancel"]
        assert not backup_slots(db) and not (tmp_path / "img").exists()


@pytest.mark.parametrize("stop_after", ["nothing", "begin", "lock", "one buffer", "done"])
def test_driver_cancel_in_any_state_never_raises(tmp_path: Path, stop_after: str) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        fds = open_fds()
        drv = new_driver(db)
        if stop_after != "nothing":
            assert drv.begin(64) is Result.OK
            assert drv.state is DriverState.WAITING and len(backup_slots(db)) == 1
        if stop_after in ("lock", "one buffer", "done"):
            assert drv.prelock() is Result.READY
            with db.lockfile.commits_blocked(5.0):
                assert drv.lock() is Result.OK and drv.unlock() is Result.OK
        if stop_after == "one buffer":
            assert drv.get_data(Buffer(64)) is Result.OK
            assert drv.state is DriverState.DUMPING
        if stop_after == "done":
            while drv.get_data(Buffer(64)) is not Result.DONE:
                pass
            assert drv.state is DriverState.DONE
        assert drv.cancel() is Result.OK
        assert drv.cancel() is Result.OK  # twice is harmless
        assert not backup_slots(db) and open_fds() == fds
        assert drv.state is (DriverState.DONE if stop_after == "done" else DriverState.ERROR)


def test_retained_generations_of_a_cancelled_backup_are_removed(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        first, second = new_driver(db), new_driver(db)
        drive_to_vp(db, first)
        assert second.begin(100) is Result.OK
        db.archive("a").optimize()  # two backup slots live: generation 1 is kept
        assert retained_files(db.path) == ["a.ARM.g1", "a.ARZ.g1"]
        assert first.cancel() is Result.OK
        # the other backup may still need generation 1: kept until the last one ends
        assert retained_files(db.path) == ["a.ARM.g1", "a.ARZ.g1"]
        assert second.cancel() is Result.OK
        assert retained_files(db.path) == []
        assert not backup_slots(db)


def test_retained_generation_of_a_dead_backup_goes_at_next_optimize(tmp_path: Path) -> None:
    """A backup that never ran cancel/end (its process died: slot reclaimed) leaves
    retained files until the next optimize or writable open of the table."""
    with open_db(tmp_path / "db") as db:
        make(db)
        drv = new_driver(db)
        drive_to_vp(db, drv)
        db.archive("a").optimize()
        assert retained_files(db.path) == ["a.ARM.g1", "a.ARZ.g1"]
        slot = drv._slot
        assert slot is not None
        slot.release()  # what reclaiming a dead process's slot amounts to
        drv._slot = None
        assert retained_files(db.path) == ["a.ARM.g1", "a.ARZ.g1"]
        db.archive("a").optimize()
        assert retained_files(db.path) == []


def test_restore_cancel_removes_what_it_wrote(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        streams, _info = table_streams(db, 128)
        specs = archive_specs(db)
    for cut in (0, 100, 1300, len(streams[1])):
        dest = tmp_path / f"dest{cut}"
        dest.mkdir()
        drv = restore_driver(dest, specs)
        assert feed(drv, 1, streams[1][:cut], 77, last=cut == len(streams[1])) is Result.OK
        if cut == len(streams[1]):
            assert feed(drv, 2, streams[2], 500) is Result.OK
            assert sorted(os.listdir(dest)) == ["a.ARZ", "b.ARZ"]
        else:  # the data file exists once the meta was received and proven
            assert os.listdir(dest) == (["a.ARZ"] if cut >= 1300 else [])
        assert drv.cancel() is Result.OK
        assert drv.cancel() is Result.OK
        assert os.listdir(dest) == []


def test_kernel_restore_cancel_leaves_nothing(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        backup(db, tmp_path / "img", buf_size=100)
    calls = {"n": 0}

    def token() -> bool:
        calls["n"] += 1
        return calls["n"] > 20  # mid-stream

    with pytest.raises(CancelledError):
        restore(tmp_path / "img", tmp_path / "dest", cancel=token)
    assert os.listdir(tmp_path / "dest") == []
