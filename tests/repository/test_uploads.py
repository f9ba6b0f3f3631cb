"""The resumable-upload protocol on a local repository (and on S3), against a model: whatever is
written in whatever pieces, with whatever parts already stored (right or wrong), the
published object is exactly the bytes written and only parts missing or wrong are stored;
a torn part record is ignored; a strict writer stores no part that differs; the pin file
parser takes any bytes without a crash, and its ``seal`` field (version 2) agrees with a
model."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lamina.core import pins
from lamina.core.crypto.masterkey import IMAGE_SALT_SIZE, KEY_ID_SIZE
from lamina.errors import CorruptionError, LaminaError, NotFoundError, UsageError, VersionError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.repository import open_storage
from lamina.repository.s3storage import S3Storage
from lamina.repository.s3uploads import S3_MIN_PART_SIZE, S3Uploads
from lamina.repository.uploads import (
    MIN_PART_SIZE,
    PART_RECORD,
    PARTS_FILE,
    LocalUploads,
    PartWriter,
    UploadStore,
)
from support.s3fixtures import BUCKET
from support.s3server import S3Server

PART = MIN_PART_SIZE


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> LocalUploads:
    repo = Repository.init(tmp_path_factory.mktemp("uploads") / "repo")
    return LocalUploads(repo.storage)


def _resume_model(uploads: UploadStore, name: str, key: str, part: int, data: bytes,
                  cut: int, wrong: set[int], pieces: int) -> None:
    """A first writer stored ``cut`` parts of ``data`` (those in ``wrong`` holding other
    bytes: a model of a non-deterministic writer) before it died; a second one opens the
    upload, writes ``data`` in ``pieces``-byte writes and completes it into ``key``: the
    object is exactly ``data`` and only missing or wrong parts were stored."""
    size = len(data)
    first = uploads.create(name, part, {"test": True})
    total = -(-size // part)
    for n in range(1, min(cut, total) + 1):
        chunk = data[(n - 1) * part: n * part]
        first.put_part(n, bytes(reversed(chunk)) if n in wrong and len(set(chunk)) > 1
                       else chunk)
    again = uploads.open(name)
    present = again.parts_present()
    writer = PartWriter(again, present, concurrency=uploads.concurrency)
    for at in range(0, size, pieces):
        writer.write(data[at:at + pieces])
    count = writer.finish()
    assert count == total
    stats = writer.stats
    assert stats.skipped + stats.stored == total
    assert stats.replaced == sum(
        1 for n in present if present[n].checksum != again.checksum(
            data[(n - 1) * part: n * part]))
    assert stats.skipped == len(present) - stats.replaced
    again.complete(key, count)
    with pytest.raises(NotFoundError):
        uploads.open(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 9 * PART), seed=st.integers(0, 2**32), cut=st.integers(0, 10),
       wrong=st.sets(st.integers(1, 10), max_size=3), pieces=st.integers(1, 5000))
def test_resumed_upload_publishes_exactly_the_bytes(uploads: LocalUploads, size: int,
                                                    seed: int, cut: int, wrong: set[int],
                                                    pieces: int) -> None:
    data = random.Random(seed).randbytes(size)
    key = L.image_key(f"00000000-0000-0000-0000-{seed % 10**12:012d}")
    _resume_model(uploads, f"u{seed}-{size}", key, PART, data, cut, wrong, pieces)
    target = uploads.storage.root.joinpath(*key.split("/"))
    assert target.read_bytes() == data
    target.unlink()


@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@example(size=3 * S3_MIN_PART_SIZE - 7, seed=1, cut=2, wrong={1}, pieces=1 << 20)
@example(size=2 * S3_MIN_PART_SIZE + 10, seed=2, cut=4, wrong={2, 3}, pieces=12345)
@given(size=st.integers(1, 3 * S3_MIN_PART_SIZE), seed=st.integers(0, 2**32),
       cut=st.integers(0, 4), wrong=st.sets(st.integers(1, 4), max_size=2),
       pieces=st.integers(1 << 16, 1 << 22))
def test_resumed_s3_upload_publishes_exactly_the_bytes(s3_server: S3Server, size: int,
                                                       seed: int, cut: int, wrong: set[int],
                                                       pieces: int) -> None:
    """The same on S3 (its multipart uploads; parts of S3's smallest size; a few
    derandomized examples, each a fresh prefix)."""
    storage = open_storage(f"s3://{BUCKET}/uploads-model-{uuid.uuid4().hex[:12]}")
    assert isinstance(storage, S3Storage)
    data = random.Random(seed).randbytes(size)
    name = str(uuid.UUID(int=seed))
    key = L.image_key(name)
    _resume_model(S3Uploads(storage), name, key, S3_MIN_PART_SIZE, data, cut, wrong, pieces)
    assert storage.get_bytes(key) == data
    assert not storage.list("uploads/") and not storage.unfinished_uploads()
    storage.delete(key)


def test_a_strict_writer_stores_no_part_that_differs(uploads: LocalUploads) -> None:
    """Strict (a sealed image resumed under its recorded salt), a part regenerated with
    other bytes than those stored is not stored: the writer stops, naming it."""
    up = uploads.create("strict", PART, {})
    up.put_part(1, b"a" * PART)
    up.put_part(2, b"b" * PART)
    writer = PartWriter(uploads.open("strict"), up.parts_present(), strict=True)
    writer.write(b"a" * PART)
    with pytest.raises(CorruptionError, match="part 2 regenerated with other bytes"):
        writer.write(b"c" * PART)
    assert writer.diverged == 2 and writer.stats.skipped == 1 and writer.stats.stored == 0
    assert up.parts_present()[2].checksum == up.checksum(b"b" * PART)
    up.abort()


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


def _pin(i: int, seal: pins.PinSeal | None = None) -> pins.PinRecord:
    return pins.PinRecord(pin_id=f"p{i}", scope=f"s{i}", txnid=i + 1, vp_seq=i, vp_wall_ns=i,
                          created_ns=i, expires_ns=2**62, pid=1, host="h", where="w",
                          resume={"k": [i]}, seal=seal)


SEAL = pins.PinSeal("ab" * 16, "cd" * 32)


def _file(version: int, records: list[dict[str, Any]]) -> bytes:
    """A pin file of ``version`` whose body holds ``records`` (checksum right)."""
    body = json.dumps({"pins": records}, sort_keys=True, separators=(",", ":")).encode()
    return pins.HEADER.pack(pins.MAGIC, version, len(body), xxhash.xxh3_64_intdigest(body)) + body


def _record(i: int, **fields: Any) -> dict[str, Any]:
    """The JSON of ``_pin(i)`` with ``fields`` changed (a value ``...`` removes the field)."""
    item = dataclasses.asdict(_pin(i))
    for name, value in fields.items():
        if value is ...:
            del item[name]
        else:
            item[name] = value
    return item


def test_pin_file_round_trip_and_damage(tmp_path: Path) -> None:
    records = [_pin(0), _pin(1, SEAL), _pin(2)]
    raw = pins.encode(records)
    assert pins.decode(raw, tmp_path) == records
    for at in (0, 9, 13, 20, len(raw) - 2):
        bad = bytearray(raw)
        bad[at] ^= 0x40
        with pytest.raises(LaminaError):
            pins.decode(bytes(bad), tmp_path)
    with pytest.raises(LaminaError):
        pins.decode(raw[:-1], tmp_path)


def test_pin_file_versions_and_the_seal_field(tmp_path: Path) -> None:
    """Version 2 (this build) requires each record's ``seal`` (null or key id and salt);
    version 1 files are read (no seal), a newer one is refused, version 0 is damage."""
    assert pins.encode([_pin(0)])[8:12] == (2).to_bytes(4, "little")
    [old] = pins.decode(_file(1, [_record(0, seal=...)]), tmp_path)
    assert old == _pin(0) and old.seal is None
    sealed = {"key_id": SEAL.key_id, "salt": SEAL.salt}
    assert pins.decode(_file(2, [_record(0, seal=sealed)]), tmp_path) == [_pin(0, SEAL)]
    assert SEAL.raw() == (b"\xab" * 16, b"\xcd" * 32)
    with pytest.raises(VersionError, match="version 3"):
        pins.decode(_file(3, [_record(0)]), tmp_path)
    for version, item in [
            (0, _record(0, seal=...)),
            (1, _record(0)),  # a version 1 record has no seal field
            (2, _record(0, seal=...)),  # a version 2 record must have one
            (2, _record(0, seal={"key_id": SEAL.key_id})),
            (2, _record(0, seal={**sealed, "key": "00" * 32})),  # nothing but these two
            (2, _record(0, seal={**sealed, "salt": SEAL.salt[:-2]})),
            (2, _record(0, seal={**sealed, "salt": SEAL.salt.upper()})),
            (2, _record(0, seal={**sealed, "key_id": 5})),
            (2, _record(0, seal="ab" * 48))]:
        with pytest.raises(CorruptionError, match="pin file"):
            pins.decode(_file(version, [item]), tmp_path)
    assert (pins.SEAL_KEY_ID_SIZE, pins.SEAL_SALT_SIZE) == (KEY_ID_SIZE, IMAGE_SALT_SIZE)
    # Never a key: stat's summary shows neither the seal nor the resume payload.
    assert {"seal", "resume"}.isdisjoint(_pin(0, SEAL).describe())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda b, n: pins.encode([_pin(n, SEAL)])[:len(b)] + b,
                                            st.binary(max_size=40), st.integers(0, 5)))
def test_pin_file_parser_takes_any_bytes(raw: bytes) -> None:
    try:
        pins.decode(raw, Path("BACKUP_PINS"))
    except LaminaError:
        pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=70),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
_HEX = st.text("0123456789abcdefABCDEF", min_size=30, max_size=66)


def _seal_model(value: Any) -> pins.PinSeal | str | None:
    """What decode makes of a version 2 ``seal`` value: None, a seal, or "damaged"."""
    if value is None:
        return None
    if not isinstance(value, dict) or sorted(value) != ["key_id", "salt"]:
        return "damaged"
    key_id, salt = value["key_id"], value["salt"]
    lower = set("0123456789abcdef")
    if (isinstance(key_id, str) and isinstance(salt, str) and len(key_id) == 32
            and len(salt) == 64 and set(key_id + salt) <= lower):
        return pins.PinSeal(key_id, salt)
    return "damaged"


@settings(max_examples=300, deadline=None)
@given(version=st.integers(1, 2), present=st.booleans(),
       seal=_JSON | st.fixed_dictionaries({"key_id": _HEX, "salt": _HEX}))
def test_pin_file_seal_field_against_a_model(version: int, present: bool, seal: Any) -> None:
    """Records past the checksum, with any ``seal`` value (or none): decode agrees with a
    model of the field (version 1: none allowed; version 2: required, null or exactly a
    32-hex key id and a 64-hex salt, lowercase) and raises nothing but CorruptionError."""
    raw = _file(version, [_record(0, seal=seal if present else ...)])
    expected: pins.PinSeal | str | None
    if version == 1:
        expected = "damaged" if present else None
    else:
        expected = _seal_model(seal) if present else "damaged"
    try:
        [got] = pins.decode(raw, Path("BACKUP_PINS"))
    except CorruptionError:
        assert expected == "damaged"
    else:
        assert got.seal == expected
