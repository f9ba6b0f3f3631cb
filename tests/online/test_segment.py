"""Merging a segment of a chain into one layer (lamina.online.segment): against a model of
random histories of both engines, the chain with the merged layer in place of the segment
restores exactly what the original chain restores at every point after it; damaged,
misordered and unsupported segments are refused with nothing published."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from incremental.incremental_helpers import State, flip_byte, state_at, state_of
from lamina import online
from lamina.backup.image_reader import read_info
from lamina.errors import ChainError, CorruptionError, UnsupportedError
from lamina.online.segment import combine_segment, prove_layer

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


def _history(root: Path, program: list[tuple[Any, ...]], layers_at_least: int = 2,
             ) -> list[tuple[Path, State]]:
    """A chain F, L1..Ln of the database ``root/db`` run through ``program`` (a layer per
    "layer" op, at least ``layers_at_least``), each image with the model at its VP."""
    model: State = {}
    images: list[tuple[Path, State]] = []
    with lamina.open(root / "db", page_size=1024, sync=False) as db:
        for name in BTREE + ARCHIVE:
            _apply(db, ("create", name), model)
        db.append_many("a1", [b"seed"] * 5)
        model["a1"][1].extend([b"seed"] * 5)
        full = root / "img0"
        db.backup(full)
        images.append((full, copy.deepcopy(model)))
        tail = [("layer",)] * layers_at_least
        for n, op in enumerate([*program, *tail], start=1):
            if op[0] == "layer":
                image = root / f"img{n}"
                db.backup(image, base=images[-1][0])
                images.append((image, copy.deepcopy(model)))
                assert state_of(db) == model
            else:
                _apply(db, op, model)
    return images


@settings(max_examples=30, deadline=None)
@given(st.lists(ops, min_size=3, max_size=30), st.data())
def test_merged_segment_restores_like_the_chain(program: list[tuple[Any, ...]],
                                                data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory(prefix="lamina-seg-") as tmp:
        root = Path(tmp)
        images = _history(root, program)
        paths = [p for p, _ in images]
        n = len(paths) - 1  # layers L1..Ln
        i = data.draw(st.integers(1, n), label="first layer of the segment")
        j = data.draw(st.integers(i, n), label="last layer of the segment")
        last = read_info(paths[j])
        merged = root / "merged"
        info = combine_segment(paths[i:j + 1], merged, image_id=last.header.image_id)
        first = read_info(paths[i])
        assert info.manifest.base_image_id == first.manifest.base_image_id
        assert info.manifest.base_vp_seq == first.manifest.base_vp_seq
        assert info.header.image_id == last.header.image_id
        assert (info.vp.commit_seq, info.vp.wall_ns) == (last.vp.commit_seq, last.vp.wall_ns)
        assert info.manifest.root_hash == last.manifest.root_hash
        assert info.catalog == last.catalog
        assert info.size <= sum(read_info(p).size for p in paths[i:j + 1])
        prove_layer(merged)
        new_chain = [*paths[:i], merged, *paths[j + 1:]]
        for k in range(i + 1, len(new_chain) + 1):  # every point from the merged layer on
            dest = root / f"r{k}"
            online.restore_chain(new_chain[:k], dest, check=True)
            assert state_at(dest) == images[k - 1 + (j - i)][1], (i, j, k)
        assert online.verify_chain(new_chain, deep=True)["ok"]


def test_merging_twice_flattens_combined_from(tmp_path: Path) -> None:
    images = _history(tmp_path, [("append", "a1", [b"x"]), ("layer",),
                                 ("put", "b1", [(b"k", b"v")])], layers_at_least=3)
    paths = [p for p, _ in images]  # F L1 L2 L3 L4
    ids = [str(read_info(p).header.image_id) for p in paths]
    m1 = tmp_path / "m1"
    combine_segment(paths[1:3], m1, image_id=read_info(paths[2]).header.image_id)
    m2 = tmp_path / "m2"
    info = combine_segment([m1, paths[3]], m2, image_id=read_info(paths[3]).header.image_id)
    btree = info.manifest.vp.drivers[0]
    assert btree["combined_from"] == ids[1:4]
    online.restore_chain([paths[0], m2, paths[4]], tmp_path / "r")
    assert state_at(tmp_path / "r") == images[4][1]


def test_damaged_segment_is_refused_and_nothing_published(tmp_path: Path) -> None:
    images = _history(tmp_path, [("put", "b1", [(bytes([k]), b"v" * 50) for k in range(60)]),
                                 ("layer",), ("append", "a1", [b"r"] * 50)])
    paths = [p for p, _ in images]
    target = read_info(paths[1])
    flip_byte(paths[1], target.size // 2)  # inside the chunks
    out = tmp_path / "merged"
    with pytest.raises(CorruptionError):
        combine_segment(paths[1:], out, image_id=read_info(paths[-1]).header.image_id)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_truncated_segment_is_refused(tmp_path: Path) -> None:
    images = _history(tmp_path, [("put", "b1", [(b"k", b"v")])])
    paths = [p for p, _ in images]
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:len(data) - 100])
    out = tmp_path / "merged"
    with pytest.raises(CorruptionError):
        combine_segment(paths[1:], out, image_id=read_info(paths[1]).header.image_id)
    assert not out.exists()


def test_a_missing_page_is_refused_by_the_walk(tmp_path: Path) -> None:
    """A segment that lacks its first layer: the walk from Ln's root needs pages that only
    L1 holds (the stream headers still link L2 to L1, so only the walk can tell)."""
    images = _history(tmp_path, [("put", "b1", [(bytes([k]), b"v" * 30) for k in range(90)]),
                                 ("layer",), ("put", "b2", [(b"z", b"z")])])
    paths = [p for p, _ in images]
    with pytest.raises(ChainError):
        combine_segment([paths[2], paths[3]], tmp_path / "m",  # L2 L3: fine, a segment
                        image_id=read_info(paths[3]).header.image_id).path.unlink()
        combine_segment([paths[1], paths[3]], tmp_path / "m2",  # a gap: refused
                        image_id=read_info(paths[3]).header.image_id)
    assert not (tmp_path / "m2").exists()


def test_wrong_order_full_images_and_at_end_are_refused(tmp_path: Path) -> None:
    images = _history(tmp_path, [("put", "b1", [(b"k", b"v")])])
    paths = [p for p, _ in images]
    out = tmp_path / "m"
    any_id = read_info(paths[-1]).header.image_id
    with pytest.raises(ChainError):
        combine_segment([paths[2], paths[1]], out, image_id=any_id)
    with pytest.raises(ChainError):
        combine_segment(paths[0:2], out, image_id=any_id)  # a full image is no segment
    with lamina.open(tmp_path / "db", sync=False) as db:
        db.append_many("a1", [b"late"])
        at_end = tmp_path / "at-end"
        db.backup(at_end, base=paths[-1], vp="end")
    with pytest.raises(UnsupportedError):
        combine_segment([paths[-1], at_end], out, image_id=any_id)
    assert not out.exists()
