"""Table-name validation and the identity file parser (fuzzed: it reads untrusted bytes)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.core.catalog import CatalogEntry
from lamina.core.identity import SIZE, Identity
from lamina.core.names import MAX_TABLE_NAME_BYTES, validate_table_name
from lamina.errors import (
    CorruptionError,
    DataError,
    InvalidNameError,
    NotADatabaseError,
    VersionError,
)


@pytest.mark.parametrize("name", ["users", "a", "x" * MAX_TABLE_NAME_BYTES, "ünïcode", "a.b-c_d"])
def test_valid_names(name: str) -> None:
    assert validate_table_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "nul\x00",
                                  "tab\t", ".hidden", "x" * (MAX_TABLE_NAME_BYTES + 1),
                                  "é" * 65])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_table_name(name)


@given(st.text(max_size=200))
def test_a_valid_name_is_always_a_plain_file_name(name: str) -> None:
    try:
        validate_table_name(name)
    except InvalidNameError:
        return
    assert Path(name).name == name and name not in (".", "..") and "/" not in name


def test_identity_round_trip(tmp_path: Path) -> None:
    ident = Identity(uuid.uuid4(), 123, uuid.uuid4(), 77, 456)
    ident.write(tmp_path)
    assert Identity.read(tmp_path) == ident
    assert len((tmp_path / "LAMINA").read_bytes()) == SIZE


def test_identity_validates_magic_then_version_then_checksum() -> None:
    good = Identity.new().encode()
    with pytest.raises(NotADatabaseError):
        Identity.decode(b"XXXXXXXX" + good[8:])
    with pytest.raises(VersionError):
        Identity.decode(good[:8] + (2).to_bytes(4, "little") + good[12:])
    flipped = bytearray(good)
    flipped[30] ^= 1
    with pytest.raises(CorruptionError, match="checksum"):
        Identity.decode(bytes(flipped))


@given(st.binary(max_size=200))
def test_identity_parser_raises_only_lamina_errors(data: bytes) -> None:
    try:
        Identity.decode(data)
    except DataError:
        pass


@given(st.integers(0, SIZE - 1), st.integers(1, 255))
def test_identity_detects_every_single_byte_flip(offset: int, xor: int) -> None:
    data = bytearray(Identity.new().encode())
    data[offset] ^= xor
    with pytest.raises(DataError):
        Identity.decode(bytes(data))


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_catalog_decoder_raises_only_lamina_errors(key: bytes, value: bytes) -> None:
    try:
        entry = CatalogEntry.decode(key, value)
    except DataError:
        return
    assert CatalogEntry.decode(key, entry.encode_value()) == entry
