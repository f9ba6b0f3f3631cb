"""Backup history: every outcome recorded; a killed backup never shows as done; bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lamina
from lamina.backup import history as H
from lamina.backup.history import BackupHistory, HistoryEntry
from lamina.errors import CancelledError, DataError, StorageError
from support import cli


@pytest.fixture()
def db(tmp_path: Path):
    with lamina.open(tmp_path / "db") as database:
        database.create_table("t")
        database.put("t", b"k", b"v")
        yield database


def test_done_error_and_cancelled_are_recorded(db, tmp_path: Path) -> None:
    result = db.backup(tmp_path / "ok.img")
    # A failure once the backup started (a refused request, e.g. an unknown table, is
    # not recorded: tests/history/test_history_records.py).
    with pytest.raises(StorageError):
        db.backup(tmp_path / "nope" / "bad.img")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        db.backup(tmp_path / "cancel.img", cancel=cancel)
    entries = BackupHistory(db.path, db.lockfile).entries()
    assert [e.shown_state() for e in entries] == ["done", "error", "cancelled"]
    done = entries[0]
    assert done.vp_commit_seq == result.vp.commit_seq and done.bytes == result.size
    assert done.started_ns <= done.vp_time_ns <= done.ended_ns
    assert done.drivers == {"t": "btree"}
    assert "nope" in entries[1].error
    assert not (tmp_path / "cancel.img").exists() and not (tmp_path / "nope").exists()


def test_a_backup_killed_midway_never_shows_as_done(db, tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, signal, lamina
        db = lamina.open({str(db.path)!r})
        def progress(done, total):
            if done:
                os.kill(os.getpid(), signal.SIGKILL)
        db.backup({str(tmp_path / 'killed.img')!r}, progress=progress)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    entries = BackupHistory(db.path, db.lockfile).entries()
    assert len(entries) == 1
    assert entries[0].state == "running" and entries[0].shown_state() == "killed"
    assert not (tmp_path / "killed.img").exists()
    assert db.lockfile.live_slots() == []  # the dead backup's pin was reclaimed


def test_history_cli(db, tmp_path: Path) -> None:
    db.backup(tmp_path / "a.img")
    out = cli.run("history", str(db.path), "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    import json
    rows = json.loads(out.stdout)
    assert len(rows) == 1 and rows[0]["state"] == "done" and rows[0]["bytes"] > 0


def test_torn_tail_is_ignored_and_repaired(db) -> None:
    hist = BackupHistory(db.path, db.lockfile)
    first = hist.start("full", "x")
    hist.finish(first, "done")
    with open(hist.path, "ab") as f:
        f.write(b"\x50\x00\x00\x00garbage")  # a crash mid-append
    assert [e.state for e in hist.entries()] == ["done"]
    second = hist.start("full", "y")
    assert [e.backup_id for e in hist.entries()] == [first.backup_id, second.backup_id]


def test_retention_bounds_the_file(db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "KEEP", 5)
    monkeypatch.setattr(H, "COMPACT_AT", 12)
    hist = BackupHistory(db.path, db.lockfile, sync=False)
    for i in range(40):
        entry = hist.start("full", str(i))
        hist.finish(entry, "done")
    records = hist.records()
    assert len(records) <= 12
    assert [e.target for e in hist.entries()][-1] == "39"
    assert len(hist.entries()) <= 12


def test_future_version_and_foreign_file(db) -> None:
    hist = BackupHistory(db.path, db.lockfile)
    hist.start("full", "x")
    data = bytearray(hist.path.read_bytes())
    data[8] = 9
    hist.path.write_bytes(bytes(data))
    with pytest.raises(DataError):
        hist.entries()
    hist.path.write_bytes(b"something else entirely")
    with pytest.raises(DataError):
        hist.entries()


@given(st.binary(max_size=300))
def test_parser_raises_only_lamina_errors(data: bytes) -> None:
    for blob in (data, H._header() + data):
        try:
            entries = H.parse(blob)
        except DataError:
            continue
        assert all(isinstance(e, HistoryEntry) for e in entries)


def test_shown_state_of_a_live_running_backup() -> None:
    entry = HistoryEntry("id", os.getpid(), 1)
    assert entry.shown_state() == "running"
