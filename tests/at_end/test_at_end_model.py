"""Property test: chains of at-begin and at-end images (full and layers, in image files or a
repository) restore to exactly the model's state at each VP, whatever happens during the
copy (btree puts and deletes, archive appends, an ``optimize``) and between backups.

Operations "during the copy" run at the backup's first chunk (its progress callback): for an
at-end backup that is the initial transfer, before the VP, so they are in the image; for an
at-begin backup it is after the VP, so they are not. Both engines, both kinds, mixed in one
chain; every prefix is restored (one pass) and deep-verified.
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from lamina import online
from lamina.database import Database
from lamina.repository.repository import Repository

Op = tuple[str, int, int]  # (kind, key or row count, value size)

ops = st.lists(st.tuples(st.sampled_from(["put", "put", "delete", "append", "optimize"]),
                         st.integers(0, 400), st.integers(0, 600)), max_size=6)
backups = st.lists(st.tuples(st.sampled_from(["begin", "end"]), ops, ops),
                   min_size=1, max_size=4)


@dataclass
class Model:
    """What the btree table ``t`` and the archive table ``a`` hold."""

    kv: dict[bytes, bytes] = field(default_factory=dict)
    rows: list[bytes] = field(default_factory=list)

    def copy(self) -> Model:
        return Model(dict(self.kv), list(self.rows))


def _apply(db: Database, model: Model, op: Op, n: int) -> None:
    kind, a, b = op
    key = b"k%04d" % a
    if kind == "put":
        value = b"%d:" % n + bytes([n % 251]) * b
        with db.write() as txn:
            txn.table("t").put(key, value)
        model.kv[key] = value
    elif kind == "delete":
        with db.write() as txn:
            txn.table("t").delete(key)
        model.kv.pop(key, None)
    elif kind == "append":
        rows = [b"%d/%d/" % (n, j) + bytes([j % 256]) * (b % 50) for j in range(a % 30 + 1)]
        db.append_many("a", rows)
        model.rows.extend(rows)
    else:
        db.archive("a").optimize()


def _content(path: Path) -> Model:
    with lamina.open(path, create=False, readonly=True) as db:
        assert db.check().ok  # the directory is removed before the teardown check
        with db.read() as txn:
            kv = dict(txn.table("t").items())
        return Model(kv, [row for _id, row in db.scan("a")])


@settings(max_examples=12, deadline=None)
@given(plan=backups, where=st.sampled_from(["files", "repository"]))
def test_mixed_chains_restore_to_the_model_at_each_vp(
        plan: list[tuple[str, list[Op], list[Op]]], where: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lamina-at-end-") as tmp:
        _run(Path(tmp), plan, where)


def _run(root: Path, plan: list[tuple[str, list[Op], list[Op]]], where: str) -> None:
    repo = Repository.init(root / "repo", chain_limit=10) if where == "repository" else None
    model = Model()
    serial = itertools.count()
    expected: list[Model] = []
    images: list[Path] = []
    ids: list[str] = []
    with lamina.open(root / "db", page_size=1024, sync=False) as db:
        db.create_table("t", engine="btree")
        db.create_table("a", engine="archive")
        for i in range(300):
            _apply(db, model, ("put", i, 150), next(serial))
        _apply(db, model, ("append", 20, 40), next(serial))
        for i, (vp, during, after) in enumerate(plan):
            before = model.copy()
            held: list[bool] = []

            def hold(done: int, total: int | None, during: list[Op] = during,
                     held: list[bool] = held) -> None:
                if not held:
                    held.append(True)
                    for op in during:
                        _apply(db, model, op, next(serial))

            if repo is None:
                image = root / f"img{i}"
                result = online.backup(db, image, vp=vp, progress=hold, buf_size=2048,
                                       base=images[-1] if images else None)
                images.append(image)
            else:
                got = repo.backup(db, vp=vp, progress=hold)
                ids.append(str(got.backup_id))
                result = got.result
            assert held
            expected.append(model.copy() if vp == "end" else before)
            assert online.describe(result)["vp"] == vp
            for op in after:
                _apply(db, model, op, next(serial))
        assert db.lockfile.live_slots() == []
    for k in range(1, len(plan) + 1):
        dest = root / f"restored{k}"
        if repo is None:
            online.restore_chain(images[:k], dest)
            assert online.verify_chain(images[:k], deep=True)["ok"]
        else:
            repo.restore(dest, ids[k - 1])
        assert _content(dest) == expected[k - 1], k
    if repo is not None:
        assert repo.verify(deep=True).ok
    else:  # the full image alone, through the restore drivers (also verify-only)
        online.restore(images[0], root / "single")
        assert _content(root / "single") == expected[0]
        assert online.verify(images[0], deep=True)["ok"]
