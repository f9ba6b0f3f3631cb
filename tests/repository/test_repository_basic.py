"""Round trips and bad input: init, backup --repo, list, restore --repo, verify --repo.

API calls in-process; the CLI contract (output, exit codes) through real processes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    NotADatabaseError,
    NotFoundError,
    UsageError,
    VersionError,
)
from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from support import cli

from .helpers import DAY_NS, content, make_db, vp_clock


def test_api_round_trip_with_fulls(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    states = []
    with make_db(tmp_path / "db") as db:
        for i in range(3):
            db.put("t", b"k%d" % i, b"v%d" % i)
            result = repo.backup(db, full=True)
            assert result.kind == "full" and result.base_id is None
            states.append((result.backup_id, dict(content_of(db))))
    entries, rebuilt = repo.list()
    assert rebuilt is None
    assert [e.record.backup_id for e in entries] == [b for b, _ in states]
    for backup_id, expected in states:
        out = tmp_path / f"out-{backup_id}"
        restored = repo.restore(out, id=str(backup_id))
        assert restored.backup_id == backup_id and restored.chain == (backup_id,)
        assert content(out) == expected
    latest = repo.restore(tmp_path / "latest")
    assert latest.backup_id == states[-1][0]
    report = repo.verify()
    assert report.ok and len(report.results) == 3


def content_of(db: object) -> dict[bytes, bytes]:
    from lamina.database import Database
    assert isinstance(db, Database)
    with db.read() as txn:
        return dict(txn.table("t").items())


def test_backup_picks_full_for_a_new_database_and_on_request(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    with make_db(tmp_path / "a") as a, make_db(tmp_path / "b") as b:
        first = repo.backup(a)
        assert first.kind == "full" and "no backup of database" in first.reason
        other = repo.backup(b)  # a different database never builds on a's backups
        assert other.kind == "full" and "no backup of database" in other.reason
        forced = repo.backup(a, full=True)
        assert forced.kind == "full" and forced.reason == "full requested"


def test_restore_at_time_and_database_choice(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    t0 = 1_700_000_000 * 10**9
    ids = []
    with make_db(tmp_path / "a") as a, vp_clock(t0) as clock:
        for day in range(3):
            clock.now_ns = t0 + day * DAY_NS
            a.put("t", b"day", str(day).encode())
            ids.append(repo.backup(a, full=True).backup_id)
    # --at picks the newest backup at or before the time (epoch seconds or ISO 8601).
    got = repo.restore(tmp_path / "r1", at=(t0 + DAY_NS) / 1e9 + 3600)
    assert got.backup_id == ids[1] and content(tmp_path / "r1") == {b"day": b"1"}
    got = repo.restore(tmp_path / "r2", at="2023-11-14T22:13:20Z")  # == t0
    assert got.backup_id == ids[0]
    with pytest.raises(NotFoundError):
        repo.restore(tmp_path / "r3", at="2000-01-01")
    # A second database makes "latest" ambiguous until one is chosen.
    with make_db(tmp_path / "b") as b:
        db_b = str(b.identity.db_id)
        repo.backup(b)
    with pytest.raises(UsageError, match="--database"):
        repo.restore(tmp_path / "r4")
    with make_db(tmp_path / "a") as a:
        db_a = str(a.identity.db_id)
    assert repo.restore(tmp_path / "r5", database=db_a[:8]).backup_id == ids[-1]
    assert repo.restore(tmp_path / "r6", database=db_b).backup_id not in ids


def test_cli_round_trip(repo_url: str, tmp_path: Path) -> None:
    repo, db = repo_url, str(tmp_path / "db")
    assert cli.run("repo", "init", repo).returncode == 0
    assert cli.run("create-table", db, "t").returncode == 0
    assert cli.run("put", db, "t", "a", "1").returncode == 0
    proc = cli.run("backup", db, "--repo", repo, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.strip()
    assert str(uuid.UUID(first)) == first  # prints the backup id, alone
    assert cli.run("put", db, "t", "b", "2").returncode == 0
    proc = cli.run("backup", db, "--repo", repo, "--full", "--json")
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert second["kind"] == "full" and second["reason"] == "full requested"
    proc = cli.run("list", "--repo", repo, "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)["backups"]
    assert [b["id"] for b in listed] == [first, second["backup_id"]]
    for b in listed:
        assert {"kind", "base", "database_id", "vp_time", "vp_seq", "size",
                "chain_size"} <= set(b)
    text = cli.run("list", "--repo", repo)
    assert text.returncode == 0 and first in text.stdout
    proc = cli.run("restore", "--repo", repo, "--id", first[:8], "--to", str(tmp_path / "r1"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    assert content(tmp_path / "r1") == {b"a": b"1"}
    proc = cli.run("restore", "latest", "--repo", repo, "--to", str(tmp_path / "r2"))
    assert proc.returncode == 0, proc.stderr
    assert content(tmp_path / "r2") == {b"a": b"1", b"b": b"2"}
    proc = cli.run("verify", "--repo", repo)
    assert proc.returncode == 0 and proc.stdout.count("ok: backup") == 2, proc.stdout
    proc = cli.run("verify", "--repo", repo, "--id", first, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"]


def test_bad_input_one_line_and_distinct_exit_codes(repo_url: str, tmp_path: Path) -> None:
    repo = repo_url
    db = tmp_path / "db"
    with make_db(db) as d:
        d.put("t", b"k", b"v")
    assert cli.run("repo", "init", repo).returncode == 0
    assert cli.run("backup", str(db), "--repo", repo).returncode == 0

    def fails(code: int, *args: str) -> str:
        proc = cli.run(*args)
        assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lamina: "), proc.stderr
        return lines[0]

    # init twice, unknown id, missing repository, foreign directory (here: a database).
    assert "already" in fails(3, "repo", "init", repo)
    assert "no backup" in fails(3, "restore", "--repo", repo, "--id", str(uuid.uuid4()),
                                "--to", str(tmp_path / "x"))
    fails(3, "list", "--repo", str(tmp_path / "nowhere"))
    assert "not a Lamina repository" in fails(5, "list", "--repo", str(db))
    # Usage: both an image and --repo, --tables with --repo.
    fails(2, "backup", str(db), str(tmp_path / "img"), "--repo", repo)
    fails(2, "backup", str(db), "--repo", repo, "--tables", "t")
    fails(2, "prune", "--repo", repo)  # a policy that keeps nothing
    # A repository of a newer format, and a damaged config.
    storage = Repository.open(repo).storage
    config = json.loads(storage.get_bytes(L.CONFIG_KEY))
    newer = {**config, "version": L.FORMAT_VERSION + 1}
    storage.put_bytes(L.CONFIG_KEY, json.dumps(newer).encode())
    assert "format 2" in fails(6, "list", "--repo", repo)
    damaged = {**config, "chain_limit": 99}
    storage.put_bytes(L.CONFIG_KEY, json.dumps(damaged).encode())
    assert "checksum" in fails(4, "list", "--repo", repo)
    storage.put_bytes(L.CONFIG_KEY, json.dumps(config).encode())
    assert cli.run("list", "--repo", repo).returncode == 0  # nothing was lost


def test_api_errors(repo_url: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Repository.open(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "file.txt").write_text("hello")
    with pytest.raises(NotADatabaseError):
        Repository.open(tmp_path / "foreign")
    with pytest.raises(AlreadyExistsError):
        Repository.init(tmp_path / "foreign")  # not empty: never mixed into
    (tmp_path / "foreign" / L.CONFIG_KEY).write_text("not json")
    with pytest.raises(NotADatabaseError):
        Repository.open(tmp_path / "foreign")
    repo = Repository.init(repo_url, chain_limit=3)
    assert Repository.open(repo_url).config.chain_limit == 3
    cfg = repo.storage.get_bytes(L.CONFIG_KEY)
    repo.storage.put_bytes(L.CONFIG_KEY, cfg.replace(b'"version":1', b'"version":7'))
    with pytest.raises(VersionError):
        Repository.open(repo_url)
    repo.storage.put_bytes(L.CONFIG_KEY, cfg.replace(b'"chain_limit":3', b'"chain_limit":4'))
    with pytest.raises(CorruptionError):
        Repository.open(repo_url)
    repo.storage.put_bytes(L.CONFIG_KEY, cfg)
    with pytest.raises(NotFoundError):
        repo.restore(tmp_path / "x")  # an empty repository
    with pytest.raises(UsageError):
        repo.restore(tmp_path / "x", id="ab")  # prefix too short


def test_layer_whose_base_is_missing_is_a_chain_error(repo_url: str, tmp_path: Path) -> None:
    """A layer whose base left the repository: listed as broken, restore and verify say
    so with exit 11, and the next backup is a full."""
    repo = Repository.init(repo_url)
    with make_db(tmp_path / "db") as db:
        full = repo.backup(db, full=True)
        db.put("t", b"more", b"x")
        taken = repo.backup(db)
        assert taken.kind == "layer" and taken.base_id == full.backup_id
        layer = taken.backup_id
        # Remove the base behind the repository's back.
        repo.storage.delete(L.image_key(full.backup_id))
        entries, rebuilt = repo.list()
        assert rebuilt is not None and "gone" in rebuilt
        (entry,) = entries
        assert entry.record.backup_id == layer and entry.chain is None
        assert entry.problem is not None and "missing" in entry.problem
        with pytest.raises(ChainError):
            repo.restore(tmp_path / "out", id=str(layer))
        report = repo.verify()
        assert not report.ok and isinstance(report.first_error, ChainError)
        nxt = repo.backup(db)
        assert nxt.kind == "full"
    proc = cli.run("verify", "--repo", repo_url)
    assert proc.returncode == 11, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "missing" in proc.stdout
    proc = cli.run("restore", "--repo", repo_url, "--id", str(layer), "--to",
                   str(tmp_path / "o2"))
    assert proc.returncode == 11 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()


def test_backup_picks_layer_or_full(repo_url: str, tmp_path: Path) -> None:
    """None -> full; then layers on the newest; --full; the chain limit; per database."""
    repo = Repository.init(repo_url, chain_limit=2)
    states: dict[uuid.UUID, dict[bytes, bytes]] = {}
    kinds = []
    prev: uuid.UUID | None = None
    with make_db(tmp_path / "a") as a, make_db(tmp_path / "b") as b:
        for i, full in enumerate([False, False, False, False, True, False]):
            a.put("t", b"k%d" % (i % 2), b"v%d" % i)
            r = repo.backup(a, full=full)
            kinds.append((r.kind, r.reason))
            states[r.backup_id] = content_of(a)
            if r.kind == "layer":
                assert r.base_id == prev
            prev = r.backup_id
        other = repo.backup(b)  # b has no backup yet: a full, never a layer on a's
        assert other.kind == "full"
        again = repo.backup(b)
        assert again.kind == "layer" and again.base_id == other.backup_id
    assert [k for k, _ in kinds] == ["full", "layer", "layer", "full", "full", "layer"]
    assert "no backup of database" in kinds[0][1] and kinds[1][1].startswith("layer 1 on")
    assert "has 2 layer(s) (limit 2)" in kinds[3][1] and kinds[4][1] == "full requested"
    entries, _ = repo.list()
    by_id = {e.record.backup_id: e for e in entries}
    for backup_id, expected in states.items():
        e = by_id[backup_id]
        assert e.chain is not None and e.chain[-1] == backup_id
        assert e.chain_bytes >= e.record.size
        out = tmp_path / f"out-{backup_id}"
        restored = repo.restore(out, id=str(backup_id))
        assert restored.chain == e.chain
        assert content(out) == expected
    assert repo.verify().ok
    assert repo.verify(deep=True).ok


def test_prune_merges_a_kept_layer_into_a_synthetic_full(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    ids = []
    with make_db(tmp_path / "db") as db:
        for i in range(4):  # F L1 L2 L3
            db.put("t", b"k%d" % i, b"v%d" % i)
            ids.append(repo.backup(db).backup_id)
        expected = content_of(db)
        result = repo.prune(KeepPolicy(last=1))
        assert result.plan.done_merges == [ids[3]]
        assert set(result.plan.done_deletes) == set(ids[:3])
        (entry,) = repo.list()[0]
        assert entry.record.backup_id == ids[3] and entry.record.synthetic
        assert entry.record.kind == "full" and entry.chain == (ids[3],)
        repo.restore(tmp_path / "merged", id=str(ids[3]))  # the kept id still resolves
        assert content(tmp_path / "merged") == expected
        # The next backup is a layer on the synthetic full, and its chain restores.
        db.put("t", b"after", b"merge")
        nxt = repo.backup(db)
        assert nxt.kind == "layer" and nxt.base_id == ids[3]
        after = content_of(db)
    restored = repo.restore(tmp_path / "after", id=str(nxt.backup_id))
    assert restored.chain == (ids[3], nxt.backup_id)
    assert content(tmp_path / "after") == after
    assert repo.verify(deep=True).ok
    proc = cli.run("list", "--repo", str(repo.url))
    assert proc.returncode == 0 and "full*" in proc.stdout


def test_repository_layer_never_imports_the_cli() -> None:
    """Layering (DESIGN.md): repository sits between cli and backup."""
    import ast

    import lamina.repository

    package = Path(lamina.repository.__file__).parent
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("lamina.cli", "click")), (module, name)


def test_prune_merges_under_a_layer_that_stays(repo_url: str, tmp_path: Path) -> None:
    """F L1 L2 L3, keep the last 2: L2 becomes a synthetic full under its own id, L3 stays
    a layer on it, F and L1 are freed — and both kept backups restore exactly."""
    repo = Repository.init(repo_url)
    ids, states = [], []
    with make_db(tmp_path / "db") as db:
        for i in range(4):
            db.put("t", b"k%d" % i, b"v%d" % i)
            ids.append(repo.backup(db).backup_id)
            states.append(content_of(db))
    result = repo.prune(KeepPolicy(last=2))
    assert result.plan.done_merges == [ids[2]]
    assert set(result.plan.done_deletes) == {ids[0], ids[1]}
    entries = {e.record.backup_id: e for e in repo.list()[0]}
    assert set(entries) == {ids[2], ids[3]}
    assert entries[ids[2]].record.synthetic and entries[ids[2]].record.kind == "full"
    assert entries[ids[3]].chain == (ids[2], ids[3])
    for i in (2, 3):
        repo.restore(tmp_path / f"r{i}", id=str(ids[i]))
        assert content(tmp_path / f"r{i}") == states[i]
    assert repo.verify(deep=True).ok


def test_a_restored_copy_never_layers_on_the_originals_later_backups(
        repo_url: str, tmp_path: Path) -> None:
    """The original keeps writing and backing up after a copy was restored from it; the
    copy's next repository backup must not become a layer on the original's newer backup
    (that restore would mix both histories)."""
    repo = Repository.init(repo_url)
    with make_db(tmp_path / "orig") as orig:
        orig.put("t", b"common", b"1")
        first = repo.backup(orig)
        repo.restore(tmp_path / "copy", id=str(first.backup_id))
        orig.put("t", b"orig-only", b"x")
        repo.backup(orig)  # a layer of the original, newer than the copy's VP
    with make_db(tmp_path / "copy") as copy:
        copy.put("t", b"copy-only", b"y")
        copy.put("t", b"copy-more", b"z")  # past the original's later backup's seq
        mine = repo.backup(copy)
        # Its own history: a layer on the image it was restored from, not on the original's
        # newer backup.
        assert mine.kind == "layer" and mine.base_id == first.backup_id
        expected = content_of(copy)
    repo.restore(tmp_path / "copy-restored", id=str(mine.backup_id))
    assert content(tmp_path / "copy-restored") == expected
