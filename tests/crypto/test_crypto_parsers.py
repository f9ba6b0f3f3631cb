"""Parsers of untrusted bytes, fuzzed: key files, the crypto block, sealed chunks; the
KDF's bounds and its real default cost."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sealed import PASSPHRASE, backup, make_db, opening, sealing

from lamina.backup import image_format as F
from lamina.backup.image_reader import ImageReader
from lamina.core.crypto import kdf
from lamina.core.crypto.keyfile import KeyFile
from lamina.core.crypto.keyring import Keyring
from lamina.core.crypto.masterkey import MasterKey
from lamina.errors import AuthenticationError, CorruptionError, DataError

MASTER = MasterKey.generate()
KEYFILE = KeyFile.create(MASTER, PASSPHRASE, kdf.KdfParams(kdf.ARGON2ID, 1, 8, 1, b"s" * 16))
KEYFILE_BYTES = KEYFILE.encode()


def test_default_cost_is_the_real_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kdf.CHEAP_KDF_ENV, raising=False)
    params = kdf.KdfParams.new()
    assert (params.algorithm, params.time_cost, params.memory_kib, params.lanes) == (
        "argon2id", 3, 64 * 1024, 4)
    monkeypatch.setenv(kdf.CHEAP_KDF_ENV, "1")
    assert kdf.KdfParams.new().memory_kib == 8


def test_scrypt_key_files_open(monkeypatch: pytest.MonkeyPatch) -> None:
    params = kdf.KdfParams(kdf.SCRYPT, 8, 1 << 4, 1, b"salt" * 4)
    keyfile = KeyFile.create(MASTER, b"pw", params)
    again = KeyFile.decode(keyfile.encode(), "k")
    assert again.kdf == params and again.unwrap(b"pw", "k") == MASTER


@pytest.mark.parametrize("change", [
    {"memory_kib": kdf.MAX_MEMORY_KIB + 1}, {"time_cost": 0}, {"lanes": 10 ** 6},
    {"salt": "zz"}, {"algorithm": "pbkdf2"}, {"extra": 1}, {"time_cost": True}])
def test_kdf_parameters_are_bounded_before_use(change: dict[str, object]) -> None:
    doc = json.loads(KEYFILE_BYTES)
    doc["kdf"].update(change)
    with pytest.raises(CorruptionError, match="kdf"):
        KeyFile.decode(json.dumps(doc).encode(), "k")


def test_key_file_round_trip_and_refusals() -> None:
    assert KeyFile.decode(KEYFILE_BYTES, "k") == KEYFILE
    assert KEYFILE.unwrap(PASSPHRASE, "k") == MASTER
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        KEYFILE.unwrap(b"nope", "k")
    doc = json.loads(KEYFILE_BYTES)
    doc["hostname"] = "elsewhere"  # authenticated as associated data
    with pytest.raises(AuthenticationError):
        KeyFile.decode(json.dumps(doc).encode(), "k").unwrap(PASSPHRASE, "k")
    rewrapped = KEYFILE.rewrap(MASTER, b"new")
    assert rewrapped.id == KEYFILE.id and rewrapped.unwrap(b"new", "k") == MASTER
    with pytest.raises(AuthenticationError):
        rewrapped.unwrap(PASSPHRASE, "k")
    assert "enc_key" not in repr(MASTER) and MASTER.enc_key.hex() not in repr(MASTER)


@given(st.binary(max_size=2048))
def test_fuzz_key_file_bytes(data: bytes) -> None:
    try:
        KeyFile.decode(data, "fuzz")
    except DataError:
        pass


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@given(st.sampled_from(sorted(json.loads(KEYFILE_BYTES))), _JSON,
       st.sampled_from(["algorithm", "time_cost", "memory_kib", "lanes", "salt"]))
def test_fuzz_key_file_fields(field: str, value: object, kdf_field: str) -> None:
    doc = json.loads(KEYFILE_BYTES)
    if field == "kdf":
        doc["kdf"][kdf_field] = value
    else:
        doc[field] = value
    try:
        keyfile = KeyFile.decode(json.dumps(doc).encode(), "fuzz")
    except DataError:
        return
    try:  # only an unchanged key file may open
        assert keyfile.unwrap(PASSPHRASE, "fuzz") == MASTER
    except AuthenticationError:
        pass


@given(st.binary(min_size=F.SEAL_HEAD_SIZE, max_size=F.SEAL_HEAD_SIZE + 8))
def test_fuzz_crypto_block_head(data: bytes) -> None:
    try:
        block, length, _sum = F.decode_seal_head(data, 128)
    except DataError:
        return
    assert length <= F.MAX_WRAPPED_KEY and len(block.key_id) == 16


@pytest.fixture(scope="module")
def sealed_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("sealed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(kdf.CHEAP_KDF_ENV, "1")
        make_db(root / "db", rows=40)
        backup(root / "db", root / "img", sealing())
    return (root / "img").read_bytes()


def _read(data: bytes, keyring: Keyring, decrypt: bool) -> int:
    reader = ImageReader(io.BytesIO(data), keyring=keyring, decrypt=decrypt)
    return sum(len(c.data) for c in reader.chunks())


@given(st.data())
def test_fuzz_sealed_chunks(sealed_image: bytes, data: st.DataObject) -> None:
    image = bytearray(sealed_image)
    start = F.HEADER_SIZE  # the crypto block, catalog, chunks, manifest and footer
    edits = data.draw(st.lists(st.tuples(st.integers(start, len(image) - 1),
                                         st.integers(1, 255)), min_size=1, max_size=4,
                                unique_by=lambda edit: edit[0]))
    for offset, mask in edits:
        image[offset] ^= mask
    cut = data.draw(st.integers(start, len(image)))
    mutated = bytes(image[:cut])
    for decrypt in (True, False):
        try:
            _read(mutated, opening(), decrypt)
        except DataError:
            continue
        raise AssertionError(f"a changed sealed image was accepted: {edits}, cut {cut}")


def test_unchanged_sealed_image_reads(sealed_image: bytes, tmp_path: Path) -> None:
    assert _read(sealed_image, opening(), True) > 0
    with pytest.raises(AuthenticationError):
        _read(sealed_image, Keyring(), True)
    assert _read(sealed_image, Keyring(), False) > 0  # checksums only
