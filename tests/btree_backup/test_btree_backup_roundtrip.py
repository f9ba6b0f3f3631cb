"""Full backup and restore of the btree file through the real kernels: exact contents,
same root hash, a clean checker, and a usable restored database."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from btree_backup_helpers import (
    backup,
    backup_slots,
    btree_specs,
    contents,
    feed,
    open_restored,
    restore,
    restore_driver,
    stream0,
)

import lamina
from lamina.backup import BackupFlags, Buffer, RestoreFlags, Result, TableSpec, run_restore
from lamina.core.catalog import ENGINE_BTREE
from lamina.core.driver import NoFacts
from lamina.core.lockfile import LockFile
from lamina.database import Database
from lamina.engines.btree import BtreeStore
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.engines.btree.backup_driver import BtreeBackupDriver
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.pager import read_metas
from lamina.engines.btree.stream import HEADER_SIZE, TRAILER_SIZE
from lamina.errors import (
    ChainError,
    CorruptionError,
    DriverChoiceError,
    TableNotFoundError,
    UsageError,
)
from support import expect_damaged

TABLES = ["alpha", "beta", "gamma"]


def churned_db(path: Path, seed: int = 7) -> Database:
    """A 1 KiB-page database with three btree tables, an archive table, a dropped table,
    overflow values, deletes and many commits (so the free list is far from empty)."""
    db = lamina.open(path, page_size=1024, sync=False)
    for name in TABLES:
        db.create_table(name)
    db.create_table("events", "archive")
    db.create_table("doomed")
    rng = random.Random(seed)
    for i in range(40):
        with db.write() as w:
            for name in TABLES:
                t = w.table(name)
                for _ in range(60):
                    k = b"k%05d" % rng.randrange(2000)
                    size = rng.choice([0, 5, 40, 200, 1500, 5000])  # 1500+: overflow pages
                    t.put(k, bytes([i % 251]) * size)
                for _ in range(20):
                    t.delete(b"k%05d" % rng.randrange(2000))
            w.table("doomed").put(b"%d" % i, b"d" * 300)
        if i == 20:
            db.drop_table("doomed")
            db.create_table("doomed")
    return db


@pytest.mark.parametrize(("buf_size", "codec"), [(1000, "none"), (1 << 20, "zstd")])
def test_round_trip_exact(tmp_path: Path, buf_size: int, codec: str) -> None:
    db = churned_db(tmp_path / "src")
    names = [*TABLES, "doomed"]
    with db.read() as r:
        want = contents(r, names)
        want_free = r.free_pages()
        meta = r.meta
        catalog = [(e.name, e.engine, e.table_id, e.created_seq) for e in r.catalog()]
    assert len(want_free) > 50, "the fixture must leave free pages"
    assert any(len(v) > 1024 for t in want.values() for v in t.values())  # overflow values
    result = backup(db, tmp_path / "img", buf_size=buf_size, codec=codec)
    assert not backup_slots(db)
    facts = dict(result.vp.drivers[0])
    assert facts["txnid"] == meta.txnid and facts["root_hash"] == meta.root_hash.hex()
    assert facts["commit_seq"] == meta.commit_seq <= result.vp.commit_seq
    assert facts["pages_sent"] == meta.total_pages - 2 - len(want_free)
    assert facts["total_pages"] == meta.total_pages and facts["page_size"] == 1024
    # Every btree table is backed up in stream 0; the tables' own streams stay empty.
    streams = result.manifest.streams
    assert streams[0].raw_bytes == (HEADER_SIZE + facts["pages_sent"] * 1024 + TRAILER_SIZE)
    assert all(s.raw_bytes == 0 for s in streams[1:])
    db.close()

    dest = tmp_path / "restored"
    restore(tmp_path / "img", dest)
    expect_damaged(dest, "only the btree stream is restored: the catalogued archive table "
                   "'events' has no files")
    with open_restored(dest) as rdb:
        report = rdb.store.check()
        assert report.ok, [str(f) for f in report.findings]
        with rdb.read() as r:
            assert r.root_hash == meta.root_hash and r.txnid == meta.txnid
            assert r.commit_seq == meta.commit_seq
            assert contents(r, names) == want
            assert r.free_pages() == want_free
            assert [(e.name, e.engine, e.table_id, e.created_seq)
                    for e in r.catalog()] == catalog  # archive entry included
        # Both meta slots hold the VP meta; the database takes new commits.
        fd = rdb.store._pager.fd
        _cur, slots = read_metas(fd, rdb.store.path)
        assert [getattr(m, "txnid", None) for m in slots] == [meta.txnid, meta.txnid]
        assert rdb.lockfile.commit_seq() == meta.commit_seq
        rdb.put("alpha", b"new", b"x" * 3000)
        assert rdb.get("alpha", b"new") == b"x" * 3000
        assert rdb.store.check().ok


def test_verify_only_writes_nothing(tmp_path: Path) -> None:
    db = churned_db(tmp_path / "src", seed=3)
    backup(db, tmp_path / "img")
    db.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_restore(tmp_path / "img", {"btree": BtreeBackupEngine()}, None)
    assert result.chunks >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_fresh_database_and_empty_catalog(tmp_path: Path) -> None:
    """A never-written file (txnid 0) backs up as a header and a trailer; no pin."""
    src = tmp_path / "src"
    src.mkdir()

    def init(lf: LockFile) -> None:
        lf.set_commit_seq(0)
        lf.publish_btree_meta(b"")

    lf = LockFile.open(src, init=init)
    store = BtreeStore.open(src, lf, create=True, readonly=False)
    try:
        drv = BtreeBackupEngine(store).get_backup([], _flags())
        assert drv.begin(4096) is Result.OK and drv.prelock() is Result.READY
        assert drv.lock() is Result.OK and drv.unlock() is Result.OK
        assert not lf.live_slots()  # txnid 0: nothing to pin
        buf = Buffer(4096)
        assert drv.get_data(buf) is Result.DONE and buf.last
        assert len(buf.data) == HEADER_SIZE + TRAILER_SIZE
        facts = drv.vp_info()
        assert facts.pages_sent == 0 and drv.end() is Result.OK
    finally:
        store.close()
        lf.close()
    dest = tmp_path / "dest"
    dest.mkdir()
    r = restore_driver(dest)
    feed(r, bytes(buf.data))
    r.set_vp_info(facts)
    assert r.end() is Result.OK
    with open_restored(dest) as rdb:
        assert rdb.tables() == []


def test_engine_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        db.create_table("t")
        db.create_table("a", "archive")
        eng = BtreeBackupEngine(db.store)
        specs = {s.name: s for s in btree_specs(db)}
        with pytest.raises(DriverChoiceError):
            eng.get_backup([*specs.values(), _archive_spec(db)], _flags())
        for base_facts in (None, NoFacts()):  # a layer needs the base image's btree txnid
            with pytest.raises(ChainError):
                eng.get_backup(list(specs.values()),
                               BackupFlags(layer=True, base_facts=base_facts))
        assert isinstance(eng.get_backup(list(specs.values()), _flags(layer=True)),
                          BtreeBackupDriver)
        with pytest.raises(UsageError):
            BtreeBackupEngine().get_backup(list(specs.values()), _flags())
        assert eng.name == "btree" and eng.version == 1
        drv = eng.get_backup(list(specs.values()), _flags())
        assert isinstance(drv, BtreeBackupDriver) and drv.slot_index is None
        assert drv.init_size() == 0
        size = drv.size()
        assert size is not None and size >= db.store.current_meta().total_pages * 4096


def _flags(layer: bool = False) -> BackupFlags:
    base = BtreeVpFacts(txnid=1, commit_seq=1, root_hash=bytes(16), page_size=4096,
                        total_pages=2, pages_sent=0, pages_hash=bytes(16))
    return BackupFlags(layer=layer, base_facts=base if layer else None)


def _archive_spec(db: Database) -> TableSpec:
    info = db.table_info("a")
    assert info.engine != ENGINE_BTREE
    return TableSpec(info.name, info.engine, info.table_id)


def test_tables_must_match_the_snapshot(tmp_path: Path) -> None:
    """A table dropped between listing and the VP fails the backup (no image); a restore
    whose image lists a table the pages do not have is refused."""
    with lamina.open(tmp_path / "db", sync=False) as db:
        db.create_table("keep")
        db.create_table("gone")
        specs = btree_specs(db)
        db.drop_table("gone")
        with pytest.raises(TableNotFoundError, match="gone"):
            backup(db, tmp_path / "img", specs=specs)
        assert not (tmp_path / "img").exists() and not backup_slots(db)
        backup(db, tmp_path / "img", specs=[s for s in specs if s.name == "keep"])
    stream = stream0(tmp_path / "img")
    dest = tmp_path / "dest"
    dest.mkdir()
    drv = BtreeBackupEngine().get_restore(1, specs, RestoreFlags(dest))
    drv.begin()
    feed(drv, stream)  # type: ignore[arg-type]
    with pytest.raises(CorruptionError, match="gone"):
        drv.end()
    drv.cancel()
    assert list(dest.iterdir()) == []


def test_engines_import_only_the_driver_api() -> None:
    """Layering: the btree engine knows the backup package only through its driver API."""
    import ast

    package = Path(BtreeStore.__module__.replace(".", "/")).parent
    root = Path(lamina.__file__).parent.parent
    for module in (root / package).glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.startswith("lamina.backup"):
                    assert name == "lamina.core.driver", (module.name, name)
