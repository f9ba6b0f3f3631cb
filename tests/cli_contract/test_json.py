"""Issue 10, item 10: ``--json`` on every command that reports or changes something; with
``--json`` an error is ONE JSON object on stderr (``error``, ``exit``, ``message`` and the
error's location fields); ``scan --json`` streams JSON Lines in constant memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from lamina.cli.main import cli as lamina_cli
from support import cli, expect_damaged

from .helpers import lines, make_big, make_shop

#: Commands that neither report nor change anything of their own: the groups.
GROUPS = {"repo", "workload"}


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(lamina_cli)
    out: dict[str, click.Command] = {}
    for name in lamina_cli.list_commands(ctx):
        command = lamina_cli.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                out[f"{name} {sub.name}"] = sub
        else:
            out[name] = command
    return out


def test_every_command_takes_json() -> None:
    commands = _commands()
    for required in ("put", "get", "delete", "append", "create-table", "drop-table", "demo",
                     "scan", "backup", "restore", "verify", "history", "workload run"):
        assert required in commands
    missing = sorted(name for name, command in commands.items()
                     if "--json" not in {o for p in command.params for o in p.opts})
    assert not missing, f"commands without --json: {missing}"


def _json(*args: str, code: int = 0) -> Any:
    result = cli.invoke(*args, "--json")
    assert result.code == code, (args, result)
    return json.loads(result.stdout)


def test_json_output_of_every_command(tmp_path: Path, repo_url: str) -> None:
    db, image, repo = str(tmp_path / "shop.db"), str(tmp_path / "shop.lamina"), repo_url
    assert _json("create-table", db, "users") == {"name": "users", "engine": "btree",
                                                 "table_id": 1, "created_seq": 1}
    assert _json("create-table", db, "events", "--engine", "archive")["engine"] == "archive"
    put = _json("put", db, "users", "alice", "admin")
    assert put["key"] == "alice" and isinstance(put["commit_seq"], int)
    assert _json("put", db, "users", "00ff", "ff", "--hex")["key"] == "00ff"
    assert _json("get", db, "users", "alice") == {"table": "users", "key": "alice",
                                                  "value": "admin"}
    assert _json("delete", db, "users", "00ff", "--hex")["deleted"] is True
    appended = _json("append", db, "events", "a", "b", "c")
    assert (appended["rows"], appended["first_row_id"], appended["last_row_id"]) == (3, 1, 3)
    assert _json("append", db, "events", "-")["rows"] == 0  # empty stdin
    scanned = cli.invoke("scan", db, "events", "--json")
    assert [json.loads(line) for line in scanned.stdout.splitlines()] == [
        {"row_id": 1, "row": "a"}, {"row_id": 2, "row": "b"}, {"row_id": 3, "row": "c"}]
    assert isinstance(_json("optimize", db, "events"), dict)
    assert [t["name"] for t in _json("tables", db)] == ["events", "users"]
    assert _json("stat", db)["commit_seq"] >= 1
    assert _json("check", db)["ok"] is True
    backup = _json("backup", db, image)
    assert {"image_id", "vp_commit_seq", "vp_time_ns", "bytes", "blocker_held_ms"} <= set(backup)
    assert _json("info", image)["image_id"] == backup["image_id"]
    assert _json("verify", image)["image_id"] == backup["image_id"]
    restored = _json("restore", image, "--to", str(tmp_path / "copy.db"))
    assert restored["image_id"] == backup["image_id"]
    history = _json("history", db)
    assert history[-1]["state"] == "done" and history[-1]["image_id"] == backup["image_id"]
    assert _json("repo", "init", repo)["chain_limit"] >= 0
    repo_backup = _json("backup", db, "--repo", repo)
    assert repo_backup["kind"] == "full"
    assert [b["id"] for b in _json("list", "--repo", repo)["backups"]] == \
        [repo_backup["backup_id"]]
    assert _json("verify", "--repo", repo)["ok"] is True
    assert _json("restore", "--repo", repo, "--to", str(tmp_path / "r.db"))["backup_id"] == \
        repo_backup["backup_id"]
    assert _json("prune", "--repo", repo, "--keep-last", "1", "--dry-run")["dry_run"] is True
    log = str(tmp_path / "wl.log")
    run = _json("workload", str(tmp_path / "wl.db"), "--steps", "4", "--log", log)
    assert run["commits"] == 4
    assert _json("workload", "verify", str(tmp_path / "wl.db"), "--log", log, "--at",
                 str(run["last_commit_seq"]))["commits_applied"] == 4
    assert _json("drop-table", db, "events") == {"table": "events", "dropped": True}
    demo = _json("demo", "--keys", "2000", "--rows", "2000")
    assert demo["check"] == "clean" and demo["btree"]["entries"] == 2000
    assert len(demo["restores"]) == 2


def _json_error(*args: str, code: int) -> dict[str, Any]:
    """Run ``lamina ARGS --json`` as a process: exit ``code``, one JSON object on stderr."""
    proc = cli.run(*args, "--json")
    assert proc.returncode == code, (args, proc.stderr)
    assert len(lines(proc.stderr)) == 1, proc.stderr
    error: dict[str, Any] = json.loads(proc.stderr)
    assert error["exit"] == code and error["message"], error
    assert "Traceback" not in proc.stderr
    return error


def test_errors_with_json_are_one_json_object(tmp_path: Path) -> None:
    db = make_shop(tmp_path / "shop.db")
    error = _json_error("get", str(db), "users", "nobody", code=3)
    assert error["error"] == "NotFoundError" and "nobody" in error["message"]
    assert _json_error("get", str(db), "nosuch", "k", code=3)["error"] == "TableNotFoundError"
    error = _json_error("scan", str(db), "users", "--limit", "-1", code=2)
    assert error["error"] == "UsageError" and "--limit" in error["message"]
    assert _json_error("backup", str(db), str(tmp_path / "x"), "--level", "99",
                       code=2)["error"] == "UsageError"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "f").write_text("x")
    assert _json_error("tables", str(tmp_path / "plain"), code=5)["error"] == \
        "NotADatabaseError"
    # A damaged image: the error names the file and where the damage is.
    image = tmp_path / "shop.lamina"
    assert cli.run("backup", str(db), str(image)).returncode == 0
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    image.write_bytes(bytes(raw))
    error = _json_error("verify", str(image), code=4)
    assert error["error"] == "CorruptionError"
    assert error["path"] == str(image) and error["where"] and error["what"]
    # The checker's findings come with a failed workload verification.
    log = tmp_path / "wl.log"
    wl = tmp_path / "wl.db"
    assert cli.run("workload", str(wl), "--steps", "5", "--log", str(log)).returncode == 0
    error = _json_error("workload", "verify", str(wl), "--log", str(log), "--at", "1", code=7)
    assert error["error"] == "CheckFailedError" and error["findings"]
    expect_damaged(image, "flipped a byte on purpose")


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300,000 keys (the scan that took GBs as one JSON list)."""
    return make_big(tmp_path_factory.mktemp("scan") / "wide.db", keys=300_000,
                    random_values=False)


_MAX_RSS = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
assert proc.returncode == 0, proc.returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _max_rss_kib(*args: str) -> int:
    """Peak RSS of ``lamina ARGS`` alone (its parent here has no other child)."""
    out = subprocess.run([sys.executable, "-c", _MAX_RSS, *cli.LAMINA, *args],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return int(out)


def test_scan_json_streams_json_lines_in_constant_memory(wide: Path) -> None:
    proc = cli.start("scan", str(wide), "kv", "--json")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert proc.poll() is None, "the first line comes while the scan goes on"
    assert json.loads(first) == {"key": "key:000000000000", "value": "v" * 100}
    count = 1 + sum(1 for _ in proc.stdout)
    proc.communicate(timeout=600)
    assert proc.returncode == 0 and count == 300_000
    # The text scan streams: the JSON scan may use hardly more (both map the same pages).
    text = _max_rss_kib("scan", str(wide), "kv")
    as_json = _max_rss_kib("scan", str(wide), "kv", "--json")
    assert as_json < text + 32 * 1024, (f"scan --json peaked at {as_json // 1024} MiB, "
                                        f"the text scan at {text // 1024} MiB")
