"""Files of the formats before the block chain and the root hash are refused with one clear
line saying they were made by an older format (exit 6), never misread: a backup image of
format 1, an archive table whose ``.ARM`` is of version 1 (restore and open alike)."""

from __future__ import annotations

import struct
from pathlib import Path

import xxhash

import lamina
from lamina.backup import image_format as F
from lamina.engines.archive import format as AF
from lamina.errors import VersionError
from support import cli, expect_damaged

#: The version-1 ``.ARM`` slot body (before the chain head): 120 bytes, then xxh3_64.
V1_SLOT = struct.Struct("<8sIIQIBbHQQQQIIQQQQ16x")


def _v1_header(image: bytes) -> bytes:
    fields = list(F.HEADER.unpack_from(image))
    fields[1] = 1
    body = F.HEADER.pack(*fields)
    return body + F.HEADER_CHECKSUM.pack(F.xxh3(body)) + image[F.HEADER_SIZE:]


def test_a_format_1_image_is_refused_as_older(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        db.create_table("kv")
        db.put("kv", b"k", b"v")
        db.backup(tmp_path / "img")
    old = tmp_path / "old.img"
    old.write_bytes(_v1_header((tmp_path / "img").read_bytes()))
    for args in (("info", str(old)), ("verify", str(old)), ("verify", "--deep", str(old)),
                 ("restore", str(old), "--to", str(tmp_path / "r"))):
        proc = cli.run(*args)
        assert proc.returncode == 6, (args, proc.stderr)
        assert "made by an older format (backup image format 1" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_an_archive_meta_of_version_1_is_refused_as_older(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with lamina.open(db) as handle:
        handle.create_table("log", "archive")
        handle.append("log", b"row")
    arm = db / "log.ARM"
    raw = bytearray(arm.read_bytes())
    for slot in range(AF.ARM_SLOT_COUNT):
        at = slot * AF.ARM_SLOT_STRIDE
        fields = list(AF.ARM_SLOT_BODY.unpack_from(raw, at))
        fields[1], fields[2] = 1, 128
        del fields[-1]  # no chain head in version 1
        body = V1_SLOT.pack(*fields)
        raw[at:at + AF.ARM_SLOT_STRIDE] = (body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
                                            ).ljust(AF.ARM_SLOT_STRIDE, b"\0")
    arm.write_bytes(bytes(raw))
    expect_damaged(db, "its archive meta rewritten in the older format on purpose")
    try:
        with lamina.open(db) as handle:
            handle.archive("log").count()
    except VersionError as exc:
        assert "made by an older format (archive meta format version 1" in str(exc)
    else:
        raise AssertionError("a version-1 archive meta was opened")
    proc = cli.run("scan", str(db), "log")
    assert proc.returncode == 6, proc.stderr
    assert "made by an older format" in proc.stderr and "Traceback" not in proc.stderr
    assert arm.read_bytes() == bytes(raw)  # refused, never rewritten
