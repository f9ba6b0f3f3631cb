"""Cancelling a backup at any phase releases the driver's slot and leaves no image;
cancelling a restore leaves no data file."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from btree_backup_helpers import backup, backup_slots, feed, restore, restore_driver, stream0

import lamina
from lamina.backup import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    Buffer,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
)
from lamina.database import Database
from lamina.engines.btree import DATA_FILE_NAME
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.engines.btree.backup_driver import BtreeBackupDriver
from lamina.errors import CancelledError, StorageError


class SpyDriver(BackupDriver):
    """Delegates to the real btree driver; records calls, the slot it held, and whether a
    backup slot was pinning; fires ``trigger`` after the ``after``-th call of ``method``."""

    def __init__(self, inner: BtreeBackupDriver, db: Database, method: str, after: int,
                 trigger: threading.Event) -> None:
        self.inner, self.db = inner, db
        self.kind = inner.kind
        self.method, self.after, self.trigger = method, after, trigger
        self.calls: list[str] = []
        self.slot_seen: int | None = None
        self.pinned_seen = False

    def _after(self, name: str, result: Any) -> Any:
        self.calls.append(name)
        if self.inner.slot_index is not None:
            self.slot_seen = self.inner.slot_index
        self.pinned_seen = self.pinned_seen or bool(backup_slots(self.db))
        if name == self.method and self.calls.count(name) >= self.after:
            self.trigger.set()
        return result

    def begin(self, buf_size: int) -> Result:
        return self._after("begin", self.inner.begin(buf_size))  # type: ignore[no-any-return]

    def prelock(self) -> Result:
        return self._after("prelock", self.inner.prelock())  # type: ignore[no-any-return]

    def lock(self) -> Result:
        return self._after("lock", self.inner.lock())  # type: ignore[no-any-return]

    def unlock(self) -> Result:
        return self._after("unlock", self.inner.unlock())  # type: ignore[no-any-return]

    def get_data(self, buffer: Buffer) -> Result:
        return self._after("get_data", self.inner.get_data(buffer))  # type: ignore[no-any-return]

    def cancel(self) -> Result:
        self.calls.append("cancel")
        return self.inner.cancel()

    def end(self) -> Result:
        return self._after("end", self.inner.end())  # type: ignore[no-any-return]

    def init_size(self) -> int | None:
        return self.inner.init_size()

    def size(self) -> int | None:
        return self.inner.size()

    def vp_info(self) -> Mapping[str, Any]:
        return self.inner.vp_info()


class SpyEngine(BackupEngine):
    name = "btree"
    version = 1

    def __init__(self, db: Database, method: str, after: int) -> None:
        self.db, self.method, self.after = db, method, after
        self.trigger = threading.Event()
        self.driver: SpyDriver | None = None

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        inner = BtreeBackupEngine(self.db.store).get_backup(tables, flags)
        assert isinstance(inner, BtreeBackupDriver)
        self.driver = SpyDriver(inner, self.db, self.method, self.after, self.trigger)
        return self.driver

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        raise AssertionError("not used")


def small_db(path: Path) -> Database:
    db = lamina.open(path, page_size=1024, sync=False)
    db.create_table("t")
    with db.write() as w:
        for i in range(3000):
            w.table("t").put(b"%05d" % i, b"v" * 50)
    return db


@pytest.mark.parametrize(("method", "after", "pinned"), [
    ("begin", 1, False), ("prelock", 1, False), ("lock", 1, True), ("unlock", 1, True),
    ("get_data", 1, True), ("get_data", 5, True)])
def test_cancel_in_every_phase(tmp_path: Path, method: str, after: int, pinned: bool) -> None:
    db = small_db(tmp_path / "db")
    spy = SpyEngine(db, method, after)
    image = tmp_path / "images" / "img"
    image.parent.mkdir()
    with pytest.raises(CancelledError):
        backup(db, image, engine=spy, buf_size=4096, cancel=spy.trigger)  # type: ignore[arg-type]
    drv = spy.driver
    assert drv is not None
    assert drv.calls[-1] == "cancel" and drv.calls.count("cancel") == 1
    assert drv.slot_seen is not None  # it held a slot ...
    assert drv.inner.slot_index is None  # ... and gave it back
    assert drv.pinned_seen == pinned
    assert not backup_slots(db)
    assert list(image.parent.iterdir()) == []  # no image, no temporary file
    db.close()


def test_failure_while_dumping_releases_the_slot(tmp_path: Path) -> None:
    """An I/O error in get_data (not a cancellation) also cancels and unpins."""
    db = small_db(tmp_path / "db")
    spy = SpyEngine(db, "get_data", 3)
    pager = db.store._pager
    real_read = pager.read_run  # a full backup reads its pages in runs
    calls = [0]

    def failing_read(pgno: int, count: int) -> bytes:
        calls[0] += 1
        if spy.trigger.is_set():
            raise StorageError("injected read failure")
        return real_read(pgno, count)

    pager.read_run = failing_read  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageError):
            backup(db, tmp_path / "img", engine=spy, buf_size=4096)  # type: ignore[arg-type]
    finally:
        pager.read_run = real_read  # type: ignore[method-assign]
    assert spy.driver is not None and spy.driver.calls[-1] == "cancel"
    assert spy.driver.pinned_seen and not backup_slots(db) and calls[0] > 0
    assert not (tmp_path / "img").exists()
    db.close()


def test_cancelled_restore_leaves_no_data_file(tmp_path: Path) -> None:
    db = small_db(tmp_path / "db")
    backup(db, tmp_path / "img", buf_size=4096)
    db.close()
    stop = threading.Event()
    chunks = [0]

    def progress(_done: int, _total: int | None) -> None:
        chunks[0] += 1
        if chunks[0] == 3:
            stop.set()

    with pytest.raises(CancelledError):
        restore(tmp_path / "img", tmp_path / "dest", cancel=stop, progress=progress)
    assert chunks[0] == 3
    assert list((tmp_path / "dest").iterdir()) == []


def test_restore_driver_cancel_removes_partial_file(tmp_path: Path) -> None:
    db = small_db(tmp_path / "db")
    backup(db, tmp_path / "img")
    db.close()
    stream = stream0(tmp_path / "img")
    dest = tmp_path / "dest"
    dest.mkdir()
    drv = restore_driver(dest)
    feed(drv, stream[: len(stream) // 2 - 7], piece=5000, last=False)  # mid-stream
    assert (dest / DATA_FILE_NAME).stat().st_size > 0
    assert drv.cancel() is Result.OK
    assert list(dest.iterdir()) == []
    assert drv.cancel() is Result.OK  # idempotent, never raises
