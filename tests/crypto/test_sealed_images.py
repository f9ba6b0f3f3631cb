"""Sealed (encrypted, authenticated) images: round trips, no plaintext, refusal of every
flipped byte, swapped and spliced chunks, mixed chains, and what each command can do with
and without the key."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sealed import (
    MARKER,
    PASSPHRASE,
    backup,
    change,
    make_db,
    opening,
    rechunk,
    sealing,
    split,
)

import lamina
from lamina import online
from lamina.backup import image_format as F
from lamina.backup.image_reader import read_info
from lamina.backup.verify import verify_image
from lamina.core.crypto.keyring import Keyring, using
from lamina.errors import AuthenticationError, ChainError, DataError, LaminaError


def _rows(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    db = lamina.open(path, readonly=True)
    try:
        with db.read() as txn:
            values = dict(txn.table("t").items())
        rows = [r for _i, r in db.scan("a")] if "a" in {t.name for t in db.tables()} else []
        return values, rows
    finally:
        db.close()


def test_full_layer_and_chain_round_trip_without_plaintext(tmp_path: Path) -> None:
    make_db(tmp_path / "db")
    ring = sealing()
    backup(tmp_path / "db", tmp_path / "full.img", ring)
    change(tmp_path / "db")
    backup(tmp_path / "db", tmp_path / "l1.img", ring, base=tmp_path / "full.img")
    change(tmp_path / "db", 9)
    backup(tmp_path / "db", tmp_path / "l2.img", ring, base=tmp_path / "l1.img")
    images = [tmp_path / n for n in ("full.img", "l1.img", "l2.img")]
    for image in images:
        data = image.read_bytes()
        assert MARKER not in data and b"PLAINTEXT" not in data
        assert F.decode_header(data[:F.HEADER_SIZE]).sealed
    with using(opening()):
        online.restore(images[0], tmp_path / "r-full")
        online.restore_chain(images, tmp_path / "r-chain")
        assert online.verify_chain(images, deep=True)["authenticated"] is True
        assert online.verify(images[2], deep=False)["authenticated"] is True
    unkeyed = online.verify_chain(images)  # checksums only, and no VP facts shown
    assert unkeyed["authenticated"] is False and "root_hash" not in unkeyed
    want = _rows(tmp_path / "db")
    assert _rows(tmp_path / "r-chain") == want
    values, rows = _rows(tmp_path / "r-full")
    assert len(values) == 200 and len(rows) == 200 and values != want[0]


def test_layers_stay_small(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=3000, archive=False)
    ring = sealing()
    backup(tmp_path / "db", tmp_path / "full.img", ring)
    change(tmp_path / "db", 1)
    backup(tmp_path / "db", tmp_path / "l1.img", ring, base=tmp_path / "full.img")
    full, layer = (tmp_path / "full.img").stat().st_size, (tmp_path / "l1.img").stat().st_size
    assert layer < full / 3, (layer, full)


def test_without_the_key(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=20)
    backup(tmp_path / "db", tmp_path / "img", sealing())
    # restore needs the key: one line, exit 14, nothing published
    with using(opening(None)), pytest.raises(AuthenticationError, match="needs its key"):
        online.restore(tmp_path / "img", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(AuthenticationError) as caught:
        online.restore(tmp_path / "img", tmp_path / "r")
    assert caught.value.exit_code == 14 and "\n" not in str(caught.value)
    # verify without the key: checksums only, and it says so
    report = verify_image(tmp_path / "img")
    assert report.to_json()["encrypted"] is True and report.authenticated is False
    assert "tables" not in report.to_json()
    # info without the key: nothing about tables, drivers or VP facts
    summary = read_info(tmp_path / "img").to_json()
    assert summary["authenticated"] is False
    assert "tables" not in summary and "drivers" not in summary
    with using(opening()):
        summary = read_info(tmp_path / "img").to_json()
    assert summary["authenticated"] is True and [t["name"] for t in summary["tables"]] == [
        "t", "a"]


def test_wrong_passphrase(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    backup(tmp_path / "db", tmp_path / "img", sealing())
    for action in (lambda: online.restore(tmp_path / "img", tmp_path / "r"),
                   lambda: verify_image(tmp_path / "img"),
                   lambda: read_info(tmp_path / "img")):
        with using(opening(b"wrong")), pytest.raises(AuthenticationError,
                                                     match="wrong passphrase"):
            action()
    assert not (tmp_path / "r").exists()


def test_plaintext_and_sealed_never_mix(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    backup(tmp_path / "db", tmp_path / "plain.img", Keyring())
    backup(tmp_path / "db", tmp_path / "sealed.img", sealing())
    change(tmp_path / "db")
    with pytest.raises(ChainError, match="never mix"):
        backup(tmp_path / "db", tmp_path / "l.img", sealing(), base=tmp_path / "plain.img")
    with pytest.raises(ChainError, match="never mix"):
        backup(tmp_path / "db", tmp_path / "l.img", opening(), base=tmp_path / "sealed.img")
    assert not (tmp_path / "l.img").exists()
    # a plaintext layer forged onto a sealed base is refused by the chain code too
    backup(tmp_path / "db", tmp_path / "plain-layer.img", Keyring(),
           base=tmp_path / "plain.img")
    with using(opening()), pytest.raises(ChainError, match="never mix"):
        online.restore_chain([tmp_path / "sealed.img", tmp_path / "plain-layer.img"],
                             tmp_path / "r")


def _small(tmp_path: Path) -> bytes:
    make_db(tmp_path / "db", rows=3, archive=False)
    backup(tmp_path / "db", tmp_path / "img", sealing())
    return (tmp_path / "img").read_bytes()


def _refused(data: bytes, dest: Path) -> tuple[type[LaminaError], type[LaminaError]]:
    with using(opening()):
        try:
            verify_image(io.BytesIO(data))
        except (DataError, LaminaError) as exc:
            by_verify: type[LaminaError] = type(exc)
        else:
            raise AssertionError("verify accepted a changed image")
        try:
            online.restore(io.BytesIO(data), dest)
        except LaminaError as exc:
            by_restore: type[LaminaError] = type(exc)
        else:
            raise AssertionError("restore accepted a changed image")
    assert not dest.exists()
    return by_verify, by_restore


def test_every_single_byte_flip_is_refused(tmp_path: Path) -> None:
    image = _small(tmp_path)
    assert len(image) < 4096
    kinds: set[str] = set()
    for offset in range(len(image)):
        flipped = bytearray(image)
        flipped[offset] ^= 0x01 if offset % 2 else 0x80
        by_verify, by_restore = _refused(bytes(flipped), tmp_path / "r")
        kinds |= {by_verify.__name__, by_restore.__name__}
    assert "AuthenticationError" in kinds and "CorruptionError" in kinds


def test_forged_ciphertext_with_valid_checksums_fails_authentication(tmp_path: Path) -> None:
    pieces = split(_small(tmp_path))
    chunk = pieces.chunks[0]
    payload = bytearray(chunk[F.CHUNK_HEAD_SIZE:])
    payload[5] ^= 0x10
    pieces.chunks[0] = rechunk(chunk, payload=bytes(payload))
    with using(opening()), pytest.raises(AuthenticationError, match="does not verify"):
        online.restore(io.BytesIO(pieces.build()), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def _two_chunk_image(tmp_path: Path, name: str, ring: Keyring) -> bytes:
    db = lamina.open(tmp_path / "db")
    try:
        with using(ring):
            online.backup(db, tmp_path / name, buf_size=4096)
    finally:
        db.close()
    return (tmp_path / name).read_bytes()


def test_swapped_chunks_are_refused(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=400, archive=False)
    pieces = split(_two_chunk_image(tmp_path, "img", sealing()))
    assert len(pieces.chunks) >= 3
    a, b = pieces.chunks[0], pieces.chunks[1]
    seq_a = F.CHUNK_HEAD.unpack_from(a)[2]
    seq_b = F.CHUNK_HEAD.unpack_from(b)[2]
    pieces.chunks[0], pieces.chunks[1] = rechunk(b, seq=seq_a), rechunk(a, seq=seq_b)
    with using(opening()), pytest.raises(AuthenticationError, match="moved from another"):
        online.restore(io.BytesIO(pieces.build()), tmp_path / "r")
    # and with the sequence numbers left as they were, the reader sees the gap
    pieces = split((tmp_path / "img").read_bytes())
    pieces.chunks[0], pieces.chunks[1] = pieces.chunks[1], pieces.chunks[0]
    with using(opening()), pytest.raises(DataError):
        online.restore(io.BytesIO(pieces.build()), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_chunk_spliced_from_another_image_under_the_same_key_is_refused(
        tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=400, archive=False)
    ring = sealing()  # one master key for both images (as in a repository)
    first = split(_two_chunk_image(tmp_path, "one", ring))
    second = split(_two_chunk_image(tmp_path, "two", ring))
    assert first.chunks[1] != second.chunks[1]
    first.chunks[1] = second.chunks[1]  # same stream, same position, valid checksums
    with using(opening()), pytest.raises(AuthenticationError, match="moved from another"):
        online.restore(io.BytesIO(first.build()), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_dropped_last_chunk_is_refused(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=400, archive=False)
    pieces = split(_two_chunk_image(tmp_path, "img", sealing()))
    del pieces.chunks[-1]
    with using(opening()), pytest.raises(DataError):
        online.restore(io.BytesIO(pieces.build()), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_passphrase_is_asked_once_per_chain(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    ring = sealing()
    backup(tmp_path / "db", tmp_path / "full.img", ring)
    change(tmp_path / "db")
    backup(tmp_path / "db", tmp_path / "l1.img", ring, base=tmp_path / "full.img")
    asked: list[int] = []

    def source() -> bytes:
        asked.append(1)
        return PASSPHRASE

    with using(Keyring(passphrase=source)):
        online.restore_chain([tmp_path / "full.img", tmp_path / "l1.img"], tmp_path / "r")
    assert len(asked) == 1
