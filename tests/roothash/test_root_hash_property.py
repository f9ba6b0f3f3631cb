"""The database root hash is what a validity point *is*: for random interleavings of btree
writes, archive appends, optimizes and table creates/drops, the root hash of the live
database at each VP equals the one its image records, and the restore of that image — or of
every prefix of its chain, and the chain combined into one image — reproduces it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from lamina import online
from lamina.backup.image_reader import read_info
from lamina.online import chain

BTREE = ("b1", "b2")
ARCHIVE = ("a1", "a2")

ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(BTREE),
              st.lists(st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=300)),
                       min_size=1, max_size=20)),
    st.tuples(st.just("delete"), st.sampled_from(BTREE), st.integers(0, 100)),
    st.tuples(st.just("append"), st.sampled_from(ARCHIVE),
              st.lists(st.binary(max_size=80), min_size=1, max_size=30)),
    st.tuples(st.just("optimize"), st.sampled_from(ARCHIVE)),
    st.tuples(st.just("create"), st.sampled_from(BTREE + ARCHIVE)),
    st.tuples(st.just("drop"), st.sampled_from(BTREE + ARCHIVE)),
    st.tuples(st.just("full")),
    st.tuples(st.just("layer")),
)


def _apply(db: lamina.Database, op: tuple[Any, ...], tables: dict[str, str]) -> None:
    kind = op[0]
    if kind == "put" and op[1] in tables:
        with db.write() as txn:
            for k, v in op[2]:
                txn.table(op[1]).put(k, v)
    elif kind == "delete" and op[1] in tables:
        with db.read() as txn:
            keys = [k for k, _v in txn.table(op[1]).items()]
        if keys:
            with db.write() as txn:
                for k in keys[op[2] % len(keys)::2]:
                    txn.table(op[1]).delete(k)
    elif kind == "append" and op[1] in tables:
        db.append_many(op[1], op[2])
    elif kind == "optimize" and op[1] in tables:
        db.archive(op[1]).optimize(block_target=64)
    elif kind == "create" and op[1] not in tables:
        engine = "btree" if op[1] in BTREE else "archive"
        db.create_table(op[1], engine, **({"block_target": 100} if engine == "archive" else {}))
        tables[op[1]] = engine
    elif kind == "drop" and op[1] in tables:
        db.drop_table(op[1])
        del tables[op[1]]


def _root_of(path: Path) -> bytes:
    with lamina.open(path, create=False) as db:
        return db.root_hash()


@settings(max_examples=15, deadline=None)
@given(st.lists(ops, min_size=4, max_size=25))
def test_restores_reproduce_the_root_hash_of_every_vp(program: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="lamina-root-") as tmp:
        root = Path(tmp)
        tables: dict[str, str] = {}
        chains: list[list[tuple[Path, bytes]]] = []
        with lamina.open(root / "db", page_size=1024, sync=False) as db:
            for name in BTREE + ARCHIVE:
                _apply(db, ("create", name), tables)
            for n, op in enumerate([*program, ("layer",)]):
                if op[0] not in ("full", "layer"):
                    _apply(db, op, tables)
                    continue
                image = root / f"img{n}"
                if op[0] == "full" or not chains:
                    result = db.backup(image)
                    chains.append([])
                else:
                    result = db.backup(image, base=chains[-1][-1][0])
                live = db.root_hash()  # nothing committed since the VP
                assert result.manifest.root_hash == live
                assert read_info(image).manifest.root_hash == live
                chains[-1].append((image, live))
        for c, images in enumerate(chains):
            paths = [p for p, _ in images]
            full = root / f"full{c}"
            online.restore(paths[0], full)
            assert _root_of(full) == images[0][1]
            for k in range(1, len(images) + 1):
                dest = root / f"r{c}-{k}"
                online.restore_chain(paths[:k], dest)
                assert _root_of(dest) == images[k - 1][1], (c, k)
                assert online.verify(paths[k - 1], deep=True)["ok"] if k == 1 else True
                assert chain.verify_chain(paths[:k], deep=True)["root_hash"] == \
                    images[k - 1][1].hex()
        last = [p for p, _ in chains[-1]]
        combined = root / "combined"
        chain.combine_chain(last, combined)
        assert read_info(combined).manifest.root_hash == chains[-1][-1][1]
        online.restore(combined, root / "rc")
        assert _root_of(root / "rc") == chains[-1][-1][1]
