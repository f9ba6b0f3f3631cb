"""Issue 10, item 12: one id — ``history`` shows the image id that ``backup``, ``info`` and
``list`` print; ``workload run --log L`` appends as its help says (continuing the log, so
that ``workload verify`` still replays every commit)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support import cli

from .helpers import lines, make_shop

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def test_history_shows_the_image_id_backup_info_and_list_print(tmp_path: Path,
                                                              repo_url: str) -> None:
    db = make_shop(tmp_path / "shop.db")
    image = tmp_path / "shop.lamina"
    out = cli.invoke("backup", str(db), str(image)).stdout
    match = re.match(rf"image ({UUID}) -> ", out)
    assert match, out
    image_id = match.group(1)
    assert f"image_id: {image_id}" in cli.invoke("info", str(image)).stdout
    assert json.loads(cli.invoke("info", str(image), "--json").stdout)["image_id"] == image_id
    history = cli.invoke("history", str(db)).stdout
    assert lines(history)[-1].startswith(image_id), history
    rows = json.loads(cli.invoke("history", str(db), "--json").stdout)
    assert rows[-1]["image_id"] == image_id
    assert "backup_id" not in rows[-1], "history's own record id is not called backup_id"
    # A repository names a backup by its image id too.
    repo = repo_url
    assert cli.invoke("repo", "init", repo).code == 0
    backup_id = cli.invoke("backup", str(db), "--repo", repo).stdout.strip()
    listed = json.loads(cli.invoke("list", "--repo", repo, "--json").stdout)["backups"]
    assert [(b["id"], b["image_id"]) for b in listed] == [(backup_id, backup_id)]
    assert backup_id in cli.invoke("list", "--repo", repo).stdout


def _log_lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def test_workload_log_is_appended_and_still_verifies(tmp_path: Path) -> None:
    db, log = tmp_path / "w.db", tmp_path / "wl.log"
    assert cli.invoke("workload", str(db), "--steps", "5", "--log", str(log)).code == 0
    first = _log_lines(log)
    assert cli.invoke("workload", str(db), "--steps", "7", "--log", str(log)).code == 0
    both = _log_lines(log)
    assert both[:len(first)] == first, "the second run appends"
    assert len(both) == 1 + 12 and json.loads(both[0])["format"]
    assert [int(line.split()[0]) for line in both[1:]] == list(range(12)), \
        "the second run continues the step numbers"
    image, copy = tmp_path / "w.lamina", tmp_path / "copy.db"
    assert cli.invoke("backup", str(db), str(image)).code == 0
    assert cli.invoke("restore", str(image), "--to", str(copy)).code == 0
    verified = json.loads(cli.invoke("workload", "verify", str(copy), "--log", str(log),
                                     "--json").stdout)
    assert verified["commits_applied"] == 12
    # A log of another seed or another database is refused, and left alone.
    code, _out, err = cli.invoke("workload", str(db), "--steps", "1", "--seed", "2",
                                 "--log", str(log))
    assert code == 2 and "seed" in err
    code, _out, err = cli.invoke("workload", str(tmp_path / "other.db"), "--steps", "1",
                                 "--log", str(log))
    assert code == 2 and "another database" in err
    assert not (tmp_path / "other.db").exists()
    assert _log_lines(log) == both
