"""Archive meta files: a damaged newest ``.ARM`` slot is a reported fallback whose bytes a
writer saves aside before reusing the slot (issue 10, item 6); a committed length past the
end of the data file is refused before any block length read from the file sizes a read
(item 4).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path

import xxhash

import lamina
from lamina.database import Database
from lamina.engines.archive import format as AF
from lamina.engines.archive.meta import decode_file
from support import cli, expect_damaged

FIRST = [b"first %d" % i for i in range(10)]
SECOND = [b"second %d" % i for i in range(5)]


def build(d: Path) -> tuple[int, bytes]:
    """A table ``log`` with two commits; returns (the current slot, the .ARM bytes)."""
    with lamina.open(d) as db:
        db.create_table("log", "archive")
        db.append_many("log", FIRST)
        db.append_many("log", SECOND)
    raw = (d / "log.ARM").read_bytes()
    return decode_file(raw, d / "log.ARM").slot, raw


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def rows(db: Database) -> list[bytes]:
    return [r for _i, r in db.scan("log")]


def others(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if n != "LOCK"}


def test_newest_arm_slot_damage_is_reported_and_saved(tmp_path: Path) -> None:
    d = tmp_path / "db"
    slot, pristine = build(d)
    current = decode_file(pristine, d / "log.ARM").meta
    arm = d / "log.ARM"
    flip(arm, slot * AF.ARM_SLOT_STRIDE + 50)  # in the next row id: only the checksum knows
    damaged = arm.read_bytes()[slot * AF.ARM_SLOT_STRIDE:(slot + 1) * AF.ARM_SLOT_STRIDE]
    (d / "LOCK").unlink()
    before = others(d)

    with lamina.open(d, create=False, readonly=True) as db:
        assert rows(db) == FIRST  # the previous commit
        fb = db.archive("log").fallback
        assert fb is not None
        assert (fb.slot, fb.current_slot, fb.lost_counter, fb.current_counter) == (
            slot, 1 - slot, current.counter, current.counter - 1)
        assert (fb.lost_generation, fb.lost_commit_seq) == (1, current.last_commit_seq)
        assert db.stat()["archive"]["log"]["fallback"] == fb.to_json()
        report = db.check()
        falls = [f for f in report.findings if f.what.startswith("fallback:")]
        assert [(f.table, f.where) for f in falls] == [("log", f"meta slot {slot}")]
        assert "log.ARM" in falls[0].what and f"counter {current.counter}" in falls[0].what
        assert report.stats["archive.log.fallback"]["slot"] == slot
    assert others(d) == before  # read-only: nothing written

    proc = cli.run("check", str(d))
    assert proc.returncode == 7 and f"FINDING log: meta slot {slot}: fallback: " in proc.stdout
    assert proc.stderr.count("\n") == 1 and "log.ARM slot" in proc.stderr
    assert others(d) == before

    # A writer saves the damaged sector aside before its first meta write reuses the slot.
    with lamina.open(d, create=False) as db:
        db.append("log", b"after")
        saved = d / f"log.ARM.slot{slot}-{current.counter}.damaged"
        assert saved.read_bytes() == damaged
        fb = db.archive("log").fallback
        assert fb is not None and fb.saved == saved
        assert db.stat()["archive"]["log"]["fallback"]["saved"] == saved.name
        assert db.check().ok  # repaired: what remains is the saved copy
        assert rows(db) == [*FIRST, b"after"]
    assert arm.read_bytes()[slot * AF.ARM_SLOT_STRIDE:(slot + 1) * AF.ARM_SLOT_STRIDE] != damaged
    with lamina.open(d, create=False) as db:
        assert db.archive("log").fallback is None and db.check().ok
    assert sorted(n for n in os.listdir(d) if n.endswith(".damaged")) == [saved.name]


def test_older_arm_slot_damage_is_no_fallback(tmp_path: Path) -> None:
    d = tmp_path / "db"
    slot, raw = build(d)
    older = 1 - slot
    older_counter = decode_file(raw, d / "log.ARM").meta.counter - 1
    flip(d / "log.ARM", older * AF.ARM_SLOT_STRIDE + 50)
    (d / "LOCK").unlink()
    with lamina.open(d, create=False, readonly=True) as db:
        assert rows(db) == FIRST + SECOND
        assert db.archive("log").fallback is None
        report = db.check()
        assert [f.what for f in report.findings] == ["slot damaged (torn write or corruption)"]
    with lamina.open(d, create=False) as db:
        assert db.archive("log").fallback is None and db.check().ok
    assert [n for n in os.listdir(d) if n.endswith(".damaged")] == [
        f"log.ARM.slot{older}-{older_counter}.damaged"]


def _reseal_slot(raw: bytearray, slot: int, **fields: int) -> None:
    names = {"data_length": 11}
    off = slot * AF.ARM_SLOT_STRIDE
    values = list(AF.ARM_SLOT_BODY.unpack_from(raw, off))
    for name, value in fields.items():
        values[names[name]] = value
    body = AF.ARM_SLOT_BODY.pack(*values)
    raw[off:off + AF.ARM_SLOT_SIZE] = body + AF.ARM_SLOT_CHECKSUM.pack(
        xxhash.xxh3_64_intdigest(body))


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))


def test_committed_length_past_the_data_file_is_refused(tmp_path: Path) -> None:
    """Both slots claim 1 TiB committed and the first block claims a 4 GiB payload
    (checksums valid): check reports it (exit 7) and scan refuses it (exit 4) without
    reading any block, under a 1 GiB address-space limit; nothing grows."""
    d = tmp_path / "db"
    build(d)
    arm = d / "log.ARM"
    raw = bytearray(arm.read_bytes())
    for s in (0, 1):
        _reseal_slot(raw, s, data_length=1 << 40)
    arm.write_bytes(bytes(raw))
    arz = d / "log.ARZ"
    z = bytearray(arz.read_bytes())
    head = list(AF.BLOCK_HEADER_BODY.unpack_from(z, AF.ARZ_HEADER_SIZE))
    head[7] = (1 << 32) - 1  # stored length
    body = AF.BLOCK_HEADER_BODY.pack(*head)
    z[AF.ARZ_HEADER_SIZE:AF.ARZ_HEADER_SIZE + AF.BLOCK_HEADER_SIZE] = (
        body + AF.BLOCK_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body)))
    arz.write_bytes(bytes(z))
    (d / "LOCK").unlink()
    expect_damaged(d, "the archive meta claims a committed length past the data file")
    sizes = {n: (d / n).stat().st_size for n in os.listdir(d) if n != "LOCK"}

    proc: subprocess.CompletedProcess[str] = cli.run("check", str(d), preexec_fn=_limits)
    assert proc.returncode == 7, (proc.returncode, proc.stdout, proc.stderr)
    assert "committed length is past the end of the data file" in proc.stdout
    proc = cli.run("scan", str(d), "log", preexec_fn=_limits)
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "past the end of the data file" in proc.stderr
    proc = cli.run("append", str(d), "log", "x", preexec_fn=_limits)
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert {n: (d / n).stat().st_size for n in os.listdir(d) if n != "LOCK"} == sizes
