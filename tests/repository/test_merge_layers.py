"""Repository.merge_layers: a layer rewritten in place as one layer on an ancestor, on local
and S3 repositories, plain and encrypted; every point restores as before; bad requests are
refused and change nothing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import lamina
from lamina.database import Database
from lamina.errors import ChainError
from lamina.repository import Repository
from lamina.repository.index import ImageRecord

State = tuple[dict[bytes, bytes], list[bytes]]


def _state_of(db: Database) -> State:
    with db.read() as txn:
        items = dict(txn.table("t").items())
    return items, [row for _id, row in db.scan("log")]


def _state_at(path: Path) -> State:
    with lamina.open(path, create=False, readonly=True) as db:
        assert db.check().ok
        return _state_of(db)


def _chain(repo: Repository, db: Database, layers: int) -> list[tuple[uuid.UUID, State]]:
    """A full and ``layers`` layers, each on the one before, with the state at each."""
    points: list[tuple[uuid.UUID, State]] = []
    for n in range(layers + 1):
        with db.write() as txn:
            t = txn.table("t")
            for k in range(40):
                t.put(f"k{n}-{k}".encode(), bytes([n]) * (30 + k))
            if n:
                t.delete(f"k{n - 1}-3".encode())
        db.append_many("log", [f"row {n}-{r}".encode() for r in range(25)])
        if n == 2:
            db.archive("log").optimize()
        base = None if not points else str(points[-1][0])
        result = repo.backup(db, full=not points, base=base)
        points.append((result.backup_id, _state_of(db)))
    return points


def _db(tmp_path: Path) -> Database:
    db = lamina.open(tmp_path / "db", page_size=1024, sync=False)
    db.create_table("t")
    db.create_table("log", "archive")
    return db


def _restores(repo: Repository, points: list[tuple[uuid.UUID, State]], where: Path) -> None:
    for n, (backup_id, state) in enumerate(points):
        dest = where / f"restore-{uuid.uuid4().hex[:8]}-{n}"
        repo.restore(dest, str(backup_id), check=True)
        assert _state_at(dest) == state, n


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_merge_layers_in_place(repo_url: str, tmp_path: Path, encrypted: bool) -> None:
    secret = b"pw" if encrypted else None
    Repository.init(repo_url, passphrase=secret)
    repo = Repository.open(repo_url, passphrase=lambda: b"pw")
    with _db(tmp_path) as db:
        points = _chain(repo, db, 5)  # F L1 L2 L3 L4 L5
        ids = [p[0] for p in points]
        before = {r.backup_id: r for r in (e.record for e in repo.list()[0])}
        record: ImageRecord = repo.merge_layers(ids[4], ids[1])  # L4 becomes a layer on L1
        assert record.backup_id == ids[4] and record.image_id == before[ids[4]].image_id
        assert record.base_image_id == before[ids[1]].image_id
        assert record.vp_seq == before[ids[4]].vp_seq
        assert record.size <= sum(before[i].size for i in ids[2:5])
        entries = {e.record.backup_id: e for e in repo.list()[0]}
        assert entries[ids[5]].chain == (ids[0], ids[1], ids[4], ids[5])
        assert entries[ids[3]].chain == (ids[0], ids[1], ids[2], ids[3])  # L2, L3 stay
        _restores(repo, points, tmp_path)
        onto_full = repo.merge_layers(str(ids[5]), str(ids[0]))  # the full as the base
        assert onto_full.base_image_id == before[ids[0]].image_id
        assert {e.record.backup_id: e for e in repo.list()[0]}[ids[5]].chain == (ids[0],
                                                                                  ids[5])
        _restores(repo, points, tmp_path)
        report = repo.verify(deep=True)
        assert report.ok, report.to_json()
        # Layers taken on the merged one still link and restore.
        db.append_many("log", [b"after"])
        after = repo.backup(db, base=str(ids[5]))
        points.append((after.backup_id, _state_of(db)))
        _restores(repo, points[-2:], tmp_path)


def test_merge_layers_refuses_what_is_not_a_strict_ancestor(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with _db(tmp_path) as db:
        points = _chain(repo, db, 3)
        ids = [p[0] for p in points]
        other = repo.backup(db, base=str(ids[1]))  # a branch: L1 <- X
        listing = sorted((e.record.to_json() for e in repo.list()[0]),
                         key=lambda r: r["backup_id"])
        for backup, onto in ((ids[3], other.backup_id), (ids[1], ids[3]), (ids[2], ids[2]),
                             (ids[0], ids[0]), (ids[3], ids[3])):
            with pytest.raises(ChainError):
                repo.merge_layers(backup, onto)
        assert repo.merge_layers(ids[2], ids[1]).backup_id == ids[2]  # already its base
        assert sorted((e.record.to_json() for e in repo.list()[0]),
                      key=lambda r: r["backup_id"]) == listing
        _restores(repo, points, tmp_path)
