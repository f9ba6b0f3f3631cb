"""``lamina list --points`` and ``lamina restore --repo --at TIME`` (ISO, epoch, now,
relative), in-process."""

from __future__ import annotations

import json
from pathlib import Path

import lamina
from lamina.repository import Repository
from lamina.repository.levels import LevelPolicy
from lamina.repository.replicate import ReplicateOptions, Replicator
from lamina.repository.timespec import iso_ns
from support import cli

from .helpers import S, vp_clock

T0 = 1_800_000_000 * S


def _replicated(tmp_path: Path, clocked: bool,
                url: str | None = None) -> tuple[Repository, list[int]]:
    repo = Repository.init(url or tmp_path / "repo")
    seqs = []
    with lamina.open(tmp_path / "db") as db:
        db.create_table("t")
        if clocked:
            with vp_clock(T0) as clock:
                rep = Replicator(db, repo, ReplicateOptions(policy=LevelPolicy(full_fraction=0)),
                                 clock=lambda: clock.now_ns)
                for i in range(3):
                    db.put("t", b"k", b"%d" % i)
                    clock.now_ns += 10 * S
                    rep.step()
                    seqs.append(rep.status.last_vp_seq or 0)
        else:
            rep = Replicator(db, repo)
            for i in range(2):
                db.put("t", b"k", b"%d" % i)
                rep.step()
                seqs.append(rep.status.last_vp_seq or 0)
    return repo, seqs


def _value(path: Path) -> bytes | None:
    with lamina.open(path, create=False, readonly=True) as db:
        return db.get("t", b"k")


def test_list_points_and_restore_at_a_listed_time(repo_url: str, tmp_path: Path) -> None:
    """On a local and on an S3 repository."""
    repo, seqs = _replicated(tmp_path, clocked=True, url=repo_url)
    code, out, err = cli.invoke("list", "--repo", repo.url, "--points", "--json")
    assert code == 0, err
    points = json.loads(out)["points"]
    assert [p["vp_seq"] for p in points] == seqs
    assert [p["vp_time_ns"] for p in points] == [T0 + 10 * S, T0 + 20 * S, T0 + 30 * S]
    assert [p["images"] for p in points] == [1, 2, 3]
    code, text, err = cli.invoke("list", "--repo", repo.url, "--points")
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0].startswith("VP TIME (UTC)") and len(lines) == 4
    assert points[1]["vp_time"] in lines[2] and points[1]["id"] in lines[2]
    code, out, err = cli.invoke("restore", "--repo", repo.url, "--at",
                                points[1]["vp_time"], "--to", str(tmp_path / "p1"), "--json")
    assert code == 0, err
    assert json.loads(out)["backup_id"] == points[1]["id"] and _value(tmp_path / "p1") == b"1"
    between = iso_ns(T0 + 25 * S)
    code, out, err = cli.invoke("restore", "--repo", repo.url, "--at", between,
                                "--to", str(tmp_path / "b"), "--json")
    assert code == 0 and json.loads(out)["backup_id"] == points[1]["id"], err
    code, out, err = cli.invoke("restore", "--repo", repo.url, "--at",
                                str((T0 + 30 * S) // S), "--to", str(tmp_path / "e"))
    assert code == 0 and _value(tmp_path / "e") == b"2", err
    code, out, err = cli.invoke("restore", "--repo", repo.url, "--at",
                                iso_ns(T0 + 5 * S), "--to", str(tmp_path / "none"))
    assert code == 3 and "no point at or before" in err
    code, out, err = cli.invoke("restore", "--repo", repo.url, "--at", "now",
                                "--id", points[0]["id"], "--to", str(tmp_path / "x"))
    assert code == 2 and "not both" in err


def test_restore_at_relative_times(tmp_path: Path) -> None:
    repo, seqs = _replicated(tmp_path, clocked=False)
    code, out, err = cli.invoke("restore", "--repo", str(repo.path), "--at", "now",
                                "--to", str(tmp_path / "now"), "--json")
    assert code == 0 and json.loads(out)["vp_commit_seq"] == seqs[-1], err
    code, _, err = cli.invoke("restore", "--repo", str(repo.path), "--at", "1h ago",
                              "--to", str(tmp_path / "old"))
    assert code == 3 and "no point at or before" in err
    code, _, err = cli.invoke("restore", "--repo", str(repo.path), "--at", "-1x",
                              "--to", str(tmp_path / "bad"))
    assert code == 2 and "not a duration" in err
    code, out, err = cli.invoke("list", "--repo", str(repo.path), "--points", "--database",
                                "ffff", "--json")
    assert code == 0 and json.loads(out)["points"] == []
