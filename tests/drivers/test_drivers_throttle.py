"""``max_rate`` bounds the read rate of a backup: bytes/elapsed stays within the target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import lamina
from lamina.backup.kernel import Throttle
from lamina.errors import UsageError
from support import cli


def _db(path: Path, mb: int) -> None:
    with lamina.open(path) as db:
        db.create_table("t")
        with db.write() as txn:
            t = txn.table("t")
            for i in range(mb * 1024):
                t.put(b"%08d" % i, os.urandom(900))


@pytest.mark.parametrize("driver", ["snapshot", "native"])
def test_backup_keeps_to_max_rate(tmp_path: Path, driver: str) -> None:
    path = tmp_path / "db"
    _db(path, 4)
    rate = 3.0  # MB/s: ~4.3 MB of pages or rows -> about 1.4 s
    with lamina.open(path, create=False) as db:
        result = db.backup(tmp_path / "img", driver=driver, max_rate=rate)
    measured = result.raw_bytes / (result.elapsed_ns / 1e9) / 1e6
    assert result.raw_bytes > 3e6
    assert 0.5 * rate <= measured <= 1.1 * rate, measured
    assert result.blocker_held_ns < 100e6  # the VP is never throttled


def test_cli_max_rate(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _db(path, 3)
    proc = cli.run("backup", str(path), str(tmp_path / "img"), "--max-rate", "4", "--json",
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    measured = summary["raw_bytes"] / summary["seconds"] / 1e6
    assert 2.0 <= measured <= 4.4, measured
    proc = cli.run("backup", str(path), str(tmp_path / "img2"), "--max-rate", "0")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_throttle_rejects_a_non_positive_rate() -> None:
    with pytest.raises(UsageError):
        Throttle(0)
