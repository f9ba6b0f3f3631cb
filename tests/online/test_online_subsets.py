"""--tables on backup and restore: exactly the chosen tables come back, proven."""

from __future__ import annotations

from pathlib import Path

import pytest

import lamina
from lamina import workload
from lamina.backup import online
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
        assert db.check().ok
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
