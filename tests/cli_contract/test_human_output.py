"""Issue 10, item 11: human output like restic's — ISO 8601 times, one unit system
(KiB/MiB/GiB) in bars, summaries and ``stat`` alike, no Python reprs; one JSON field name
per quantity; progress shows its phase; ``backup DB -`` refuses a terminal on stdout."""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest

import lamina
from lamina.repository import Repository
from support import cli

from .helpers import ISO_TIME, diff_trees, lines, make_big, make_shop, tree

#: What a Python repr looks like in text output: a dict, a list, None, True/False.
REPR = re.compile(r"[{}\[\]]|\bNone\b|\bTrue\b|\bFalse\b")
#: A size in a unit other than B/KiB/MiB/GiB/TiB (kB, MB, bytes, ...).
OTHER_UNIT = re.compile(r"\d\s*(kB|KB|MB|GB|bytes)\b")
#: An epoch time in seconds or ns printed as a number.
EPOCH = re.compile(r"\b1[6-9]\d{8}(\.\d+|\d{9})\b")


@pytest.fixture()
def shop(tmp_path: Path) -> tuple[Path, Path]:
    db = make_shop(tmp_path / "shop.db", keys=2000, rows=500)
    image = tmp_path / "shop.lamina"
    with lamina.open(db) as handle:
        handle.backup(image)
    return db, image


def _text(*args: str) -> str:
    result = cli.invoke(*args)
    assert result.code == 0, (args, result)
    return result.stdout + result.stderr


def test_text_output_has_iso_times_one_unit_system_and_no_reprs(
        shop: tuple[Path, Path], tmp_path: Path, repo_url: str) -> None:
    db, image = shop
    repo = repo_url
    Repository.init(repo)
    outputs = {
        "backup": _text("backup", str(db), str(tmp_path / "b.lamina")),
        "info": _text("info", str(image)),
        "check": _text("check", str(db)),
        "stat": _text("stat", str(db)),
        "history": _text("history", str(db)),
        "restore": _text("restore", str(image), "--to", str(tmp_path / "copy.db")),
        "backup --repo": _text("backup", str(db), "--repo", repo),
        "list": _text("list", "--repo", repo),
        "optimize": _text("optimize", str(db), "events"),
    }
    for name, text in outputs.items():
        assert not REPR.search(text), f"{name} prints a Python repr: {REPR.search(text)}\n{text}"
        assert not OTHER_UNIT.search(text), f"{name} uses another unit:\n{text}"
        assert not EPOCH.search(text), f"{name} prints an epoch time:\n{text}"
    for name in ("backup", "info", "stat", "history", "restore", "list"):
        assert ISO_TIME.search(outputs[name]), f"{name} shows no ISO 8601 time:\n{outputs[name]}"
    assert re.search(r"commit blocker held \d+\.\d{3} ms", outputs["backup"])
    stat = dict(line.split(None, 1) for line in lines(outputs["stat"]))
    assert stat["btree.file_size"].endswith("KiB") and stat["btree.page_size"] == "4.0 KiB"


def test_one_json_field_name_per_quantity(shop: tuple[Path, Path], tmp_path: Path) -> None:
    """The commit blocker's hold time is ``blocker_held_ms`` in every command's JSON."""
    db, image = shop

    def keys(obj: object) -> set[str]:
        if isinstance(obj, dict):
            return set(obj) | {k for v in obj.values() for k in keys(v)}
        if isinstance(obj, list):
            return {k for v in obj for k in keys(v)}
        return set()

    docs = {name: json.loads(cli.invoke(*args, "--json").stdout) for name, args in {
        "backup": ("backup", str(db), str(tmp_path / "b.lamina")),
        "info": ("info", str(image)),
        "history": ("history", str(db)),
    }.items()}
    for name, doc in docs.items():
        found = keys(doc)
        assert "blocker_held_ms" in found, name
        assert not {k for k in found if k.startswith("blocker_") and k.endswith("_ns")}, name


def test_sizes_use_one_helper() -> None:
    from lamina.cli.common import human_bytes, transfer_text

    assert human_bytes(1536) == "1.5 KiB" and human_bytes(3 << 30) == "3.0 GiB"
    assert transfer_text(1536, 2 << 20) == "1.5 KiB / 2.0 MiB"
    assert transfer_text(512, None) == "512 B"


def _pty(cols: int = 200) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    return master, slave


def _drain(master: int) -> bytes:
    out = b""
    while True:
        try:
            piece = os.read(master, 65536)
        except OSError:  # EIO: every slave end is closed
            return out
        if not piece:
            return out
        out += piece


def test_backup_to_a_terminal_is_refused(shop: tuple[Path, Path]) -> None:
    db, _ = shop
    before = tree(db.parent)
    master, slave = _pty()
    try:
        proc = subprocess.run([*cli.LAMINA, "backup", str(db), "-"], stdout=slave,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(slave)
    written = _drain(master)
    os.close(master)
    assert proc.returncode == 2, proc.stderr
    assert len(lines(proc.stderr.decode())) == 1 and b"terminal" in proc.stderr
    assert written == b"", "nothing goes to the terminal"
    assert diff_trees(before, tree(db.parent)) == "", "no backup was started"


def test_restore_progress_shows_its_phases(tmp_path: Path) -> None:
    db = make_big(tmp_path / "big.db", keys=50_000)
    image = tmp_path / "big.lamina"
    with lamina.open(db) as handle:
        handle.backup(image, codec="none")
    master, slave = _pty()
    try:
        proc = subprocess.Popen([*cli.LAMINA, "restore", str(image), "--to",
                                 str(tmp_path / "copy.db"), "--progress"],
                                stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    drawn = _drain(master).decode(errors="replace")
    os.close(master)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert "restore: copying" in drawn
    assert "restore: proving the root hash, checking" in drawn
    assert "MiB" in drawn and not OTHER_UNIT.search(drawn)
