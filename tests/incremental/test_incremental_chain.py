"""Layers and chains end to end (in process): what a layer holds, every prefix restoring to
its VP, catalog changes, combine_chain, and every kind of bad chain refused cleanly."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

import lamina
from lamina import online
from lamina.backup import image_format as F
from lamina.backup.image_reader import read_info
from lamina.backup.kernel import BaseImageRef, run_backup
from lamina.database import Database
from lamina.errors import (
    AlreadyExistsError,
    CancelledError,
    ChainError,
    CorruptionError,
    DataError,
    NotFoundError,
)
from lamina.online import chain, layers
from lamina.online.facts import ImageFacts

from .incremental_helpers import State, archive_files, flip_byte, state_at, state_of


def _fill(db: Database, n: int = 3000) -> None:
    db.create_table("kv")
    db.create_table("log", "archive")
    db.create_table("old", "archive")
    with db.write() as txn:
        t = txn.table("kv")
        for i in range(n):
            t.put(b"key%06d" % i, b"value-%d-" % i + bytes(20))
    db.append_many("log", [b"row %d" % i for i in range(500)])
    db.append_many("old", [b"old %d" % i for i in range(50)])


@pytest.fixture
def chain3(tmp_path: Path) -> tuple[Path, list[Path], list[State]]:
    """A database and a chain full -> L1 -> L2 -> L3 with changes of every kind between."""
    db_path = tmp_path / "db"
    images = [tmp_path / f"i{n}.img" for n in range(4)]
    states: list[State] = []
    with lamina.open(db_path, page_size=1024) as db:
        _fill(db)
        db.backup(images[0])
        states.append(state_of(db))
        db.put("kv", b"key000100", b"changed")
        db.delete("kv", b"key000200")
        db.append_many("log", [b"tail %d" % i for i in range(30)])
        db.backup(images[1], base=images[0])
        states.append(state_of(db))
        db.archive("log").optimize()                 # a new generation: sent whole
        db.create_table("fresh")                      # created since the base: sent whole
        db.put("fresh", b"a", b"b" * 600)            # an overflow value
        db.drop_table("old")                          # dropped: gone after the restore
        db.create_table("later", "archive")
        db.append_many("later", [b"x"] * 10)
        db.backup(images[2], base=images[1])
        states.append(state_of(db))
        db.append_many("log", [b"after optimize %d" % i for i in range(7)])
        db.append_many("later", [b"y"] * 3)
        db.backup(images[3], base=images[2])
        states.append(state_of(db))
    return db_path, images, states


def test_every_prefix_restores_to_its_vp(chain3: tuple[Path, list[Path], list[State]],
                                         tmp_path: Path) -> None:
    _db, images, states = chain3
    for k in range(1, len(images) + 1):
        dest = tmp_path / f"r{k}"
        summary = online.restore_chain(images[:k], dest)
        assert summary.vp.commit_seq == read_info(images[k - 1]).vp.commit_seq
        assert state_at(dest) == states[k - 1]
        with lamina.open(dest, create=False) as db:
            assert db.stat()["restored_from"]["image_id"] == str(
                read_info(images[k - 1]).header.image_id)
            assert db.put("kv", b"next", b"x") > summary.vp.commit_seq
    # The dropped archive table's files do not survive, the others are there.
    assert archive_files(tmp_path / "r4") == {"log.ARM", "log.ARZ", "later.ARM", "later.ARZ"}
    assert "old.ARZ" in archive_files(tmp_path / "r2")


def test_layers_hold_only_what_changed(chain3: tuple[Path, list[Path], list[State]]) -> None:
    _db, images, _states = chain3
    infos = chain.order_chain(list(reversed(images)))  # any order in, chain order out
    assert [i.path for i in infos] == images
    full, l1, l2, l3 = infos
    assert full.manifest.kind == F.ImageKind.FULL
    assert all(i.manifest.kind == F.ImageKind.LAYER for i in (l1, l2, l3))
    assert l1.manifest.base_image_id == full.header.image_id
    assert l1.manifest.base_vp_seq == full.vp.commit_seq
    bt = [dict(i.vp.drivers[0]) for i in infos]
    assert bt[1]["base_txnid"] == bt[0]["txnid"] and bt[2]["base_txnid"] == bt[1]["txnid"]
    assert bt[1]["pages_sent"] < bt[0]["pages_sent"] // 10  # two keys changed
    arch = [dict(i.vp.drivers[1])["tables"] for i in infos]
    assert arch[1]["log"]["base_position"] == arch[0]["log"]["position"]  # a tail
    assert arch[2]["log"]["base_position"] == 0  # optimized: whole
    assert arch[2]["later"]["base_position"] == 0  # created: whole
    assert arch[3]["later"]["base_position"] == arch[2]["later"]["position"]
    assert "old" not in arch[2]
    assert l1.size < full.size // 5


def test_verify_chain_and_deep(chain3: tuple[Path, list[Path], list[State]]) -> None:
    _db, images, _states = chain3
    report = chain.verify_chain(images)
    assert report["ok"] and not report["deep"] and len(report["images"]) == 4
    deep = chain.verify_chain(images, deep=True)
    assert deep["ok"] and deep["deep"]
    assert deep["btree_root_hash"] == read_info(images[-1]).vp.drivers[0]["root_hash"]
    assert deep["root_hash"] == read_info(images[-1]).manifest.root_hash.hex()
    assert deep["pages"] > 0 and deep["pages_read"] >= deep["pages"]


def test_combine_chain_equals_the_chain(chain3: tuple[Path, list[Path], list[State]],
                                       tmp_path: Path) -> None:
    _db, images, states = chain3
    out = tmp_path / "combined.img"
    info = chain.combine_chain(images, out, codec="zlib")
    last = read_info(images[-1])
    assert info.manifest.kind == F.ImageKind.FULL
    assert info.header.image_id not in {read_info(p).header.image_id for p in images}
    assert info.header.database_id == last.header.database_id
    assert info.vp.commit_seq == last.vp.commit_seq and info.vp.wall_ns == last.vp.wall_ns
    assert info.vp.drivers[0]["combined_from"] == [str(read_info(p).header.image_id)
                                                   for p in images]
    assert online.verify(out, deep=True)["ok"]
    online.restore(out, tmp_path / "from_combined")
    online.restore_chain(images, tmp_path / "from_chain")
    assert state_at(tmp_path / "from_combined") == state_at(tmp_path / "from_chain") == states[3]
    with lamina.open(tmp_path / "from_combined", create=False) as a, \
            lamina.open(tmp_path / "from_chain", create=False) as b, \
            a.read() as ta, b.read() as tb:
        assert ta.root_hash == tb.root_hash
    # A combined image is a full image: a new chain can continue from it.
    with pytest.raises(AlreadyExistsError):
        chain.combine_chain(images, out)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_layer_on_a_combined_image(chain3: tuple[Path, list[Path], list[State]],
                                   tmp_path: Path) -> None:
    db_path, images, _states = chain3
    combined = tmp_path / "c.img"
    chain.combine_chain(images, combined)
    with lamina.open(db_path, create=False) as db:
        db.put("kv", b"key000001", b"after combine")
        db.backup(tmp_path / "next.img", base=combined)
        expected = state_of(db)
    online.restore_chain([combined, tmp_path / "next.img"], tmp_path / "r")
    assert state_at(tmp_path / "r") == expected


def test_restore_a_subset_of_a_chain(chain3: tuple[Path, list[Path], list[State]],
                                     tmp_path: Path) -> None:
    _db, images, states = chain3
    summary = online.restore_chain(images, tmp_path / "r", tables=["log", "kv"])
    assert summary.tables == ("kv", "log")
    got = state_at(tmp_path / "r")
    assert got == {k: v for k, v in states[3].items() if k in ("kv", "log")}


# ---------------------------------------------------------------------- bad chains
def _refused(fn: object, *args: object, exc: type[BaseException] = ChainError,
             **kwargs: object) -> str:
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_chains_are_refused(chain3: tuple[Path, list[Path], list[State]],
                                tmp_path: Path) -> None:
    _db, images, _states = chain3
    full, l1, l2, l3 = images
    dest = tmp_path / "dest"
    for bad in ([l1, full, l2], [full, l2, l1, l3], [l1, l2], [full, l2, l3], [full, l1, l1],
                [full, full]):
        assert _refused(online.restore_chain, bad, dest)
        assert _refused(chain.verify_chain, bad)
        assert _refused(chain.combine_chain, bad, tmp_path / "c.img")
        assert not dest.exists() and not (tmp_path / "c.img").exists()
    assert "gap" in _refused(chain.order_chain, [full, l2])
    assert "no full image" in _refused(chain.order_chain, [l2, l3])
    assert "out of order" in _refused(online.restore_chain, [full, l2, l1], dest)
    _refused(online.restore_chain, [full, tmp_path / "missing.img"], dest, exc=NotFoundError)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_fork_is_refused(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        _fill(db, 200)
        db.backup(tmp_path / "full.img")
        db.put("kv", b"a", b"1")
        db.backup(tmp_path / "l1.img", base=tmp_path / "full.img")
        db.put("kv", b"b", b"2")
        db.backup(tmp_path / "l1b.img", base=tmp_path / "full.img")
    assert "fork" in _refused(chain.order_chain, [tmp_path / "full.img", tmp_path / "l1.img",
                                                  tmp_path / "l1b.img"])


def test_layer_base_rules(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "a") as a, lamina.open(tmp_path / "b") as b:
        _fill(a, 100)
        _fill(b, 100)
        a.backup(tmp_path / "a.img")
        b.backup(tmp_path / "b.img")
        # A base from another database.
        msg = _refused(a.backup, tmp_path / "x.img", base=tmp_path / "b.img")
        assert "database" in msg
        # A missing base.
        _refused(a.backup, tmp_path / "x.img", base=tmp_path / "nope.img", exc=NotFoundError)
        assert not (tmp_path / "x.img").exists()
        a.put("kv", b"more", b"1")
        a.backup(tmp_path / "a1.img", base=tmp_path / "a.img")
    # A restored database keeps the id but starts its own history (a new incarnation): it
    # may continue the chain of the image it came from, never a later image of the source.
    online.restore(tmp_path / "a.img", tmp_path / "old")
    with lamina.open(tmp_path / "old", create=False) as old:
        assert "newer" in _refused(old.backup, tmp_path / "x.img", base=tmp_path / "a1.img")
        old.put("kv", b"restored side", b"1")
        old.put("kv", b"more writes", b"2")  # now past a1's seq: a1 is another history
        assert "another history" in _refused(old.backup, tmp_path / "x.img",
                                             base=tmp_path / "a1.img")
        old.backup(tmp_path / "o1.img", base=tmp_path / "a.img")
        expected = state_of(old)
    assert not (tmp_path / "x.img").exists()
    online.restore_chain([tmp_path / "a.img", tmp_path / "o1.img"], tmp_path / "r")
    assert state_at(tmp_path / "r") == expected


def test_a_layer_from_another_database_is_refused_in_a_chain(tmp_path: Path) -> None:
    """A layer that names an image of another database as its base (forged here by driving
    the kernel by hand: the CLI and online.backup refuse to write one)."""
    with lamina.open(tmp_path / "a") as a, lamina.open(tmp_path / "b") as b:
        _fill(a, 100)
        _fill(b, 100)
        a.backup(tmp_path / "a.img")
        b.backup(tmp_path / "b.img")
        b_info = read_info(tmp_path / "b.img")
        b_facts = ImageFacts(b_info, "b.img").by_driver()
        a_info = read_info(tmp_path / "a.img")
        ref = BaseImageRef(a_info.header.image_id, a_info.vp.commit_seq)
        groups = layers.layer_groups(online.plan_groups(b, None), ref, b_facts)
        run_backup(groups, tmp_path / "forged.img", commit_blocker=b.lockfile,
                   commit_seq=b.lockfile.commit_seq, database_id=b.identity.db_id, base=ref)
    msg = _refused(online.restore_chain, [tmp_path / "a.img", tmp_path / "forged.img"],
                   tmp_path / "r")
    assert "database" in msg or "txnid" in msg
    assert not (tmp_path / "r").exists()


def test_a_single_layer_is_not_restorable_alone(chain3: tuple[Path, list[Path], list[State]],
                                                tmp_path: Path) -> None:
    _db, images, _states = chain3
    _refused(online.restore, images[1], tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert online.verify(images[1])["kind"] == "layer"  # its own checksums verify alone
    _refused(online.verify, images[1], deep=True)


@pytest.mark.parametrize("which", [0, 1, 2, 3])
def test_corruption_in_any_image_is_detected(chain3: tuple[Path, list[Path], list[State]],
                                             tmp_path: Path, which: int) -> None:
    _db, images, _states = chain3
    rng = random.Random(which)
    victim = images[which]
    original = victim.read_bytes()
    for _ in range(6):
        offset = rng.randrange(len(original))
        flip_byte(victim, offset)
        try:
            with pytest.raises(DataError):
                chain.verify_chain(images)
            with pytest.raises(DataError):
                chain.verify_chain(images, deep=True)
            dest = tmp_path / f"r{offset}"
            with pytest.raises(DataError):
                online.restore_chain(images, dest)
            assert not dest.exists()
        finally:
            victim.write_bytes(original)
    assert chain.verify_chain(images, deep=True)["ok"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_corruption_inside_a_layer_payload_names_the_image(
        chain3: tuple[Path, list[Path], list[State]], tmp_path: Path) -> None:
    _db, images, _states = chain3
    info = read_info(images[1])
    flip_byte(images[1], info.size // 2)  # inside a chunk
    with pytest.raises(CorruptionError) as err:
        online.restore_chain(images, tmp_path / "r")
    assert images[1].name in str(err.value)


def test_api_shapes() -> None:
    """The signatures the repository layer codes against."""
    import inspect

    assert list(inspect.signature(chain.order_chain).parameters) == ["paths"]
    assert list(inspect.signature(chain.restore_chain).parameters) == [
        "paths", "dest", "tables", "force", "progress", "cancel", "check"]
    assert list(inspect.signature(chain.verify_chain).parameters) == [
        "paths", "deep", "progress", "cancel"]
    assert list(inspect.signature(chain.combine_chain).parameters) == [
        "paths", "out", "codec", "progress", "cancel", "image_id"]
    assert online.restore_chain is chain.restore_chain
    assert "base" in inspect.signature(online.backup).parameters
    assert "base" in inspect.signature(Database.backup).parameters
    assert uuid.UUID(int=0) == F.ZERO_UUID


def test_cancel_leaves_nothing(chain3: tuple[Path, list[Path], list[State]],
                               tmp_path: Path) -> None:
    _db, images, _states = chain3
    calls = 0

    def cancel_after_a_few() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(CancelledError):
        online.restore_chain(images, tmp_path / "r", cancel=cancel_after_a_few)
    calls = 0
    with pytest.raises(CancelledError):
        chain.combine_chain(images, tmp_path / "c.img", cancel=cancel_after_a_few)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "i0.img", "i1.img", "i2.img",
                                                          "i3.img"]


def test_a_logical_image_cannot_be_a_base(tmp_path: Path) -> None:
    """A layer on an image taken with a logical driver could never be restored as a chain:
    refused when the layer is taken, not found out at restore time."""
    with lamina.open(tmp_path / "a") as a:
        _fill(a, 50)
        a.backup(tmp_path / "logical.img", driver="snapshot")
        a.put("kv", b"more", b"1")
        assert "native" in _refused(a.backup, tmp_path / "x.img", base=tmp_path / "logical.img")
    assert not (tmp_path / "x.img").exists()
