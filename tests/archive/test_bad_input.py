"""Bad input: unknown codec, future versions, rows too large, lock timeouts."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from lamina.core import compression
from lamina.core.lockfile import LockFile
from lamina.engines.archive import MAX_ROW_BYTES, ArchiveTable
from lamina.engines.archive import format as F
from lamina.engines.archive.meta import encode_slot
from lamina.errors import (
    CorruptionError,
    LockedError,
    UnsupportedError,
    ValueTooLargeError,
    VersionError,
)

from .conftest import spawn

Make = Callable[..., ArchiveTable]


def rewrite_slots(arm: Path, **changes: int) -> None:
    """Re-encode both meta slots with ``changes`` (valid checksums)."""
    from lamina.engines.archive.meta import decode_slot

    raw = bytearray(arm.read_bytes())
    for i in range(F.ARM_SLOT_COUNT):
        off = i * F.ARM_SLOT_STRIDE
        _state, meta, _v = decode_slot(bytes(raw[off:off + F.ARM_SLOT_SIZE]))
        assert meta is not None
        raw[off:off + F.ARM_SLOT_SIZE] = encode_slot(meta.replace(**changes))
    arm.write_bytes(bytes(raw))


def set_version(path: Path, offset: int, body: struct.Struct, version: int) -> None:
    """Write a version field and re-checksum the struct (a well-formed future file)."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, offset + 8, version)
    end = offset + body.size
    struct.pack_into("<Q", raw, end, xxhash.xxh3_64_intdigest(bytes(raw[offset:end])))
    path.write_bytes(bytes(raw))


def test_unknown_codec_in_meta(make_table: Make, db: Path, lockfile: LockFile) -> None:
    t = make_table()
    t.append(b"x")
    t.close()
    rewrite_slots(db / "t.ARM", codec=9)
    with pytest.raises(UnsupportedError, match=r"unknown codec id 9.*'t'"):
        ArchiveTable.open(db, "t", 1, lockfile)


def test_unknown_codec_in_block(make_table: Make, db: Path, lockfile: LockFile) -> None:
    from lamina.engines.archive.block import encode_header

    t = make_table(codec="none")
    t.append(b"payload")
    t.close()
    arz = db / "t.ARZ"
    raw = bytearray(arz.read_bytes())
    off = F.ARZ_HEADER_SIZE
    fields = F.BLOCK_HEADER_BODY.unpack_from(raw, off)
    flags, first, count, raw_len, stored_len, seq, payload_sum = (
        fields[2], fields[4], fields[5], fields[6], fields[7], fields[9], fields[10])
    raw[off:off + F.BLOCK_HEADER_SIZE] = encode_header(7, flags, first, count, raw_len,
                                                       stored_len, seq, payload_sum)
    arz.write_bytes(bytes(raw))
    r = ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    with pytest.raises(UnsupportedError, match=f"unknown codec id 7.*offset {off}, rows 1-1"):
        r.get(1)
    assert any("codec" in f.what for f in r.check().findings)
    r.close()


def test_codec_library_missing(make_table: Make, db: Path, lockfile: LockFile,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_table().close()
    monkeypatch.setattr(compression, "AVAILABLE", {"zlib", "none"})
    with pytest.raises(UnsupportedError, match="codec zstd is not available"):
        ArchiveTable.open(db, "t", 1, lockfile)
    with pytest.raises(UnsupportedError):
        ArchiveTable.create(db, "u", 2, codec="zstd")
    ArchiveTable.create(db, "u", 2, codec="zlib")  # other codecs still work


def test_future_versions(make_table: Make, db: Path, lockfile: LockFile) -> None:
    t = make_table()
    t.append(b"x")
    t.close()
    arm, arz = db / "t.ARM", db / "t.ARZ"
    arm_bytes, arz_bytes = arm.read_bytes(), arz.read_bytes()
    set_version(arm, F.ARM_SLOT_STRIDE, F.ARM_SLOT_BODY, 3)  # one slot from the future
    with pytest.raises(VersionError, match="archive meta format version 3"):
        ArchiveTable.open(db, "t", 1, lockfile)
    with pytest.raises(VersionError):
        ArchiveTable.read_last_commit_seq(db, "t")
    arm.write_bytes(arm_bytes)
    set_version(arz, 0, F.ARZ_HEADER_BODY, 3)
    with pytest.raises(VersionError, match="archive data format version 3"):
        ArchiveTable.open(db, "t", 1, lockfile, readonly=True)
    arz.write_bytes(arz_bytes)
    assert ArchiveTable.open(db, "t", 1, lockfile).count() == 1


def test_row_too_large(make_table: Make) -> None:
    t = make_table()
    t.append_many([b"a", b"b"])
    with pytest.raises(ValueTooLargeError, match=rf"{MAX_ROW_BYTES + 1} bytes.*'t'"):
        t.append(b"z" * (MAX_ROW_BYTES + 1))
    with t.writer() as w:
        w.append(b"kept")
        with pytest.raises(ValueTooLargeError):
            w.append_many([b"ok", b"z" * (MAX_ROW_BYTES + 1)])  # all-or-nothing
        assert w.pending == 1
    assert [r for _i, r in t.scan()] == [b"a", b"b", b"kept"]
    assert t.check().ok


def test_lock_timeout_other_process(make_table: Make, db: Path) -> None:
    t = make_table("logs", 5)
    t.append(b"before")
    holder = spawn("hold", str(db), "--table", "logs", "--id", "5", stdin=-1)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "LOCKED"
        start = time.monotonic()
        # The holder keeps the lock until we close its stdin: the writer gives up after its
        # own timeout (the message names it; the default is 5 s), having waited for it.
        with pytest.raises(LockedError, match=r"table 'logs' is locked by another process "
                                              r"\(waited 0\.(2\d*|3)s\)"):
            t.writer(timeout=0.3)
        assert time.monotonic() - start > 0.25
        with pytest.raises(LockedError, match="'logs'"):
            t.optimize(timeout=0.1)
        with pytest.raises(LockedError):
            t.writer(timeout=0).close()
        assert t.count() == 1 and t.get(1) == b"before"  # reads never wait for the writer
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    t.append(b"after")  # the lock is free again
    assert t.count() == 2


def test_wrong_table_id_in_data_file(make_table: Make, db: Path, lockfile: LockFile) -> None:
    make_table("a", 1).close()
    make_table("b", 2).close()
    (db / "a.ARZ").write_bytes((db / "b.ARZ").read_bytes())
    with pytest.raises(CorruptionError, match="table id 2, expected 1"):
        ArchiveTable.open(db, "a", 1, lockfile)
