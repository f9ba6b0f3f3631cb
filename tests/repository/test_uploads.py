"""The resumable-upload protocol on a local repository, against a model: whatever is
written in whatever pieces, with whatever parts already stored (right or wrong), the
published object is exactly the bytes written and only parts missing or wrong are stored;
a torn part record is ignored; the pin file parser takes any bytes without a crash."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamina.core import pins
from lamina.errors import CorruptionError, LaminaError, NotFoundError, UsageError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.uploads import (
    MIN_PART_SIZE,
    PART_RECORD,
    PARTS_FILE,
    LocalUploads,
    PartWriter,
)

PART = MIN_PART_SIZE


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> LocalUploads:
    repo = Repository.init(tmp_path_factory.mktemp("uploads") / "repo")
    return LocalUploads(repo.storage)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 9 * PART), seed=st.integers(0, 2**32), cut=st.integers(0, 10),
       wrong=st.sets(st.integers(1, 10), max_size=3), pieces=st.integers(1, 5000))
def test_resumed_upload_publishes_exactly_the_bytes(uploads: LocalUploads, size: int,
                                                    seed: int, cut: int, wrong: set[int],
                                                    pieces: int) -> None:
    data = random.Random(seed).randbytes(size)
    name = f"u{seed}-{size}"
    # A first writer stored some parts (``cut`` of them) before it died; some parts it
    # stored hold other bytes (a model of a non-deterministic writer).
    first = uploads.create(name, PART, {"test": True})
    total = -(-size // PART)
    for n in range(1, min(cut, total) + 1):
        part = data[(n - 1) * PART: n * PART]
        first.put_part(n, bytes(reversed(part)) if n in wrong and len(set(part)) > 1 else part)
    again = uploads.open(name)
    present = again.parts_present()
    writer = PartWriter(again, present)
    for at in range(0, size, pieces):
        writer.write(data[at:at + pieces])
    count = writer.finish()
    assert count == total
    stats = writer.stats
    assert stats.skipped + stats.stored == total
    assert stats.replaced == sum(
        1 for n in present if present[n].checksum != again.checksum(
            data[(n - 1) * PART: n * PART]))
    assert stats.skipped == len(present) - stats.replaced
    key = L.image_key(f"00000000-0000-0000-0000-{seed % 10**12:012d}")
    again.complete(key, count)
    target = uploads.storage.root.joinpath(*key.split("/"))
    assert target.read_bytes() == data
    target.unlink()
    with pytest.raises(NotFoundError):
        uploads.open(name)


def test_a_torn_part_record_is_not_a_part(uploads: LocalUploads) -> None:
    up = uploads.create("torn", PART, {})
    up.put_part(1, b"a" * PART)
    up.put_part(2, b"b" * 10)
    log = up.directory / PARTS_FILE
    raw = log.read_bytes()
    log.write_bytes(raw[: PART_RECORD.size + 7])  # the second append torn
    assert set(up.parts_present()) == {1}
    up.put_part(2, b"b" * 10)  # a later append cuts the torn bytes off first
    assert set(up.parts_present()) == {1, 2}
    raw = bytearray(log.read_bytes())
    raw[3] ^= 1  # a damaged first record ends the log
    log.write_bytes(bytes(raw))
    assert up.parts_present() == {}
    with pytest.raises(CorruptionError, match="missing"):
        up.complete(L.image_key("00000000-0000-0000-0000-000000000001"), 2)
    up.abort()


def test_bad_requests(uploads: LocalUploads) -> None:
    with pytest.raises(UsageError):
        uploads.create("../x", PART, {})
    with pytest.raises(UsageError):
        uploads.create("ok", 100, {})
    up = uploads.create("ok", PART, {})
    for number, data in ((0, b"x"), (1, b""), (1, b"x" * (PART + 1))):
        with pytest.raises(UsageError):
            up.put_part(number, data)
    (up.directory / "UPLOAD").write_bytes(b"{not json")
    with pytest.raises(CorruptionError):
        uploads.open("ok")
    assert "ok" not in [u.name for u in uploads.list()]  # a damaged upload is skipped
    up.abort()


def _pin(i: int) -> pins.PinRecord:
    return pins.PinRecord(pin_id=f"p{i}", scope=f"s{i}", txnid=i + 1, vp_seq=i, vp_wall_ns=i,
                          created_ns=i, expires_ns=2**62, pid=1, host="h", where="w",
                          resume={"k": [i]})


def test_pin_file_round_trip_and_damage(tmp_path: Path) -> None:
    records = [_pin(i) for i in range(3)]
    raw = pins.encode(records)
    assert pins.decode(raw, tmp_path) == records
    for at in (0, 9, 13, 20, len(raw) - 2):
        bad = bytearray(raw)
        bad[at] ^= 0x40
        with pytest.raises(LaminaError):
            pins.decode(bytes(bad), tmp_path)
    with pytest.raises(LaminaError):
        pins.decode(raw[:-1], tmp_path)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda b, n: pins.encode([_pin(n)])[:len(b)] + b,
                                            st.binary(max_size=40), st.integers(0, 5)))
def test_pin_file_parser_takes_any_bytes(raw: bytes) -> None:
    try:
        pins.decode(raw, Path("BACKUP_PINS"))
    except LaminaError:
        pass
