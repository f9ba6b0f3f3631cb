"""An archive table's writers wait as long as their database's ``lock_timeout`` says — for
the table's writer lock and, at commit, for a default backup driver's table lock (it was a
fixed 5 s, which made ``bench/stall.py``'s writer die with LockedError)."""

from __future__ import annotations

from pathlib import Path

import pytest

import lamina
from lamina.errors import LockedError


def test_archive_writers_follow_the_database_lock_timeout(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db", lock_timeout=600) as db:
        db.create_table("log", engine="archive")
        table = db.archive("log")
        assert table.lock_timeout == 600
        with table.writer() as w:
            assert w.backup_lock_timeout == 600
            w.append(b"row")
        with lamina.open(tmp_path / "db", create=False, lock_timeout=0) as other:
            assert other.archive("log").lock_timeout == 0
            with table.writer(), pytest.raises(LockedError):
                other.archive("log").append(b"blocked")  # no wait at all: timeout 0
        assert db.archive("log").count() == 1
