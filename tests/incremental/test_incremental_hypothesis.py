"""Random interleavings of writes, optimizes, table creates/drops, full backups and layers:
every prefix of every chain restores to exactly the model's state at that image's VP, and
the whole chain combines into one full image that restores the same."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from lamina import online
from lamina.online import chain

from .incremental_helpers import State, state_at, state_of

BTREE = ("b1", "b2")
ARCHIVE = ("a1", "a2")

keys = st.binary(min_size=1, max_size=12)
values = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=700))  # overflow
ops = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(BTREE), st.lists(st.tuples(keys, values),
                                                               min_size=1, max_size=30)),
    st.tuples(st.just("delete"), st.sampled_from(BTREE), st.integers(0, 1000)),
    st.tuples(st.just("append"), st.sampled_from(ARCHIVE),
              st.lists(st.binary(max_size=60), min_size=1, max_size=40)),
    st.tuples(st.just("optimize"), st.sampled_from(ARCHIVE)),
    st.tuples(st.just("create"), st.sampled_from(BTREE + ARCHIVE)),
    st.tuples(st.just("drop"), st.sampled_from(BTREE + ARCHIVE)),
    st.tuples(st.just("full")),
    st.tuples(st.just("layer")),
    st.tuples(st.just("layer")),
)


def _apply(db: lamina.Database, op: tuple[Any, ...], model: State) -> None:
    kind = op[0]
    if kind == "put" and op[1] in model:
        with db.write() as txn:
            t = txn.table(op[1])
            for k, v in op[2]:
                t.put(k, v)
                model[op[1]][1][k] = v
    elif kind == "delete" and op[1] in model and model[op[1]][1]:
        items = model[op[1]][1]
        victims = sorted(items)[op[2] % len(items)::3]
        with db.write() as txn:
            for k in victims:
                txn.table(op[1]).delete(k)
                del items[k]
    elif kind == "append" and op[1] in model:
        db.append_many(op[1], op[2])
        model[op[1]][1].extend(op[2])
    elif kind == "optimize" and op[1] in model:
        db.archive(op[1]).optimize()
    elif kind == "create" and op[1] not in model:
        engine = "btree" if op[1] in BTREE else "archive"
        db.create_table(op[1], engine)
        model[op[1]] = (engine, {} if engine == "btree" else [])
    elif kind == "drop" and op[1] in model:
        db.drop_table(op[1])
        del model[op[1]]


@settings(max_examples=40, deadline=None)
@given(st.lists(ops, min_size=5, max_size=40))
def test_every_prefix_of_every_chain_restores_the_model(program: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="lamina-hyp-") as tmp:
        root = Path(tmp)
        model: State = {}
        chains: list[list[tuple[Path, State]]] = []
        with lamina.open(root / "db", page_size=1024, sync=False) as db:
            for name in BTREE + ARCHIVE:  # start with every table; drops/creates follow
                _apply(db, ("create", name), model)
            for n, op in enumerate([*program, ("layer",)]):
                if op[0] in ("full", "layer"):
                    image = root / f"img{n}"
                    if op[0] == "full" or not chains:
                        db.backup(image)
                        chains.append([])
                    else:
                        db.backup(image, base=chains[-1][-1][0])
                    chains[-1].append((image, copy.deepcopy(model)))
                    assert state_of(db) == model
                else:
                    _apply(db, op, model)
        for c, images in enumerate(chains):
            paths = [p for p, _ in images]
            for k in range(1, len(images) + 1):
                dest = root / f"r{c}-{k}"
                online.restore_chain(paths[:k], dest)
                assert state_at(dest) == images[k - 1][1], (c, k)
        last = [p for p, _ in chains[-1]]
        combined = root / "combined"
        chain.combine_chain(last, combined)
        online.restore(combined, root / "rc")
        assert state_at(root / "rc") == chains[-1][-1][1]
        assert chain.verify_chain(last, deep=True)["ok"]
