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

from hypothesis import example, given, settings
from hypothesis import strategies as st

import lamina
from lamina import online
from lamina.database import Database
from lamina.repository.repository import Repository

Op = tuple[str, int, int]  # (kind, key or row count, value size)

KINDS = ["put", "put", "delete", "append", "optimize", "xappend", "yput"]
ops = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 400), st.integers(0, 600)),
               max_size=6)
# Between backups also tables come and go (never during one: a backup holds the DDL lock).
ddl_ops = st.lists(st.tuples(st.sampled_from([*KINDS, "ddl", "ddl"]), st.integers(0, 400),
                             st.integers(0, 600)), max_size=6)
backups = st.lists(st.tuples(st.sampled_from(["begin", "end"]), ops, ddl_ops),
                   min_size=1, max_size=4)


@dataclass
class Model:
    """What the btree table ``t`` and the archive table ``a`` hold, and the extra archive
    table ``x`` and btree table ``y`` while they exist (None: dropped)."""

    kv: dict[bytes, bytes] = field(default_factory=dict)
    rows: list[bytes] = field(default_factory=list)
    x: list[bytes] | None = None
    y: dict[bytes, bytes] | None = None

    def copy(self) -> Model:
        return Model(dict(self.kv), list(self.rows), None if self.x is None else list(self.x),
                     None if self.y is None else dict(self.y))


def _apply(db: Database, model: Model, op: Op, n: int) -> None:
    kind, a, b = op
    key = b"k%04d" % a
    value = b"%d:" % n + bytes([n % 251]) * b
    rows = [b"%d/%d/" % (n, j) + bytes([j % 256]) * (b % 50) for j in range(a % 30 + 1)]
    if kind == "put":
        with db.write() as txn:
            txn.table("t").put(key, value)
        model.kv[key] = value
    elif kind == "delete":
        with db.write() as txn:
            txn.table("t").delete(key)
        model.kv.pop(key, None)
    elif kind == "append":
        db.append_many("a", rows)
        model.rows.extend(rows)
    elif kind == "optimize":
        db.archive("a").optimize()
    elif kind == "xappend" and model.x is not None:
        db.append_many("x", rows)
        model.x.extend(rows)
    elif kind == "yput" and model.y is not None:
        with db.write() as txn:
            txn.table("y").put(key, value)
        model.y[key] = value
    elif kind == "ddl":
        which = a % 2
        if which == 0 and model.x is None:
            db.create_table("x", engine="archive")
            model.x = []
        elif which == 0:
            db.drop_table("x")
            model.x = None
        elif model.y is None:
            db.create_table("y", engine="btree")
            model.y = {}
        else:
            db.drop_table("y")
            model.y = None


def _content(path: Path) -> Model:
    with lamina.open(path, create=False, readonly=True) as db:
        assert db.check().ok  # the directory is removed before the teardown check
        names = {t.name for t in db.tables()}
        assert names <= {"t", "a", "x", "y"}
        with db.read() as txn:
            kv = dict(txn.table("t").items())
            y = dict(txn.table("y").items()) if "y" in names else None
        x = [row for _id, row in db.scan("x")] if "x" in names else None
        return Model(kv, [row for _id, row in db.scan("a")], x, y)


#: Tables created, written during an at-end copy, dropped and re-created along a chain.
DDL_PLAN = [
    ("end", [("put", 1, 100)], [("ddl", 0, 0), ("ddl", 1, 0), ("xappend", 5, 10)]),
    ("end", [("xappend", 7, 20), ("yput", 9, 300), ("optimize", 0, 0)], [("ddl", 0, 0)]),
    ("begin", [("append", 3, 3)], [("ddl", 0, 0), ("xappend", 2, 2)]),
    ("end", [("xappend", 4, 4), ("delete", 1, 0)], [("ddl", 1, 0)]),
    ("end", [("put", 5, 5)], []),
]


@settings(max_examples=15, deadline=None)
@given(plan=backups, where=st.sampled_from(["files", "repository"]))
@example(plan=DDL_PLAN, where="files")
@example(plan=DDL_PLAN, where="repository")
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
