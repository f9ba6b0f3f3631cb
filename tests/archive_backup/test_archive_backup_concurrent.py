"""Data is frozen at the validity point: a writer in another process appends during the
whole backup; rows committed at or before the VP are all in the image, none after it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.engines.archive import vpcut

from .archive_backup_helpers import (
    archive_specs,
    backup,
    backup_slots,
    open_db,
    restore,
    restored_rows,
    retained_files,
    row,
)

WRITER = Path(__file__).with_name("archive_backup_writer.py")
TABLES = ["a", "b", "c"]


def read_log(path: Path) -> list[dict[str, int | str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_rows_after_the_vp_never_enter_the_image(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cuts: list[str] = []
    real_cut = vpcut.cut_at

    def spy_cut(*args: Any, **kwargs: Any) -> Any:
        cuts.append(args[2])
        return real_cut(*args, **kwargs)

    monkeypatch.setattr(vpcut, "cut_at", spy_cut)
    db_dir, log, stop = tmp_path / "db", tmp_path / "log", tmp_path / "stop"
    with open_db(db_dir) as db:
        for name in TABLES:
            db.create_table(name, engine="archive", codec="zlib", block_target=200)
        specs = archive_specs(db)
        writer = subprocess.Popen([sys.executable, str(WRITER), str(db_dir), str(log),
                                   str(stop), *TABLES], stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: log.exists() and len(read_log(log)) >= 40)
            seen_at_first_chunk: list[int] = []

            def progress(_done: int, _total: int | None) -> None:
                # Runs after the VP: hold the dump until the writer committed more, so the
                # tables grow (in the same generation) while they are being read.
                if not seen_at_first_chunk:
                    seen_at_first_chunk.append(len(read_log(log)))
                    wait_for(lambda: len(read_log(log)) >= seen_at_first_chunk[0] + 12)

            result = backup(db, tmp_path / "img", buf_size=97, progress=progress)
            wait_for(lambda: len(read_log(log)) >= seen_at_first_chunk[0] + 12)
        finally:
            stop.touch()
            _out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert not backup_slots(db) and not retained_files(db_dir)
    vp = result.vp.commit_seq
    entries = read_log(log)
    before = [e for e in entries if int(e["seq"]) <= vp]
    after = [e for e in entries if int(e["seq"]) > vp]
    assert len(before) >= 40 and len(after) >= 10  # the writer ran on both sides of the VP
    # tables prepared after the hold had post-VP blocks: cut by block commit seq
    assert set(cuts) >= {"b", "c"}, cuts
    facts = result.manifest.vp.drivers[0]["tables"]
    restore(tmp_path / "img", tmp_path / "dest")
    for spec in specs:
        mine = [e for e in before if e["table"] == spec.name]
        count = sum(int(e["n"]) for e in mine)
        # commits are in seq order per table, so the VP state is ids 1..count exactly
        assert max((int(e["first"]) + int(e["n"]) - 1 for e in mine), default=0) == count
        assert facts[spec.name]["rows"] == count
        assert restored_rows(tmp_path / "dest", spec) == [row(spec.name, i)
                                                          for i in range(1, count + 1)]
    # and the source tables did grow past the VP state while the backup ran
    with open_db(db_dir) as db:
        assert sum(db.archive(n).count() for n in TABLES) > sum(
            facts[n]["rows"] for n in TABLES)
