"""``optimize`` during a backup — published after the VP, or after begin() but before the
VP, or crashed in another process between its rename and its meta write — never changes
what the image holds: the VP rows, from the generation current at the VP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lamina.database import Database
from lamina.engines.archive import vpcut
from support import expect_damaged

from .archive_backup_helpers import (
    HookedEngine,
    archive_specs,
    backup,
    backup_slots,
    fill,
    open_db,
    restore,
    restored_rows,
    retained_files,
)


def rows_of(db: Database, name: str) -> list[bytes]:
    return [r for _i, r in db.archive(name).scan()]


def make(db: Database) -> None:
    # "first" is dumped first; "t" is prepared only after the hooks below ran.
    for name in ("first", "t"):
        db.create_table(name, engine="archive", block_target=150)
        fill(db, name, commits=12, per_commit=6)


def test_optimize_published_after_the_vp(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        at_vp = {n: rows_of(db, n) for n in ("first", "t")}
        seen: dict[str, object] = {}

        def after_first_get_data() -> None:
            if seen:
                return
            for name in ("first", "t"):  # "first" is being read, "t" not opened yet
                seen[name] = db.archive(name).optimize(block_target=1000)
                fill(db, name, commits=2, per_commit=3)  # into generation 2, after the VP
            seen["second"] = db.archive("t").optimize(block_target=4000)  # generation 3
            fill(db, "t", commits=1, per_commit=4)
            seen["retained"] = retained_files(db.path)

        engine = HookedEngine(db, {"get_data": after_first_get_data})
        result = backup(db, tmp_path / "img", engine=engine, buf_size=200)
        assert seen["retained"] == ["first.ARM.g1", "first.ARZ.g1", "t.ARM.g1",
                                    "t.ARM.g2", "t.ARZ.g1", "t.ARZ.g2"]
        assert all(seen[n]["retained"] for n in ("first", "t", "second"))  # type: ignore[index]
        assert not retained_files(db.path) and not backup_slots(db)  # end() cleaned up
        assert db.archive("t").stat()["generation"] == 3
        assert len(rows_of(db, "t")) == len(at_vp["t"]) + 10
        specs = archive_specs(db)
    facts = result.manifest.vp.drivers[0]["tables"]
    assert {n: facts[n]["generation"] for n in facts} == {"first": 1, "t": 1}
    restore(tmp_path / "img", tmp_path / "dest")
    for spec in specs:
        assert restored_rows(tmp_path / "dest", spec) == at_vp[spec.name]


def test_optimize_after_begin_before_the_vp(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        make(db)
        seen: dict[str, object] = {}

        def after_prelock() -> None:  # the slot is live, the VP not yet created
            seen["stats"] = db.archive("t").optimize(block_target=1000)
            fill(db, "t", commits=2, per_commit=5)  # generation 2, before the VP
            seen["retained"] = retained_files(db.path)

        engine = HookedEngine(db, {"prelock": after_prelock})
        result = backup(db, tmp_path / "img", engine=engine, buf_size=500)
        at_vp = {n: rows_of(db, n) for n in ("first", "t")}
        assert seen["retained"] == ["t.ARM.g1", "t.ARZ.g1"]
        assert not retained_files(db.path) and not backup_slots(db)
        specs = archive_specs(db)
        blocks_gen2 = db.archive("t").stat()["blocks"]
    facts = result.manifest.vp.drivers[0]["tables"]
    assert facts["t"]["generation"] == 2 and facts["t"]["rows"] == 12 * 6 + 10
    restore(tmp_path / "img", tmp_path / "dest")
    for spec in specs:
        assert restored_rows(tmp_path / "dest", spec) == at_vp[spec.name]
    from lamina.engines.archive.meta import read_meta_file
    m = read_meta_file(tmp_path / "dest" / "t.ARM").meta
    assert m.generation == 2 and m.blocks == blocks_gen2


def test_optimize_crashed_mid_publish_in_another_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file of generation 2 is in place, its meta never written: the driver must
    still send generation 1 (retained because the backup slot was live)."""
    opened: list[tuple[str, int]] = []
    real_open_pair = vpcut._open_pair

    def spy(arm: Path, arz: Path, name: str) -> Any:
        got = real_open_pair(arm, arz, name)
        opened.append((arz.name, -1 if got is None else got[1].generation))
        return got

    monkeypatch.setattr(vpcut, "_open_pair", spy)
    db_dir = tmp_path / "db"
    with open_db(db_dir) as db:
        make(db)
        at_vp = {n: rows_of(db, n) for n in ("first", "t")}
        done: list[int] = []

        def crash_an_optimize() -> None:
            if done:
                return
            env = dict(os.environ, LAMINA_FAILPOINT="archive.optimize_mid_publish")
            code = ("import lamina, sys\n"
                    "db = lamina.open(sys.argv[1], create=False, sync=False)\n"
                    "db.archive('t').optimize(block_target=5000)\n")
            proc = subprocess.run([sys.executable, "-c", code, str(db_dir)], env=env,
                                  capture_output=True, text=True, timeout=60)
            done.append(proc.returncode)
            assert proc.returncode == -9, proc.stderr  # killed at the failpoint
            expect_damaged(db_dir, "an optimize killed mid-publish: a read-only check "
                           "reports the unfinished publish until a writer recovers it")

        engine = HookedEngine(db, {"get_data": crash_an_optimize})
        result = backup(db, tmp_path / "img", engine=engine, buf_size=300)
        assert done == [-9]
        # the live table reads generation 2 through its header until a writer recovers
        assert rows_of(db, "t") == at_vp["t"]
        specs = archive_specs(db)
    assert result.manifest.vp.drivers[0]["tables"]["t"]["generation"] == 1
    # NAME.ARZ (generation 2, newer than the VP) was opened and passed over for the copy
    assert opened[-2:] == [("t.ARZ", 2), ("t.ARZ.g1", 1)], opened
    restore(tmp_path / "img", tmp_path / "dest")
    for spec in specs:
        assert restored_rows(tmp_path / "dest", spec) == at_vp[spec.name]
