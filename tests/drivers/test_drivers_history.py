"""Backup history records every outcome of the generic drivers, and the drivers used."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from drivers_helpers import make_db

import lamina
from lamina.backup.history import BackupHistory
from lamina.errors import CancelledError, DriverChoiceError
from support import cli


@pytest.mark.parametrize("driver", ["snapshot", "default"])
def test_every_outcome_is_recorded_with_its_drivers(tmp_path: Path, driver: str) -> None:
    path = tmp_path / "db"
    make_db(path, rows=200)
    with lamina.open(path, create=False) as db:
        result = db.backup(tmp_path / "ok.img", driver=driver)
        db.backup(tmp_path / "mixed.img", driver={"t1": driver})
        with pytest.raises(DriverChoiceError):
            db.backup(tmp_path / "bad.img", driver="bogus")
        cancel = threading.Event()
        with pytest.raises(CancelledError):
            db.backup(tmp_path / "cancel.img", driver=driver, cancel=cancel,
                      progress=lambda done, total: cancel.set())
        entries = BackupHistory(db.path, db.lockfile).entries()
        # The bogus driver choice is refused before the backup starts: no record.
        assert [e.shown_state() for e in entries] == ["done", "done", "cancelled"]
        assert entries[0].drivers == {"t1": driver, "t2": driver, "log": driver}
        assert entries[0].vp_commit_seq == result.vp.commit_seq
        assert entries[1].drivers == {"t1": driver, "t2": "btree", "log": "archive"}
        assert not (tmp_path / "bad.img").exists()
    proc = cli.run("history", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert driver in proc.stdout
