"""``Database.check`` reports its phases and turns a missing archive table into a finding."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import lamina


def _db(path: Path) -> Path:
    with lamina.open(path) as db:
        db.create_table("users")
        db.create_table("events", engine="archive")
        db.put("users", b"k", b"v")
        db.append("events", b"row")
    return path


def test_check_reports_each_phase(tmp_path: Path) -> None:
    phases: list[str] = []
    with lamina.open(_db(tmp_path / "db"), readonly=True) as db:
        assert db.check(progress=phases.append).ok
    assert phases == ["checking the btree file", "checking archive table events"]


@pytest.mark.unchecked_db("the test removes an archive table's files on purpose")
def test_missing_archive_files_are_a_finding_not_an_exception(tmp_path: Path) -> None:
    path = _db(tmp_path / "db")
    for name in ("events.ARM", "events.ARZ"):
        (path / name).unlink()
    with lamina.open(path, readonly=True) as db:
        report = db.check()
    assert not report.ok
    assert [f.table for f in report.findings] == ["events"]
    proc = subprocess.run([sys.executable, "-m", "lamina", "check", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr


def test_lamina_check_shows_its_phase_on_a_terminal(tmp_path: Path) -> None:
    path = _db(tmp_path / "db")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lamina", "check", str(path)],
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(leader)
    assert proc.returncode == 0 and "ok: no problems found" in out
    assert b"check: checking" in seen
