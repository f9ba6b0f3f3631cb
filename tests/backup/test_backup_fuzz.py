"""Hypothesis feeds random, mutated and resealed images to every reader entry point:
only lamina errors come out, never another exception, and nothing hangs."""

from __future__ import annotations

import io
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_surgery import catalog_bytes, chunk_bytes, header_bytes, small_image, split

from lamina.backup import ImageReader, read_info, verify_image
from lamina.backup import image_format as F
from lamina.errors import LaminaError

IMAGE = small_image(seed=20)
PIECES = split(IMAGE)
SETTINGS = settings(max_examples=250, deadline=timedelta(seconds=5),
                    suppress_health_check=[HealthCheck.too_slow])


def only_lamina_errors(data: bytes) -> str:
    """Run every reader entry point on ``data``; return "ok" or the error class name.

    Any exception that is not a LaminaError propagates and fails the test.
    """
    start = time.monotonic()
    outcome = "ok"
    try:
        verify_image(io.BytesIO(data))
    except LaminaError as exc:
        outcome = type(exc).__name__
    try:
        reader = ImageReader(io.BytesIO(data))
        for _chunk in reader.chunks():
            pass
    except LaminaError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "img"
        path.write_bytes(data)
        try:
            read_info(path)
        except LaminaError:
            pass
    assert time.monotonic() - start < 5  # bounded work, whatever the input claims
    return outcome


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    assert only_lamina_errors(data) != "ok"


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes_after_a_valid_header(data: bytes) -> None:
    assert only_lamina_errors(IMAGE[:F.HEADER_SIZE] + data) != "ok"


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(IMAGE) - 1), st.integers(1, 255)),
                min_size=1, max_size=8),
       st.integers(0, len(IMAGE)), st.binary(max_size=64))
def test_mutated_images(edits: list[tuple[int, int]], cut: int, insert: bytes) -> None:
    data = bytearray(IMAGE)
    for offset, xor in edits:
        data[offset] ^= xor
    data[cut:cut] = insert
    # any change at all is caught (edits may cancel out: then it is the valid image)
    assert (only_lamina_errors(bytes(data)) == "ok") == (bytes(data) == IMAGE)


@SETTINGS
@given(st.integers(0, 3), st.integers(0, 3), st.binary(max_size=512))
def test_resealed_catalog_payloads(drivers: int, tables: int, payload: bytes) -> None:
    # checksums are valid, so the structural parser itself is exercised
    pieces = split(IMAGE)
    pieces.catalog = catalog_bytes(drivers, tables, payload)
    only_lamina_errors(pieces.build())


@SETTINGS
@given(st.integers(0, 2**32 - 1) | st.integers(0, 6), st.integers(0, 2**32 - 1) | st.just(0),
       st.integers(0, 255), st.integers(0, 255),
       st.integers(0, 2**32 - 1) | st.integers(0, 200), st.binary(max_size=200))
def test_resealed_chunk_headers(stream: int, seq: int, flags: int, codec: int, raw: int,
                                payload: bytes) -> None:
    pieces = split(IMAGE)
    pieces.chunks = [chunk_bytes(stream, seq, flags, codec, raw, payload), *pieces.chunks]
    assert only_lamina_errors(pieces.build()) != "ok"


@SETTINGS
@given(st.binary(min_size=F.MANIFEST_HEAD_SIZE - 4, max_size=700))
def test_resealed_manifest_bodies(body: bytes) -> None:
    pieces = split(IMAGE)
    head = F.MANIFEST_MAGIC + body[:F.MANIFEST_HEAD.size - 4]
    rest = body[F.MANIFEST_HEAD.size - 4:]
    raw = head + F.MANIFEST_HEAD_CHECKSUM.pack(F.xxh3(head)) + rest
    h = F.blake2b_128()
    h.update(raw)
    pieces.manifest = raw + h.digest()
    only_lamina_errors(pieces.build())


@SETTINGS
@given(st.integers(0, 2**16 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1))
def test_resealed_headers(version: int, size: int, flags: int) -> None:
    header = header_bytes(version=version, size=size, flags=flags, base=IMAGE)
    outcome = only_lamina_errors(header + IMAGE[F.HEADER_SIZE:])
    # only the one real header value set (or the layer flag mismatch) can be ok
    assert outcome != "ok" or (version, size, flags) == (1, F.HEADER_SIZE, 0)


def test_valid_image_is_ok() -> None:
    assert only_lamina_errors(IMAGE) == "ok"
    assert only_lamina_errors(PIECES.build()) == "ok"
