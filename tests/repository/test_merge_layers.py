"""Repository.merge_layers: a layer rewritten in place as one layer on an ancestor, on local
and S3 repositories, plain and encrypted; every point restores as before; bad requests are
refused and change nothing."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import lamina
from lamina.database import Database
from lamina.errors import ChainError, CorruptionError
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


def test_damaged_segment_image_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with _db(tmp_path) as db:
        points = _chain(repo, db, 3)
    ids = [p[0] for p in points]
    image = tmp_path / "repo" / "images" / f"{ids[2]}.lamina"
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the chunks: header and manifest still read
    image.write_bytes(bytes(raw))
    before = (tmp_path / "repo" / "images" / f"{ids[3]}.lamina").read_bytes()
    with pytest.raises(CorruptionError):
        repo.merge_layers(ids[3], ids[0])
    assert (tmp_path / "repo" / "images" / f"{ids[3]}.lamina").read_bytes() == before
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []


#: (kind, a, b): "layer" on point a (a fraction of the points so far), or "merge" of point
#: a onto point b (fractions again; any pair, valid or not).
actions = st.lists(st.tuples(st.sampled_from(["layer", "layer", "merge"]),
                             st.floats(0, 1), st.floats(0, 1)), min_size=4, max_size=14)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_merges_against_a_model_of_the_tree(plan: list[tuple[str, float, float]]) -> None:
    """Points form a tree (layers on any earlier point, as the replicator's levels make);
    random merges, valid or not: each valid one re-parents exactly that point in the
    model, each invalid one is a ChainError that changes nothing; at the end every point's
    chain is the model's and restores its state."""
    with tempfile.TemporaryDirectory(prefix="lamina-merge-hyp-") as tmp:
        root = Path(tmp)
        repo = Repository.init(root / "repo")
        parent: dict[uuid.UUID, uuid.UUID | None] = {}
        states: dict[uuid.UUID, State] = {}
        order: list[uuid.UUID] = []
        with _db(root) as db:
            for n, (kind, a, b) in enumerate([("layer", 0.0, 0.0), *plan]):
                if kind == "layer" or not order:
                    with db.write() as txn:
                        for k in range(10):
                            txn.table("t").put(f"{n}-{k}".encode(), bytes([n]) * 60)
                    db.append_many("log", [f"{n}".encode()] * 5)
                    if n % 4 == 3:
                        db.archive("log").optimize()
                    # Mostly on the newest point (deep chains), else on any earlier one.
                    base = (None if not order else order[-1] if a > 0.4
                            else order[int(a / 0.4 * (len(order) - 1))])
                    got = repo.backup(db, full=base is None,
                                      base=None if base is None else str(base)).backup_id
                    parent[got] = base
                    states[got] = _state_of(db)
                    order.append(got)
                    continue
                layer = order[int(a * (len(order) - 1))]
                ancestors = []
                p = parent[layer]
                while p is not None:
                    ancestors.append(p)
                    p = parent[p]
                # Mostly an ancestor beyond its base, else any point (then mostly refused).
                if b >= 0.2 and len(ancestors) > 1:
                    onto = ancestors[1 + int((b - 0.2) / 0.8 * (len(ancestors) - 2))]
                elif b >= 0.2 and ancestors:
                    onto = ancestors[0]
                else:
                    onto = order[int(min(b * 5, 1.0) * (len(order) - 1))]
                if parent[layer] is None or onto not in ancestors:
                    with pytest.raises(ChainError):
                        repo.merge_layers(layer, onto)
                    event("merge refused")
                    continue
                event("merge onto the direct base" if onto == parent[layer] else "merge")
                repo.merge_layers(layer, onto)
                parent[layer] = onto
        chains = {e.record.backup_id: e.chain for e in repo.list()[0]}
        for point in order:
            want = [point]
            while (up := parent[want[-1]]) is not None:
                want.append(up)
            assert chains[point] == tuple(reversed(want))
            dest = root / f"r-{point}"
            repo.restore(dest, str(point))
            assert _state_at(dest) == states[point]
        assert repo.verify().ok
