"""``lamina backup --vp begin|end``: output, pipes, repositories and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import lamina
from lamina.backup.image_reader import read_info
from lamina.core.driver import DriverKind
from support import cli
from support.rawstore import RawStore


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    cli.run_ok("create-table", str(path), "t", "--engine", "btree")
    cli.run_ok("create-table", str(path), "a", "--engine", "archive")
    for i in range(5):
        cli.run_ok("put", str(path), "t", f"k{i}", f"v{i}")
        cli.run_ok("append", str(path), "a", f"row{i}")
    return path


def test_vp_end_json_and_human_output(tmp_path: Path) -> None:
    db = _db(tmp_path)
    proc = cli.run_ok("backup", str(db), str(tmp_path / "e.img"), "--vp", "end", "--json",
                      "--no-progress")
    out = json.loads(proc.stdout)
    assert out["vp"] == "end" and out["vp_age_ms"] >= 0
    assert {d.kind for d in read_info(tmp_path / "e.img").catalog.drivers} == {
        DriverKind.AT_END}
    proc = cli.run_ok("backup", str(db), str(tmp_path / "b.img"), "--no-progress")
    assert "(--vp begin; VP age at completion " in proc.stdout
    assert json.loads(cli.run_ok("backup", str(db), str(tmp_path / "l.img"), "--vp", "end",
                                 "--base", str(tmp_path / "b.img"), "--json",
                                 "--no-progress").stdout)["vp"] == "end"
    # An at-end layer on an at-begin full image: the chain verifies deep and restores.
    cli.run_ok("verify", str(tmp_path / "b.img"), str(tmp_path / "l.img"), "--deep")
    cli.run_ok("restore", str(tmp_path / "b.img"), str(tmp_path / "l.img"), "--to",
               str(tmp_path / "r"), "--no-progress")
    with lamina.open(tmp_path / "r", create=False, readonly=True) as r:
        assert [row for _i, row in r.scan("a")] == [f"row{i}".encode() for i in range(5)]


def test_vp_end_image_through_a_pipe_and_deep_verify(tmp_path: Path) -> None:
    db = _db(tmp_path)
    image = cli.run_bytes("backup", str(db), "-", "--vp", "end", "--no-progress")
    assert image.returncode == 0, image.stderr
    verify = cli.run_bytes("verify", "-", "--deep", "--json", input=image.stdout)
    assert verify.returncode == 0 and json.loads(verify.stdout)["deep"] is True
    restore = cli.run_bytes("restore", "-", "--to", str(tmp_path / "r"), "--no-progress",
                            input=image.stdout)
    assert restore.returncode == 0, restore.stderr
    with lamina.open(tmp_path / "r", create=False, readonly=True) as r, r.read() as txn:
        assert txn.table("t").get(b"k4") == b"v4"


def test_vp_end_into_a_repository(tmp_path: Path, repo_url: str) -> None:
    db = _db(tmp_path)
    repo = repo_url
    cli.run_ok("repo", "init", repo)
    first = json.loads(cli.run_ok("backup", str(db), "--repo", repo, "--vp", "end",
                                  "--json", "--no-progress").stdout)
    cli.run_ok("put", str(db), "t", "k9", "v9")
    second = json.loads(cli.run_ok("backup", str(db), "--repo", repo, "--vp", "end",
                                   "--json", "--no-progress").stdout)
    assert (first["kind"], second["kind"], second["vp"]) == ("full", "layer", "end")
    assert second["base"] == first["backup_id"]
    proc = cli.run("backup", str(db), "--repo", repo, "--vp", "end", "--no-progress")
    assert proc.returncode == 0 and "VP age at completion" in proc.stderr
    cli.run_ok("verify", "--repo", repo, "--deep")
    cli.run_ok("restore", "--repo", repo, "--to", str(tmp_path / "r"), "--no-progress")
    with lamina.open(tmp_path / "r", create=False, readonly=True) as r, r.read() as txn:
        assert txn.table("t").get(b"k9") == b"v9"
    # Pruning merges the at-end chain into a synthetic full image of "at begin" streams.
    cli.run_ok("prune", "--repo", repo, "--keep-last", "1")
    listed = json.loads(cli.run_ok("list", "--repo", repo, "--json").stdout)
    assert len(listed["backups"] if isinstance(listed, dict) else listed) == 1
    cli.run_ok("verify", "--repo", repo, "--deep")
    cli.run_ok("restore", "--repo", repo, "--to", str(tmp_path / "r2"), "--no-progress")
    with lamina.open(tmp_path / "r2", create=False, readonly=True) as r, r.read() as txn:
        assert txn.table("t").get(b"k9") == b"v9"
    raw = RawStore(repo)
    (key,) = raw.names("images/")
    merged = tmp_path / "merged.lamina"
    merged.write_bytes(raw.read(key))
    assert {d.kind for d in read_info(merged).catalog.drivers} == {DriverKind.AT_BEGIN}


def test_bad_vp_choices_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    db = _db(tmp_path)
    proc = cli.run("backup", str(db), str(tmp_path / "x.img"), "--vp", "middle")
    assert proc.returncode == 2 and not (tmp_path / "x.img").exists()
    proc = cli.run("backup", str(db), str(tmp_path / "x.img"), "--vp", "end", "--driver",
                   "snapshot", "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--vp end needs native drivers" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.img").exists()
