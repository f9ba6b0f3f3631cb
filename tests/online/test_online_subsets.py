"""--tables on backup and restore: exactly the chosen tables come back, proven."""

from __future__ import annotations

from pathlib import Path

import pytest

import lamina
from lamina import online, workload
from lamina.errors import TableNotFoundError


@pytest.fixture()
def db(tmp_path: Path):
    with lamina.open(tmp_path / "db") as database:
        workload.run(database, seed=4, steps=200)
        yield database


def _contents(path: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    with lamina.open(path, create=False, readonly=True) as db:
        for t in db.tables():
            if t.engine == "btree":
                with db.read() as txn:
                    out[t.name] = dict(txn.table(t.name).items())
            else:
                out[t.name] = list(db.scan(t.name))
    return out


def test_backup_of_archive_tables_only(db, tmp_path: Path) -> None:
    db.backup(tmp_path / "img", tables=["wl_log"])
    online.restore(tmp_path / "img", tmp_path / "r")
    restored = _contents(tmp_path / "r")
    assert list(restored) == ["wl_log"]
    assert restored["wl_log"] == list(db.scan("wl_log"))


def test_restore_a_subset_of_a_full_image(db, tmp_path: Path) -> None:
    db.backup(tmp_path / "img")
    summary = online.restore(tmp_path / "img", tmp_path / "r", tables=["wl_kv", "wl_log"])
    assert summary.tables == ("wl_kv", "wl_log")
    restored = _contents(tmp_path / "r")
    with db.read() as txn:
        assert restored["wl_kv"] == dict(txn.table("wl_kv").items())
    assert "wl_idx" not in restored
    with pytest.raises(TableNotFoundError):
        online.restore(tmp_path / "img", tmp_path / "r2", tables=["nope"])
    assert not (tmp_path / "r2").exists()
    with pytest.raises(TableNotFoundError):
        db.backup(tmp_path / "img3", tables=["nope"])
    assert not (tmp_path / "img3").exists()


def test_ddl_waits_while_a_backup_runs(db, tmp_path: Path) -> None:
    """The DDL blocker: from planning to the end of a backup no table can be created or
    dropped in any process, so the image's catalog is exactly the VP's."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from lamina.core.lockfile import LockFile\n"
        "from lamina.errors import LockedError\n"
        "lf = LockFile.open(sys.argv[1], init=lambda lf: None)\n"
        "try:\n"
        "    lf.ddl_lock.acquire(0.2); print('free')\n"
        "except LockedError:\n"
        "    print('held')\n"
    )
    seen: list[str] = []

    def progress(done: int, total: int | None) -> None:
        if not seen:
            out = subprocess.run([sys.executable, "-c", probe, str(db.path)],
                                 capture_output=True, text=True, timeout=60)
            seen.append(out.stdout.strip())

    db.backup(tmp_path / "img", progress=progress)
    assert seen == ["held"]
    out = subprocess.run([sys.executable, "-c", probe, str(db.path)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == "free"  # and released when the backup ends
