"""A Ctrl-C (KeyboardInterrupt) during a commit's meta write reaches the caller unchanged
(the CLI's exit 10, "interrupted"), never wrapped into a StorageError (exit 9); the table is
consistent afterwards (issue 10, item 8).

Archive: the appender closes itself (the commit's outcome is unknown) and re-raises the
interrupt. Btree: the previous meta is put back and the interrupt re-raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina.core import fileio

_real_pwrite = fileio.pwrite
_real_fsync = fileio.fsync


def _interrupt_writes(monkeypatch: pytest.MonkeyPatch, hit: Any, *, call: str = "pwrite",
                      times: int = 1) -> list[int]:
    """Make the first ``times`` fileio calls ``call`` for which ``hit(path, offset)`` holds
    raise KeyboardInterrupt; returns the list counting them."""
    fired: list[int] = []

    def pwrite(fd: int, data: Any, offset: int, path: object = "") -> None:
        if len(fired) < times and hit(path, offset):
            fired.append(offset)
            raise KeyboardInterrupt
        _real_pwrite(fd, data, offset, path)

    def fsync(fd: int, path: object = "") -> None:
        if len(fired) < times and hit(path, 0):
            fired.append(0)
            raise KeyboardInterrupt
        _real_fsync(fd, path)

    if call == "pwrite":
        monkeypatch.setattr(fileio, "pwrite", pwrite)
    else:
        monkeypatch.setattr(fileio, "fsync", fsync)
    return fired


def _is_arm(path: object, _offset: int) -> bool:
    return str(path).endswith(".ARM")


@pytest.mark.parametrize("call", ["pwrite", "fsync"])
def test_archive_meta_write_interrupt_propagates_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    d = tmp_path / "db"
    with lamina.open(d) as db:
        db.create_table("log", "archive")
        db.append_many("log", [b"a", b"b"])
        table = db.archive("log")
        writer = table.writer(5.0)
        writer.append_many([b"c", b"d"])
        fired = _interrupt_writes(monkeypatch, _is_arm, call=call)
        with pytest.raises(KeyboardInterrupt) as info:
            writer.commit()
        monkeypatch.undo()
        assert fired and type(info.value) is KeyboardInterrupt
        writer.close()  # already closed by the failed commit: idempotent
        # The appender released the table's writer lock: a new writer goes on.
        db.append_many("log", [b"e"])
        rows = [r for _i, r in db.scan("log")]
    # Interrupted before the slot was written: not visible; after (at its fsync): visible.
    expected = [b"a", b"b", b"e"] if call == "pwrite" else [b"a", b"b", b"c", b"d", b"e"]
    assert rows == expected
    with lamina.open(d) as db:
        assert [r for _i, r in db.scan("log")] == expected
        assert db.check().ok


def test_archive_meta_write_storage_error_still_explains(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error (an Exception) is still the StorageError with its reason."""
    from lamina.errors import StorageError

    d = tmp_path / "db"
    with lamina.open(d) as db:
        db.create_table("log", "archive")
        writer = db.archive("log").writer(5.0)
        writer.append_many([b"x"])

        def pwrite(fd: int, data: Any, offset: int, path: object = "") -> None:
            if str(path).endswith(".ARM"):
                raise StorageError("disk on fire")
            _real_pwrite(fd, data, offset, path)

        monkeypatch.setattr(fileio, "pwrite", pwrite)
        with pytest.raises(StorageError, match=r"writing its meta \(.*disk on fire"):
            writer.commit()
        monkeypatch.undo()
        assert db.check().ok


def test_btree_meta_write_interrupt_propagates_and_rolls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "db"
    with lamina.open(d) as db:
        db.create_table("t")
        db.put("t", b"k1", b"v1")
        page_size = db.store.page_size
        data = str(d / "data.lamina")

        def is_meta(path: object, offset: int) -> bool:
            return str(path) == data and offset < 2 * page_size

        fired = _interrupt_writes(monkeypatch, is_meta)
        with pytest.raises(KeyboardInterrupt) as info:
            db.put("t", b"k2", b"v2")
        monkeypatch.undo()
        assert fired and type(info.value) is KeyboardInterrupt
        assert db.get("t", b"k2") is None
        db.put("t", b"k3", b"v3")  # the writer lock was released, the store not failed
        assert db.check().ok
    with lamina.open(d) as db:
        assert db.get("t", b"k1") == b"v1" and db.get("t", b"k2") is None
        assert db.get("t", b"k3") == b"v3"
        assert db.check().ok
