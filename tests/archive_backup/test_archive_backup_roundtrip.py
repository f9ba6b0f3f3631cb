"""Round trips through the real kernel: several tables, every codec, many blocks, buffers
from 64 bytes (the meta spans many buffers) to 1 MiB; restored files open, check clean and
hold exactly the rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lamina import online
from lamina.backup import ImageReader
from lamina.engines.archive.stream import STREAM_HEADER_SIZE, STREAM_META_SIZE

from .archive_backup_helpers import (
    archive_specs,
    backup,
    backup_slots,
    fill,
    open_db,
    restore,
    restored_rows,
    retained_files,
    row,
)

CODECS = ("zstd", "zlib", "none")


@pytest.mark.parametrize("buf_size", [64, 1000, 1 << 20])
def test_round_trip_every_codec(tmp_path: Path, buf_size: int) -> None:
    with open_db(tmp_path / "db") as db:
        for codec in CODECS:
            db.create_table(codec, engine="archive", codec=codec, block_target=400)
            fill(db, codec, commits=25, per_commit=13)
        db.create_table("empty", engine="archive")
        db.archive("zstd").optimize(block_target=2000)  # generation 2, fewer larger blocks
        fill(db, "zstd", commits=3, per_commit=5)
        specs = archive_specs(db)
        expected = {s.name: [r for _i, r in db.archive(s.name).scan()] for s in specs}
        stats = {s.name: db.archive(s.name).stat() for s in specs}
        result = backup(db, tmp_path / "img", buf_size=buf_size)
        assert not backup_slots(db)
        assert not retained_files(db.path)
    for s in specs:
        assert stats[s.name]["blocks"] > 10 or s.name in ("empty", "zstd")
    # Chunks: stream 0 (common) is empty; each table stream is header + meta + data.
    with open(tmp_path / "img", "rb") as f:
        reader = ImageReader(f)
        chunks = list(reader.chunks())
        manifest = reader.manifest
    assert manifest is not None
    assert not [c for c in chunks if c.stream == 0]
    by_stream: dict[int, list[int]] = {}
    for c in chunks:
        assert len(c.data) <= buf_size
        by_stream.setdefault(c.stream, []).append(len(c.data))
    facts = result.manifest.vp.drivers[0]
    assert facts["vp_seq"] == result.vp.commit_seq
    for i, s in enumerate(specs, start=1):
        sizes = by_stream[i]
        position = stats[s.name]["committed_length"]
        assert sum(sizes) == STREAM_HEADER_SIZE + STREAM_META_SIZE + position
        if buf_size == 64:  # the meta alone needs 17 buffers
            assert len(sizes) > (STREAM_HEADER_SIZE + STREAM_META_SIZE) // 64
        t = facts["tables"][s.name]
        assert t["rows"] == len(expected[s.name]) and t["position"] == position
        assert t["generation"] == stats[s.name]["generation"]
        assert t["last_commit_seq"] == stats[s.name]["last_commit_seq"]
    restore(tmp_path / "img", tmp_path / "dest")
    # the driver writes exactly two files per table (no temp files left)
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(
        f"{s.name}.{ext}" for s in specs for ext in ("ARM", "ARZ"))
    for s in specs:
        assert restored_rows(tmp_path / "dest", s) == expected[s.name]
    assert expected["zlib"][16] == row("zlib", 17) and b"\n" in expected["zlib"][16]


def test_restored_meta_is_the_vp_meta(tmp_path: Path) -> None:
    """Restored meta: same rows/length/generation/codec as the source at the VP."""
    with open_db(tmp_path / "db") as db:
        db.create_table("t", engine="archive", codec="zlib", level=3, block_target=300)
        fill(db, "t", commits=10, per_commit=9)
        st = db.archive("t").stat()
        backup(db, tmp_path / "img", buf_size=333)
        (spec,) = archive_specs(db)
    restore(tmp_path / "img", tmp_path / "dest")
    rows = restored_rows(tmp_path / "dest", spec)
    assert len(rows) == 90
    from lamina.engines.archive.meta import read_meta_file
    read = read_meta_file(tmp_path / "dest" / "t.ARM")
    m = read.meta
    assert not read.damaged_slots
    assert (m.row_count, m.next_row_id, m.data_length, m.generation, m.codec, m.level,
            m.blocks, m.raw_bytes, m.last_commit_seq, m.block_target) == (
        st["rows"], st["next_row_id"], st["committed_length"], st["generation"], 1, 3,
        st["blocks"], st["raw_bytes"], st["last_commit_seq"], 300)
    assert (tmp_path / "dest" / "t.ARZ").stat().st_size == st["committed_length"]


def test_whole_database_through_online_backup(tmp_path: Path) -> None:
    """The lead's orchestration (btree + archive) restores archive tables exactly."""
    with open_db(tmp_path / "db") as db:
        db.create_table("bt")
        db.put("bt", b"k", b"v")
        db.create_table("log", engine="archive", block_target=256)
        fill(db, "log", commits=20, per_commit=7)
        expected = [r for _i, r in db.archive("log").scan()]
        online.backup(db, tmp_path / "img", buf_size=128)
    assert online.verify(tmp_path / "img", deep=True)["ok"]
    online.restore(tmp_path / "img", tmp_path / "dest")
    with open_db(tmp_path / "dest") as db2:
        assert [r for _i, r in db2.archive("log").scan()] == expected
        assert db2.get("bt", b"k") == b"v"
