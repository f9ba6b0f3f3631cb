"""Bad input around drivers: a forced driver an engine cannot use, an image whose driver
this build does not know or whose driver version is newer: one clear line, its exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from drivers_helpers import make_db

import lamina
from lamina import online
from lamina.backup.kernel import run_backup
from lamina.backup.snapshot_driver import SnapshotBackupEngine
from lamina.core.driver import DriverGroup
from lamina.errors import DriverChoiceError, UnsupportedError, VersionError
from support import cli


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    make_db(path, rows=100)
    return path


@pytest.mark.parametrize("choice", ["bogus", "t1=bogus", "nope=snapshot", "snapshot,,"])
def test_cli_rejects_bad_driver_choices(db_path: Path, tmp_path: Path, choice: str) -> None:
    proc = cli.run("backup", str(db_path), str(tmp_path / "img"), "--driver", choice)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "img").exists()


def test_forcing_a_driver_the_engine_cannot_use(db_path: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # An engine without snapshots (as MySQL's MyISAM): only native and default.
    monkeypatch.setitem(online.ENGINE_DRIVERS, "archive", ("native", "default"))
    with lamina.open(db_path, create=False) as db:
        with pytest.raises(DriverChoiceError, match="snapshot driver cannot back up archive"):
            db.backup(tmp_path / "img", driver="snapshot")
        with pytest.raises(DriverChoiceError):
            db.backup(tmp_path / "img", driver={"log": "snapshot"})
        db.backup(tmp_path / "img", driver={"log": "default", "t1": "snapshot"})
    assert not (tmp_path / "img").exists() or (tmp_path / "img").stat().st_size > 0


class _Renamed(SnapshotBackupEngine):
    name = "snapshot-next"


class _Newer(SnapshotBackupEngine):
    version = SnapshotBackupEngine.version + 1


@pytest.mark.parametrize(("engine", "error", "code"), [(_Renamed, UnsupportedError, 6),
                                                       (_Newer, VersionError, 6)])
def test_unknown_or_newer_driver_in_an_image(db_path: Path, tmp_path: Path, engine: type,
                                             error: type, code: int) -> None:
    image = tmp_path / "img"
    with lamina.open(db_path, create=False) as db:
        groups = online.plan_groups(db, None, "snapshot")
        groups = [DriverGroup(engine(online.logical_providers(db)), g.tables) for g in groups]
        run_backup(groups, image, commit_blocker=db.lockfile,
                   commit_seq=db.lockfile.commit_seq, database_id=db.identity.db_id)
    with pytest.raises(error):
        online.restore(image, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    proc = cli.run("restore", str(image), "--to", str(tmp_path / "dest2"))
    assert proc.returncode == code, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli.run("verify", str(image), "--deep")
    assert proc.returncode == code, proc.stderr
