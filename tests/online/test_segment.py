"""Merging a segment of a chain into one layer (lamina.online.segment): against a model of
random histories of both engines, the chain with the merged layer in place of the segment
restores exactly what the original chain restores at every point after it; damaged,
misordered and unsupported segments are refused with nothing published."""

from __future__ import annotations

import copy
import itertools
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from incremental.incremental_helpers import State, flip_byte, state_at, state_of
from lamina import online
from lamina.backup.image_reader import read_info
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.page import checksum
from lamina.engines.btree.segment import walk_newer
from lamina.errors import CancelledError, ChainError, CorruptionError, UnsupportedError
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


def _walk_fixture(tmp_path: Path) -> tuple[Path, Any, int, dict[int, bytes]]:
    """A database with small and overflow values in two tables, changed after a first
    commit: its data file, last meta, the txnid of that first state, and every page."""
    with lamina.open(tmp_path / "w", page_size=1024, sync=False) as db:
        db.create_table("b1")
        db.create_table("b2")
        db.put("b1", b"old", b"x" * 10)
        base = db.store.current_meta().txnid
        with db.write() as txn:
            for k in range(80):
                txn.table("b1").put(b"k%03d" % k, b"v" * 40)
            txn.table("b2").put(b"big", bytes(range(256)) * 10)  # an overflow chain
        meta = db.store.current_meta()
    path = tmp_path / "w" / btree_format.DATA_FILE_NAME
    raw = path.read_bytes()
    pages = {p: raw[p * 1024:(p + 1) * 1024] for p in range(meta.total_pages)}
    return path, meta, base, pages


def test_walk_equals_the_database_layer_walk(tmp_path: Path) -> None:
    _path, meta, base, pages = _walk_fixture(tmp_path)
    walked = sorted(p for p, _ in walk_newer(pages.get, meta, base, "test"))
    with lamina.open(tmp_path / "w", create=False, readonly=True) as db:
        txn = db.store.read_pinned(meta)
        try:
            expected = sorted(p for p, _ in txn.walk_changed_pages(base))
        finally:
            txn.close()
    assert walked == expected and len(walked) > 5


def _recheck(page: bytes, offset: int) -> bytes:
    """``page`` with one byte inverted at ``offset`` and a valid checksum again."""
    b = bytearray(page)
    b[offset] ^= 0xFF
    b[:8] = struct.pack("<Q", checksum(bytes(b)))
    return bytes(b)


def test_walk_refuses_a_missing_page_and_a_merkle_mismatch(tmp_path: Path) -> None:
    _path, meta, base, pages = _walk_fixture(tmp_path)
    walked = [p for p, _ in walk_newer(pages.get, meta, base, "test")]
    kinds: dict[int, int] = {p: pages[p][20] for p in walked}
    victim = next(p for p in walked if kinds[p] == btree_format.PAGE_LEAF)
    missing = {p: v for p, v in pages.items() if p != victim}
    with pytest.raises(CorruptionError, match="in none of the images read"):
        list(walk_newer(missing.get, meta, base, "test"))
    forged = {**pages, victim: _recheck(pages[victim], 1000)}  # valid checksum, other bytes
    with pytest.raises(CorruptionError, match="Merkle mismatch"):
        list(walk_newer(forged.get, meta, base, "test"))
    overflow = next(p for p in walked if kinds[p] == btree_format.PAGE_OVERFLOW)
    forged = {**pages, overflow: _recheck(pages[overflow], 100)}
    with pytest.raises(CorruptionError, match="overflow value"):
        list(walk_newer(forged.get, meta, base, "test"))


def test_cancelled_merge_publishes_nothing(tmp_path: Path) -> None:
    images = _history(tmp_path, [("put", "b1", [(b"k", b"v" * 100)]), ("layer",)])
    paths = [p for p, _ in images]
    out = tmp_path / "m"
    for after in (0, 1, 3):  # while reading, at the walk, while writing
        calls = itertools.count()

        def stop(calls: Iterator[int] = calls, after: int = after) -> bool:
            return next(calls) >= after

        with pytest.raises(CancelledError):
            combine_segment(paths[1:], out, image_id=uuid.uuid4(), cancel=stop)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


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
