"""The restore driver proves every byte: verify-only mode (``destination`` None) detects
crafted bad blocks whose chunk checksums are valid and writes nothing; malformed streams
are CorruptionError naming table and offset; newer versions are VersionError; hostile
table names are refused."""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import xxhash

from lamina.backup import BackupFlags, RestoreFlags, Result, TableSpec
from lamina.backup import image_format as IF
from lamina.core import fileio
from lamina.engines.archive import format as AF
from lamina.engines.archive.block import encode_header
from lamina.engines.archive.engine import ArchiveBackupEngine
from lamina.engines.archive.facts import ArchiveVpFacts
from lamina.engines.archive.stream import (
    STREAM_HEADER_BODY,
    STREAM_HEADER_CHECKSUM,
    STREAM_HEADER_SIZE,
    STREAM_META_SIZE,
)
from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    DriverChoiceError,
    InvalidNameError,
    LaminaError,
    VersionError,
)

from .archive_backup_helpers import (
    archive_specs,
    backup,
    feed,
    fill,
    open_db,
    restore,
    restore_driver,
    table_streams,
)

#: Stream offset of the first block header of a table stream.
FIRST_BLOCK = STREAM_HEADER_SIZE + STREAM_META_SIZE + AF.ARZ_HEADER_SIZE


@pytest.fixture
def source(tmp_path: Path) -> tuple[dict[int, bytes], dict[str, object], list[TableSpec]]:
    with open_db(tmp_path / "db") as db:
        db.create_table("a", engine="archive", codec="zstd", block_target=300)
        db.create_table("b", engine="archive", codec="zlib", block_target=300)
        for name in ("a", "b"):
            fill(db, name, commits=8, per_commit=10)
        streams, info = table_streams(db, 4096)
        return streams, dict(info), archive_specs(db)


@contextmanager
def writes_spy() -> Iterator[Counter[str]]:
    """fileio calls that create or change files, made while active."""
    before = Counter(fileio.COUNTERS)
    seen: Counter[str] = Counter()
    try:
        yield seen
    finally:
        for key in ("open", "pwrite", "fsync", "fdatasync", "rename", "truncate", "fsync_dir"):
            seen[key] = fileio.COUNTERS[key] - before[key]


def error_of(drv: object) -> LaminaError:
    err = drv.error  # type: ignore[attr-defined]
    assert isinstance(err, LaminaError)
    return err


def run_all(drv: object, streams: dict[int, bytes], info: dict[str, object] | None,
            piece: int = 333) -> Result:
    for stream in sorted(streams):
        result = feed(drv, stream, streams[stream], piece)  # type: ignore[arg-type]
        if result is not Result.OK:
            return result
    if info is not None:
        drv.set_vp_info(ArchiveVpFacts.from_json(info, "test VP facts"))  # type: ignore[attr-defined]
    return drv.end()  # type: ignore[attr-defined,no-any-return]


def restore_driver_flags(dest: Path | None, layer: bool = False) -> RestoreFlags:
    return RestoreFlags(dest, layer=layer)


def block_at(stream: bytes | bytearray, offset: int) -> tuple[int, int]:
    """(header offset, stored length) of the block at stream offset ``offset``."""
    fields = AF.BLOCK_HEADER_BODY.unpack_from(stream, offset)
    return offset, fields[7]


def test_verify_only_accepts_a_good_stream_and_writes_nothing(
        source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]],
        tmp_path: Path) -> None:
    streams, info, specs = source
    before = sorted(os.listdir(tmp_path))
    with writes_spy() as seen:
        drv = restore_driver(None, specs)
        assert drv.verify_only
        assert run_all(drv, streams, info, piece=7) is Result.OK, drv.error
    assert not +seen, dict(seen)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("damage", ["payload byte", "garbage payload, valid checksums",
                                    "row count lie, valid checksums", "seq after VP"])
def test_verify_only_detects_a_crafted_bad_block(
        source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]],
        damage: str) -> None:
    streams, info, specs = source
    bad = bytearray(streams[1])
    # damage the third block of table "a"
    off = FIRST_BLOCK
    for _ in range(2):
        off, stored = block_at(bad, off)
        off += AF.BLOCK_HEADER_SIZE + stored
    off, stored = block_at(bad, off)
    fields = list(AF.BLOCK_HEADER_BODY.unpack_from(bad, off))
    payload = bytes(bad[off + AF.BLOCK_HEADER_SIZE: off + AF.BLOCK_HEADER_SIZE + stored])
    expect = "payload checksum"
    if damage == "payload byte":
        bad[off + AF.BLOCK_HEADER_SIZE + stored // 2] ^= 0x40
    else:
        if damage.startswith("garbage"):
            payload = random.Random(1).randbytes(stored)
            expect = "does not decompress"
        elif damage.startswith("row count"):
            fields[5] += 1  # one more row than the payload holds
            expect = "row lengths do not add up|rows, header says"
        else:
            fields[9] = int(info["vp_seq"]) + 1  # type: ignore[call-overload]
            expect = "after the table's last commit"
        (_m, codec, flags, _r, first, count, raw_len, _s, _z, seq, _p) = fields
        head = encode_header(codec, flags, first, count, raw_len, stored, seq,
                             xxhash.xxh3_64_intdigest(payload))
        bad[off:off + AF.BLOCK_HEADER_SIZE + stored] = head + payload
    with writes_spy() as seen:
        drv = restore_driver(None, specs)
        assert run_all(drv, {1: bytes(bad), 2: streams[2]}, info) is Result.ERROR
    err = error_of(drv)
    assert isinstance(err, CorruptionError), err
    assert re.search(expect, str(err)) and "'a'" in str(err), str(err)
    assert f"offset {off - STREAM_HEADER_SIZE - STREAM_META_SIZE}" in str(err)
    assert not +seen, dict(seen)


def rewrite_chunk(image: Path, stream: int, seq: int, offset: int, xor: int) -> None:
    """Flip bits of one byte of a chunk of an uncompressed image, fixing the chunk's own
    checksums so only what the bytes mean is wrong."""
    raw = bytearray(image.read_bytes())
    pos = IF.HEADER_SIZE
    _d, _t, length, _c = IF.decode_catalog_head(bytes(raw[pos:pos + IF.CATALOG_HEAD_SIZE]), pos)
    pos += IF.CATALOG_HEAD_SIZE + length
    while raw[pos:pos + 4] == IF.CHUNK_MAGIC:
        fields = list(IF.CHUNK_HEAD.unpack_from(raw, pos))
        stored = fields[7]
        start = pos + IF.CHUNK_HEAD_SIZE
        if (fields[1], fields[2]) == (stream, seq):
            assert fields[4] == 0, "image must be written with codec 'none'"
            raw[start + offset] ^= xor
            fields[8] = IF.xxh3(bytes(raw[start:start + stored]))
            head = IF.CHUNK_HEAD.pack(*fields)
            raw[pos:start] = head + IF.CHUNK_HEAD_CHECKSUM.pack(IF.xxh3(head))
            image.write_bytes(bytes(raw))
            return
        pos = start + stored
    raise AssertionError("chunk not found")


@pytest.mark.parametrize("verify_only", [True, False])
def test_bad_block_in_an_image_with_valid_chunks(tmp_path: Path, verify_only: bool) -> None:
    with open_db(tmp_path / "db") as db:
        db.create_table("a", engine="archive", block_target=300)
        fill(db, "a", commits=6, per_commit=10)
        backup(db, tmp_path / "img", buf_size=100, codec="none")
    # stream 1 = table "a"; its first block's payload starts at stream offset FIRST_BLOCK + 56
    at = FIRST_BLOCK + AF.BLOCK_HEADER_SIZE + 5
    rewrite_chunk(tmp_path / "img", 1, at // 100, at % 100, 0x10)
    dest = None if verify_only else tmp_path / "dest"
    with pytest.raises(CorruptionError, match="block payload checksum mismatch") as exc:
        restore(tmp_path / "img", dest)
    assert "table 'a', block at offset 128" in str(exc.value)
    if dest is not None:
        assert os.listdir(dest) == []  # cancelled: what was written is gone


def patch_header(stream: bytes, **changes: int) -> bytes:
    """Re-encode a stream header with fields changed (checksum fixed)."""
    names = ["magic", "version", "size", "meta_len", "table_id", "vp_seq", "length",
             "meta_sum"]
    fields = dict(zip(names, STREAM_HEADER_BODY.unpack_from(stream)))
    fields.update(changes)
    body = STREAM_HEADER_BODY.pack(*(fields[n] for n in names))
    return body + STREAM_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body)) + stream[64:]


def test_malformed_streams_are_corruption_naming_table_and_offset(
        source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]]) -> None:
    streams, _info, specs = source
    s = streams[1]
    cases: dict[str, tuple[bytes, str]] = {
        "magic": (b"X" + s[1:], "bad archive stream magic"),
        "checksum": (s[:30] + bytes([s[30] ^ 1]) + s[31:], "stream header checksum"),
        "meta": (s[:STREAM_HEADER_SIZE + 40] + b"\xff" + s[STREAM_HEADER_SIZE + 41:],
                 "meta checksum"),
        "table id": (patch_header(s, table_id=77), "table id 77"),
        "short": (s[:-10], "stream ends after"),
        "long": (s + b"\0" * 10, "past the VP position"),
        "meta length": (patch_header(s, meta_len=512), "meta length"),
    }
    for what, (data, message) in cases.items():
        drv = restore_driver(None, specs)
        result = feed(drv, 1, data, 50)
        if result is Result.OK:
            result = drv.end()
        assert result is Result.ERROR, what
        err = error_of(drv)
        assert isinstance(err, CorruptionError), (what, err)
        assert message in str(err) and "'a'" in str(err), (what, str(err))
        assert "offset" in str(err), (what, str(err))


def test_versions(source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]],
                  tmp_path: Path) -> None:
    streams, _info, specs = source
    engine = ArchiveBackupEngine(None, None)
    with pytest.raises(VersionError):
        engine.get_restore(2, specs, restore_driver_flags(None))
    with pytest.raises(ChainError):  # a layer is restored only with its chain
        engine.get_restore(1, specs, restore_driver_flags(None, layer=True))
    drv = restore_driver(None, specs)
    # Version 2 is a layer's tail stream; 3 is from a newer build.
    assert feed(drv, 1, patch_header(streams[1], version=3), 100) is Result.ERROR
    assert isinstance(error_of(drv), VersionError)


def test_end_checks_the_vp_facts_and_every_stream(
        source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]],
        tmp_path: Path) -> None:
    streams, info, specs = source
    tables = dict(info["tables"])  # type: ignore[call-overload]
    lying = dict(info, tables=dict(tables, a=dict(tables["a"], rows=tables["a"]["rows"] + 1)))
    (tmp_path / "d1").mkdir()
    drv = restore_driver(tmp_path / "d1", specs)
    assert run_all(drv, streams, lying) is Result.ERROR
    assert "VP facts" in str(error_of(drv))
    drv.cancel()
    assert os.listdir(tmp_path / "d1") == []
    drv = restore_driver(None, specs)  # table "b" never sent
    assert run_all(drv, {1: streams[1]}, info) is Result.ERROR
    assert "no complete stream" in str(error_of(drv)) and "'b'" in str(error_of(drv))
    drv = restore_driver(None, specs)
    assert feed(drv, 0, b"x") is Result.ERROR  # the common stream must stay empty
    assert isinstance(error_of(drv), CorruptionError)
    (tmp_path / "d2").mkdir()
    drv = restore_driver(tmp_path / "d2", specs)  # and the good case, restoring
    assert run_all(drv, streams, info) is Result.OK, drv.error
    assert sorted(os.listdir(tmp_path / "d2")) == ["a.ARM", "a.ARZ", "b.ARM", "b.ARZ"]


def test_restore_never_overwrites_a_file_it_did_not_create(
        source: tuple[dict[int, bytes], dict[str, object], list[TableSpec]],
        tmp_path: Path) -> None:
    streams, _info, specs = source
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "b.ARZ").write_bytes(b"not ours")
    drv = restore_driver(dest, specs)
    assert feed(drv, 1, streams[1]) is Result.OK
    assert feed(drv, 2, streams[2]) is Result.ERROR
    assert isinstance(error_of(drv), AlreadyExistsError), drv.error
    assert drv.cancel() is Result.OK
    assert os.listdir(dest) == ["b.ARZ"] and (dest / "b.ARZ").read_bytes() == b"not ours"


@pytest.mark.parametrize("name", ["../x", "/abs", "..", ".", ".hidden", "a/b", "a\\b",
                                  "nul\0", ""])
def test_hostile_names_are_refused(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    before = sorted(os.listdir(tmp_path))
    engine = ArchiveBackupEngine(None, None)
    spec = TableSpec(name, "archive", 1)
    with pytest.raises(InvalidNameError):
        engine.get_restore(1, [spec], restore_driver_flags(dest))
    with pytest.raises(InvalidNameError):
        engine.get_restore(1, [spec], restore_driver_flags(None))
    with pytest.raises(InvalidNameError):
        ArchiveBackupEngine(tmp_path, None).get_backup([spec], BackupFlags())
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(dest) == []


def test_engine_refuses_other_engines_tables(tmp_path: Path) -> None:
    engine = ArchiveBackupEngine(None, None)
    with pytest.raises(DriverChoiceError):
        engine.get_restore(1, [TableSpec("t", "btree", 1)], restore_driver_flags(None))
    with pytest.raises(LaminaError):
        engine.get_backup([TableSpec("t", "archive", 1)], BackupFlags())  # no database
