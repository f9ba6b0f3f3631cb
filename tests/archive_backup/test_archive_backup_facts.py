"""The archive driver's typed VP facts (JSON keys as stored in images; every fact required),
the one block walk (its stop-early contract, used by the VP cut) and the backup slot's
txnid, read from the lock file without the btree engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lamina.backup import BackupFlags, RestoreDriver, Result
from lamina.core.driver import NoFacts
from lamina.engines.archive import vpcut
from lamina.engines.archive.datafile import read_header
from lamina.engines.archive.engine import ArchiveBackupEngine
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.format import ARZ_HEADER_SIZE
from lamina.engines.archive.logical import ArchiveLogical
from lamina.engines.archive.meta import read_meta_file
from lamina.engines.archive.walker import BlockWalker
from lamina.errors import ChainError, CorruptionError

from .archive_backup_helpers import (
    archive_specs,
    backup_slots,
    feed,
    fill,
    open_db,
    restore_driver,
    table_streams,
)


def run_all_streams(drv: RestoreDriver, streams: dict[int, bytes]) -> Result:
    for stream in sorted(streams):
        result = feed(drv, stream, streams[stream])
        if result is not Result.OK:
            return result
    return Result.OK


TABLE = {"rows": 3, "position": 400, "generation": 2, "last_commit_seq": 9, "table_id": 5,
         "chain_head": "00" * 32}


def test_facts_round_trip_with_todays_keys() -> None:
    whole = ArchiveVpFacts(12, {"t": ArchiveTableFacts(5, 3, 400, 2, 9, bytes(32))})
    assert whole.to_json() == {"vp_seq": 12, "tables": {"t": TABLE}}
    assert list(whole.to_json()["tables"]["t"]) == list(TABLE)  # key order kept
    layer = {"vp_seq": 12, "tables": {"t": dict(TABLE, base_position=0)}}
    decoded = ArchiveVpFacts.from_json(json.loads(json.dumps(layer)), "img")
    assert decoded.tables["t"].base_position == 0 and decoded.to_json() == layer
    assert ArchiveVpFacts.from_json({"vp_seq": 0, "tables": {}}, "img").tables == {}


@pytest.mark.parametrize("damage", [
    lambda f: f.pop("vp_seq"),
    lambda f: f.pop("tables"),
    lambda f: f.update(tables=[]),
    lambda f: f["tables"]["t"].pop("rows"),
    lambda f: f["tables"]["t"].pop("table_id"),
    lambda f: f["tables"]["t"].update(position=True),
    lambda f: f["tables"]["t"].update(position=ARZ_HEADER_SIZE - 1),
    lambda f: f["tables"]["t"].update(generation="2"),
    lambda f: f["tables"]["t"].update(last_commit_seq=-1),
    lambda f: f["tables"]["t"].update(base_position=None),
    lambda f: f["tables"]["t"].pop("chain_head"),
    lambda f: f["tables"]["t"].update(chain_head="00" * 31),
    lambda f: f["tables"].update(u=7),
])
def test_a_missing_or_mistyped_fact_is_corruption(damage: Any) -> None:
    facts: dict[str, Any] = {"vp_seq": 12, "tables": {"t": dict(TABLE)}}
    damage(facts)
    with pytest.raises(CorruptionError, match="img"):
        ArchiveBackupEngine(None, None).decode_vp_facts(facts, "img")


def test_the_restore_driver_needs_facts_naming_every_table(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("a", engine="archive", codec="zlib", block_target=300)
        fill(db, "a", commits=3, per_commit=5)
        streams, info = table_streams(db, 4096)
        specs = archive_specs(db)
    good = ArchiveVpFacts.from_json(info, "test")
    for facts, why in [(None, "no archive VP facts"), (NoFacts(), "no archive VP facts"),
                       (ArchiveVpFacts(good.vp_seq, {}), "do not name table 'a'"),
                       (ArchiveVpFacts(good.vp_seq + 1, good.tables), "VP facts")]:
        drv = restore_driver(None, specs)
        assert run_all_streams(drv, streams) is Result.OK
        if facts is not None:
            drv.set_vp_info(facts)
        assert drv.end() is Result.ERROR
        assert why in str(drv.error), drv.error
    drv = restore_driver(None, specs)
    assert run_all_streams(drv, streams) is Result.OK
    drv.set_vp_info(good)
    assert drv.end() is Result.OK, drv.error


def test_a_layer_base_must_be_archive_facts(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("a", engine="archive")
        engine = ArchiveBackupEngine(db.path, db.lockfile)
        with pytest.raises(ChainError, match="not an archive driver's"):
            engine.get_backup(archive_specs(db), BackupFlags(layer=True, base_facts=NoFacts()))
        engine.get_backup(archive_specs(db), BackupFlags(layer=True, base_facts=None))


def test_the_walk_stops_where_its_caller_stops(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("a", engine="archive", block_target=50)
        seqs = []
        for i in range(4):
            with db.archive("a").writer() as w:
                w.append_many([b"row %d.%d" % (i, j) for j in range(5)])
                seqs.append(w.commit())
        arm, arz = db.path / "a.ARM", db.path / "a.ARZ"
        meta = read_meta_file(arm).meta
        fd = os.open(arz, os.O_RDONLY)
        try:
            walker = BlockWalker("a", arz, meta.data_length)
            every = list(walker.headers(fd))
            assert (walker.offset, walker.expected) == (meta.data_length, meta.next_row_id)
            assert len(every) == meta.blocks and every[0].offset == ARZ_HEADER_SIZE
            stop = next(i for i, h in enumerate(every) if h.commit_seq > seqs[1])
            walker = BlockWalker("a", arz, meta.data_length)
            for h in walker.headers(fd):
                if h.commit_seq > seqs[1]:
                    break
            assert (walker.offset, walker.expected) == (every[stop].offset,
                                                        every[stop].first_row_id)
            cut = vpcut.cut_at(fd, arz, "a", read_header(fd, arz), meta, seqs[1])
            assert (cut.row_count, cut.data_length, cut.blocks, cut.last_commit_seq) == (
                10, every[stop].offset, stop, seqs[1])
            assert cut.raw_bytes == sum(h.row_bytes for h in every[:stop])
            with pytest.raises(CorruptionError, match="runs past the committed length"):
                list(BlockWalker("a", arz, every[1].end - 1).headers(fd))
        finally:
            os.close(fd)


def test_the_backup_slot_pins_the_published_btree_txnid(tmp_path: Path) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("bt")
        db.put("bt", b"k", b"v")  # btree commits
        db.create_table("a", engine="archive")
        txnid = db.store.current_meta().txnid
        assert db.lockfile.btree_txnid() == txnid > 1
        # the snapshot driver's source takes its backup slot the same way as the native one
        snap = ArchiveLogical(db.path, db.lockfile).snapshot_source(archive_specs(db))
        snap.begin()
        try:
            assert [s[2] for s in backup_slots(db)] == [txnid]
        finally:
            snap.close()
