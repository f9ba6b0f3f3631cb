"""The lamina command: every command of the foundation and archive issues, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import cli
from support.cli import invoke


@pytest.fixture()
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "shop.db")
    assert invoke("create-table", path, "users")[0] == 0
    assert invoke("create-table", path, "events", "--engine", "archive")[0] == 0
    return path


def test_btree_commands(db: str) -> None:
    assert invoke("put", db, "users", "alice", "admin")[0] == 0
    assert invoke("put", db, "users", "bob", "user")[0] == 0
    assert invoke("get", db, "users", "alice") == (0, "admin\n", "")
    code, out, _ = invoke("scan", db, "users", "--json")
    assert [json.loads(line) for line in out.splitlines()] == [
        {"key": "alice", "value": "admin"}, {"key": "bob", "value": "user"}]
    assert invoke("scan", db, "users", "--prefix", "b")[1] == "bob\tuser\n"
    assert invoke("scan", db, "users", "--start", "b")[1] == "bob\tuser\n"
    assert invoke("scan", db, "users", "--limit", "1")[1] == "alice\tadmin\n"
    assert invoke("put", db, "users", "00ff", "ff00", "--hex")[0] == 0
    assert invoke("get", db, "users", "00ff", "--hex")[1] == "ff00\n"
    assert invoke("delete", db, "users", "bob")[0] == 0
    code, _, err = invoke("get", db, "users", "bob")
    assert code == 3 and "not found" in err
    assert invoke("delete", db, "users", "bob")[0] == 3


def test_archive_commands(db: str) -> None:
    assert invoke("append", db, "events", "one", "two")[1] == "appended rows 1..2\n"
    assert invoke("append", db, "events", "-", input="three\nfour\n")[1] == "appended rows 3..4\n"
    assert invoke("scan", db, "events", "--start", "3")[1] == "3\tthree\n4\tfour\n"
    _, out, _ = invoke("scan", db, "events", "--json", "--limit", "1")
    assert [json.loads(line) for line in out.splitlines()] == [{"row_id": 1, "row": "one"}]
    assert invoke("optimize", db, "events")[0] == 0
    assert invoke("scan", db, "events")[1].count("\n") == 4
    _, out, _ = invoke("stat", db, "--json")
    stats = json.loads(out)
    assert stats["archive"]["events"]["rows"] == 4
    assert invoke("scan", db, "events", "--prefix", "x")[0] == 2


def test_tables_check_stat_drop(db: str) -> None:
    code, out, _ = invoke("tables", db, "--json")
    assert [t["name"] for t in json.loads(out)] == ["events", "users"]
    code, out, _ = invoke("check", db, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = invoke("stat", db)
    assert code == 0 and "commit_seq" in out
    assert invoke("drop-table", db, "events")[0] == 0
    assert "events" not in invoke("tables", db)[1]


def test_exit_codes(tmp_path: Path, db: str) -> None:
    assert invoke("get", str(tmp_path / "none"), "t", "k")[0] == 3       # no database
    assert invoke("get", db, "nosuch", "k")[0] == 3                      # no table
    assert invoke("create-table", db, "../evil")[0] == 2                 # bad name
    assert invoke("create-table", db, "users")[0] == 3                   # exists
    assert invoke("put", db, "users", "zz", "v", "--hex")[0] == 2        # bad hex
    assert invoke("put", db, "users", "k" * 100_000, "v")[0] == 2        # key too long
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("x")
    code, _, err = invoke("tables", str(tmp_path / "plain"))
    assert code == 5 and "not a Lamina database" in err


@pytest.mark.unchecked_db("flips a byte in every page of data.lamina")
def test_check_reports_corruption_with_exit_7(db: str) -> None:
    for i in range(300):
        invoke("put", db, "users", f"key{i:05d}", "v" * 50)
    data = Path(db) / "data.lamina"
    raw = bytearray(data.read_bytes())
    page = 4096
    for pgno in range(2, len(raw) // page):  # every page but the two meta pages
        raw[pgno * page + 200] ^= 0xFF
    data.write_bytes(bytes(raw))
    code, out, _ = invoke("check", db, "--json")
    report = json.loads(out)
    assert code == 7 and report["ok"] is False
    assert any("page" in f["where"] for f in report["findings"])


def test_real_process_exit_code_and_one_line_error(tmp_path: Path) -> None:
    proc = cli.run("get", str(tmp_path / "x"), "t", "k", timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lamina: ")
