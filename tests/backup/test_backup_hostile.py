"""Crafted images with valid checksums but hostile content are refused before any harm."""

from __future__ import annotations

import io
import json
import uuid
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from backup_fakes import MemRestoreEngine, leftover_files
from image_surgery import (
    Pieces,
    catalog_bytes,
    chunk_bytes,
    header_bytes,
    manifest_with,
    small_image,
    split,
)

from lamina.backup import DriverKind, ImageWriter, read_info, run_restore, verify_image
from lamina.backup import image_format as F
from lamina.errors import (
    CorruptionError,
    DataError,
    UnsupportedError,
    UsageError,
    VersionError,
)

GOOD_DRIVERS = (F.CatalogDriver("native", 1, DriverKind.AT_BEGIN, 0),)


def table(name: str, stream: int = 1, table_id: int = 1, driver: int = 0,
          engine: str = "btree") -> F.CatalogTable:
    return F.CatalogTable(name, engine, table_id, stream, driver)


def with_catalog(catalog: F.ImageCatalog) -> bytes:
    """An image with no chunks whose (unvalidated) catalog is ``catalog``."""
    streams = tuple(F.StreamStats(0, 0, 0, F.data_hasher().digest())
                    for _ in range(catalog.stream_count))
    header = F.ImageHeader(uuid.uuid4(), uuid.uuid4(), 1, "test")
    manifest = F.Manifest(header.image_id, F.ImageKind.FULL, F.ZERO_UUID, 0,
                          F.ValidityPoint(1, 1, tuple({} for _ in catalog.drivers)), 0, 0,
                          streams)
    return Pieces(F.encode_header(header), F.encode_catalog(catalog), [],
                  F.encode_manifest(manifest)).build()


HOSTILE = {
    "parent dir": (table("../x"),),
    "absolute": (table("/abs"),),
    "separator": (table("a/b"),),
    "backslash": (table("a\\b"),),
    "dot": (table("."),),
    "dotdot": (table(".."),),
    "hidden": (table(".lamina-tmp"),),
    "nul": (table("x\x00y"),),
    "empty": (table(""),),
    "too long": (table("x" * 129),),
    "duplicate name": (table("a", 1, 1), table("a", 2, 2)),
    "duplicate id": (table("a", 1, 5), table("b", 2, 5)),
    "stream out of range": (table("a", 7),),
    "stream reused": (table("a", 1, 1), table("b", 1, 2)),
    "stream of common": (table("a", 0),),
    "driver out of range": (table("a", 1, 1, 3),),
    "engine path": (table("a", engine="../btree"),),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_catalog_is_refused(tmp_path: Path, case: str) -> None:
    catalog = F.ImageCatalog(GOOD_DRIVERS, HOSTILE[case])
    image = with_catalog(catalog)
    with pytest.raises(CorruptionError, match="catalog"):
        verify_image(io.BytesIO(image))
    (tmp_path / "img").write_bytes(image)
    with pytest.raises(CorruptionError, match="catalog"):
        read_info(tmp_path / "img")
    engine = MemRestoreEngine("native")
    with pytest.raises(CorruptionError):
        run_restore(tmp_path / "img", {"native": engine}, tmp_path / "dest")
    assert engine.log == [] and leftover_files(tmp_path) == ["img"]
    # and the writer never produces such a catalog
    with pytest.raises(UsageError):
        ImageWriter(io.BytesIO(), F.ImageHeader(uuid.uuid4(), uuid.uuid4(), 1, "t"), catalog)


def test_control_catalog_is_accepted() -> None:
    # the harness above is sound: the same construction with good tables verifies
    catalog = F.ImageCatalog(GOOD_DRIVERS, (table("a", 1, 1), table("b", 2, 2)))
    assert verify_image(io.BytesIO(with_catalog(catalog))).chunks == 0


@pytest.mark.parametrize("case", ["bad driver name", "driver without tables", "bad kind",
                                  "not utf8", "trailing", "short", "too many"])
def test_malformed_catalog_payload(case: str) -> None:
    good = F.encode_catalog(F.ImageCatalog(GOOD_DRIVERS, (table("a"),)))
    payload = good[F.CATALOG_HEAD_SIZE:]
    drivers, tables_ = 1, 1
    if case == "bad driver name":
        payload = F.encode_catalog(F.ImageCatalog(
            (F.CatalogDriver("../d", 1, DriverKind.AT_BEGIN, 0),), (table("a"),))
        )[F.CATALOG_HEAD_SIZE:]
    elif case == "driver without tables":
        payload = F.encode_catalog(F.ImageCatalog(
            (*GOOD_DRIVERS, F.CatalogDriver("x", 1, DriverKind.AT_BEGIN, 2)), (table("a"),))
        )[F.CATALOG_HEAD_SIZE:]
        drivers = 2
    elif case == "bad kind":
        payload = payload[:8] + b"\x07" + payload[9:]
    elif case == "not utf8":
        payload = payload.replace(b"a", b"\xff")
    elif case == "trailing":
        payload += b"\x00"
    elif case == "short":
        payload = payload[:-1]
    else:
        drivers = F.MAX_DRIVERS + 1
    pieces = split(with_catalog(F.ImageCatalog(GOOD_DRIVERS, (table("a"),))))
    pieces.catalog = catalog_bytes(drivers, tables_, payload)
    with pytest.raises(CorruptionError, match="catalog"):
        verify_image(io.BytesIO(pieces.build()))


def _one_chunk_image(chunk: bytes, stats: F.StreamStats | None = None) -> bytes:
    """small_image's header and catalog, then only ``chunk`` in stream 2."""
    pieces = split(small_image(seed=9))
    pieces.chunks = [chunk]
    n = F.decode_manifest(pieces.manifest, 0)
    empty = F.StreamStats(0, 0, 0, F.data_hasher().digest())
    streams = [empty] * len(n.streams)
    streams[2] = stats or empty
    pieces.manifest = manifest_with(pieces, streams=tuple(streams),
                                    chunk_count=1 if stats else 0)
    return pieces.build()


def test_crafted_chunks_are_refused() -> None:
    data = b"hello hello hello hello"
    packed = zstandard.ZstdCompressor().compress(data)
    bomb = zstandard.ZstdCompressor().compress(bytes(10_000_000))
    zbomb = zlib.compress(bytes(10_000_000))
    cases: list[tuple[bytes, type[DataError], str]] = [
        (chunk_bytes(99, 0, 1, 0, 5, b"abcde"), CorruptionError, "not in the catalog"),
        (chunk_bytes(2, 1, 1, 0, 5, b"abcde"), CorruptionError, "sequence gap"),
        (chunk_bytes(2, 0, 1, 9, 5, b"abcde"), UnsupportedError, "codec"),
        (chunk_bytes(2, 0, 0x81, 0, 5, b"abcde"), UnsupportedError, "flags"),
        (chunk_bytes(2, 0, 1, 0, 5, b"abcde", reserved=1), UnsupportedError, "flags"),
        (chunk_bytes(2, 0, 1, 0, F.MAX_CHUNK_SIZE + 1, b""), CorruptionError, "maximum"),
        (chunk_bytes(2, 0, 1, 0, 6, b"abcde"), CorruptionError, "disagree"),
        (chunk_bytes(2, 0, 3, 0, 5, b"abcde"), CorruptionError, "disagree"),
        (chunk_bytes(2, 0, 1, 2, 5, b"abcdef"), CorruptionError, "disagree"),
        (chunk_bytes(2, 0, 3, 2, len(data), packed[:-1]), CorruptionError, "decompress"),
        (chunk_bytes(2, 0, 3, 2, len(data) - 1, packed), CorruptionError, "zstd frame size"),
        (chunk_bytes(2, 0, 3, 2, 100_000, bomb), CorruptionError, "zstd frame size"),
        (chunk_bytes(2, 0, 3, 1, 100_000, zbomb), CorruptionError, "wrong length"),
        (chunk_bytes(2, 0, 3, 1, 100, zlib.compress(bytes(50)) + b"x"), CorruptionError,
         "wrong length"),
        (chunk_bytes(2, 0, 3, 2, len(data), packed + packed[:4]), CorruptionError, "length"),
        (chunk_bytes(2, 0, 1, 0, 5, b"abcde")[:-1], CorruptionError, "chunk"),
    ]
    for chunk, error, words in cases:
        with pytest.raises(error, match=words):
            verify_image(io.BytesIO(_one_chunk_image(chunk)))


def test_crafted_chunk_control() -> None:
    # the same construction with a consistent chunk and manifest verifies
    data = b"hello hello hello hello"
    packed = zstandard.ZstdCompressor().compress(data)
    h = F.data_hasher()
    h.update(data)
    stats = F.StreamStats(len(data), len(packed), 1, h.digest())
    report = verify_image(io.BytesIO(_one_chunk_image(
        chunk_bytes(2, 0, 3, 2, len(data), packed), stats)))
    assert report.raw_bytes == len(data)


def test_chunk_after_last_and_missing_last() -> None:
    after_last = [chunk_bytes(2, 0, 1, 0, 1, b"a"), chunk_bytes(2, 1, 1, 0, 1, b"b")]
    no_last = [chunk_bytes(2, 0, 0, 0, 1, b"a")]
    for chunks, words in ((after_last, "after the last chunk"), (no_last, "no last chunk")):
        pieces = split(small_image(seed=9))
        pieces.chunks = chunks
        with pytest.raises(CorruptionError, match=words):
            verify_image(io.BytesIO(pieces.build()))


def test_crafted_headers() -> None:
    image = small_image(seed=10)
    for header, error in ((header_bytes(version=F.FORMAT_VERSION + 1, base=image),
                           VersionError),
                          (header_bytes(version=1, base=image), VersionError),
                          (header_bytes(version=0, base=image), CorruptionError),
                          (header_bytes(size=64, base=image), CorruptionError),
                          (header_bytes(flags=0x10, base=image), UnsupportedError)):
        with pytest.raises(error):
            verify_image(io.BytesIO(header + image[F.HEADER_SIZE:]))
    with pytest.raises(CorruptionError, match="kind"):  # layer flag, but a full manifest
        verify_image(io.BytesIO(split_with_header(image, header_bytes(
            flags=F.HEADER_FLAG_LAYER, base=image))))


def split_with_header(image: bytes, header: bytes) -> bytes:
    pieces = split(image)
    pieces.header = header
    return pieces.build()


def test_crafted_manifests() -> None:
    image = small_image(seed=11)
    pieces = split(image)
    m = F.decode_manifest(pieces.manifest, 0)
    cases: dict[str, dict[str, Any]] = {
        "image id": dict(image_id=uuid.uuid4()),
        "kind": dict(kind=F.ImageKind.LAYER, base_image_id=uuid.uuid4()),
        "base image": dict(base_image_id=uuid.uuid4()),
        "streams": dict(streams=m.streams[:-1]),
        "VP facts": dict(vp=F.ValidityPoint(1, 1, ({},))),
        "chunk count": dict(chunk_count=m.chunk_count + 1),
        "differs from the manifest": dict(streams=(F.StreamStats(
            m.streams[0].raw_bytes, m.streams[0].stored_bytes, m.streams[0].chunks,
            bytes(16)), *m.streams[1:])),
        "impossible": dict(streams=(F.StreamStats(1, 2, 1, bytes(16)), *m.streams[1:])),
    }
    for words, change in cases.items():
        bad = split(image)
        bad.manifest = manifest_with(bad, **change)
        with pytest.raises(CorruptionError, match=words):
            verify_image(io.BytesIO(bad.build()))


@pytest.mark.parametrize("vp_json", [b"not json", b"[" * 100_000, b"\xff\xfe",
                                     b'{"drivers": 5}', b'{"drivers": [1, 2]}', b"[]"])
def test_manifest_vp_json_is_validated(vp_json: bytes) -> None:
    pieces = split(small_image(seed=12))
    raw = pieces.manifest
    streams, _length = F.decode_manifest_head(raw[:F.MANIFEST_HEAD_SIZE], 0)
    fields = list(F.MANIFEST_HEAD.unpack_from(raw))
    fields[3] = len(vp_json)
    head = F.MANIFEST_HEAD.pack(*fields)
    records = raw[F.MANIFEST_HEAD_SIZE: F.MANIFEST_HEAD_SIZE + streams * F.STREAM_RECORD.size]
    body = head + F.MANIFEST_HEAD_CHECKSUM.pack(F.xxh3(head)) + records + vp_json
    h = F.blake2b_128()
    h.update(body)
    pieces.manifest = body + h.digest()
    with pytest.raises(CorruptionError, match="VP facts"):
        verify_image(io.BytesIO(pieces.build()))


def test_manifest_vp_json_roundtrip() -> None:
    pieces = split(small_image(seed=12))
    vp = F.decode_manifest(pieces.manifest, 0).vp
    assert json.loads(F.encode_vp_facts(vp.drivers)) == {"drivers": [{"facts": 1}] * 2}
