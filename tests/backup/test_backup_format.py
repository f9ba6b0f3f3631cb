"""Image format v1 building blocks: structs, codecs, the writer's rules, layering."""

from __future__ import annotations

import ast
import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from backup_fakes import leftover_files

import lamina.backup
from lamina.backup import DriverKind, ImageReader, ImageWriter, verify_image
from lamina.backup import image_format as F
from lamina.backup.codec import Compressor, decompress, parse_codec
from lamina.errors import (
    AlreadyExistsError,
    CorruptionError,
    NotADatabaseError,
    UnsupportedError,
    UsageError,
)

HEADER = F.ImageHeader(uuid.UUID(int=1), uuid.UUID(int=2), 123456789, "0.1.0")
CATALOG = F.ImageCatalog(
    (F.CatalogDriver("btree", 3, DriverKind.AT_BEGIN, 0),
     F.CatalogDriver("archive", 1, DriverKind.AT_END, 1)),
    (F.CatalogTable("t", "btree", 5, 2, 0), F.CatalogTable("ü name", "archive", 6, 3, 1),
     F.CatalogTable("u", "btree", 7, 4, 0)))


def test_documented_sizes() -> None:
    # docs/format.md, "Backup image v2", specifies these sizes byte by byte
    assert F.HEADER_SIZE == 128 and F.HEADER.size == 120
    assert F.CATALOG_HEAD_SIZE == 32 and F.CATALOG_DRIVER.size == 12
    assert F.CATALOG_TABLE.size == 16
    assert F.CHUNK_HEAD_SIZE == 40 and F.MANIFEST_HEAD_SIZE == 128
    assert F.STREAM_RECORD.size == 40 and F.FOOTER_SIZE == 48
    assert F.MAX_CHUNK_SIZE == 16 * 2**20


def test_header_round_trip_and_magic() -> None:
    raw = F.encode_header(HEADER)
    assert len(raw) == 128 and raw[:8] == b"LAMBKUP\x00"
    assert F.decode_header(raw) == HEADER
    with pytest.raises(NotADatabaseError):
        F.decode_header(b"SQLite format 3\x00" + raw[16:])
    with pytest.raises(CorruptionError):
        F.decode_header(raw[:100])


def test_catalog_round_trip_and_stream_map() -> None:
    raw = F.encode_catalog(CATALOG)
    drivers, tables, length, checksum = F.decode_catalog_head(raw[:32], 128)
    got = F.decode_catalog_payload(raw[32:], drivers, tables, checksum, 128)
    assert got == CATALOG and length == len(raw) - 32
    assert got.stream_count == 5
    assert got.stream_map() == {0: (0, 0), 1: (1, 0), 2: (0, 1), 4: (0, 2), 3: (1, 1)}
    assert [t.name for t in got.tables_of(0)] == ["t", "u"]


def test_codecs() -> None:
    assert parse_codec("ZSTD") is F.Codec.ZSTD and parse_codec(F.Codec.NONE) is F.Codec.NONE
    with pytest.raises(UsageError):
        parse_codec("lz4")
    data = b"abc" * 1000
    noise = os.urandom(1000)
    for codec in F.Codec:
        comp = Compressor(codec)
        used, stored = comp.compress(data)
        assert used == codec and (codec == F.Codec.NONE or len(stored) < len(data))
        assert decompress(used, stored, len(data)) == data
        # incompressible data and empty data are stored as they are
        assert comp.compress(noise) == (F.Codec.NONE, noise)
        assert comp.compress(b"") == (F.Codec.NONE, b"")
    with pytest.raises(CorruptionError):
        decompress(F.Codec.NONE, b"abc", 4)
    with pytest.raises(CorruptionError):
        decompress(F.Codec.ZLIB, b"garbage", 10)
    with pytest.raises(CorruptionError):
        decompress(F.Codec.ZSTD, b"garbage", 10)


def test_chunk_header_round_trip() -> None:
    raw = F.encode_chunk_header(7, 3, True, F.Codec.ZLIB, 100, b"x" * 40)
    head = F.decode_chunk_header(raw, 999)
    assert (head.stream, head.seq, head.last, head.codec, head.raw_length,
            head.stored_length) == (7, 3, True, F.Codec.ZLIB, 100, 40)
    assert head.flags == F.CHUNK_FLAG_LAST | F.CHUNK_FLAG_COMPRESSED
    with pytest.raises(UnsupportedError):
        bad = bytearray(raw[:32])
        bad[13] = 7  # codec
        F.decode_chunk_header(bytes(bad) + F.CHUNK_HEAD_CHECKSUM.pack(F.xxh3(bytes(bad))), 0)


def _writer(target: Any, **kw: Any) -> ImageWriter:
    return ImageWriter(target, HEADER, CATALOG, **kw)


def test_writer_rules() -> None:
    w = _writer(io.BytesIO())
    w.write_chunk(2, b"abc", True)
    with pytest.raises(UsageError, match="after its last"):
        w.write_chunk(2, b"more", False)
    with pytest.raises(UsageError, match="not in the catalog"):
        w.write_chunk(5, b"x", False)
    with pytest.raises(UsageError, match="exceeds"):
        w.write_chunk(3, bytes(F.MAX_CHUNK_SIZE + 1), False)
    w.write_chunk(3, b"x", False)
    with pytest.raises(UsageError, match="no last chunk"):
        w.finish(vp_seq=1, vp_wall_ns=1, vp_facts=[{}, {}])
    with pytest.raises(UsageError, match="closed"):  # a failed finish aborts the writer
        w.write_chunk(4, b"x", True)
    for kwargs, words in ((dict(vp_facts=[{}]), "one VP"),
                          (dict(vp_facts=[{}, {}], base_image_id=uuid.uuid4()), "base"),
                          (dict(vp_facts=[{"x": object()}, {}]), "JSON"),
                          (dict(vp_facts=[{"x": float("nan")}, {}]), "JSON")):
        w = _writer(io.BytesIO())
        with pytest.raises(UsageError, match=words):
            w.finish(vp_seq=1, vp_wall_ns=1, **kwargs)


def test_writer_file_target_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "img"
    with pytest.raises(RuntimeError), _writer(path) as w:
        w.write_chunk(2, b"abc", True)
        assert [p.name.startswith(".img.tmp-") for p in tmp_path.iterdir()] == [True]
        raise RuntimeError("boom")
    assert leftover_files(tmp_path) == []
    with _writer(path) as w:
        w.write_chunk(2, b"abc", True)
        summary = w.finish(vp_seq=9, vp_wall_ns=1, vp_facts=[{"a": 1}, {}])
    assert leftover_files(tmp_path) == ["img"] and summary.size == path.stat().st_size
    report = verify_image(path)
    assert report.manifest.vp.commit_seq == 9 and report.catalog == CATALOG
    with pytest.raises(AlreadyExistsError):
        _writer(path)
    w = _writer(path, overwrite=True)
    w.finish(vp_seq=10, vp_wall_ns=1, vp_facts=[{}, {}])
    assert verify_image(path).manifest.vp.commit_seq == 10
    assert leftover_files(tmp_path) == ["img"]


def test_reader_chunks_is_single_use() -> None:
    out = io.BytesIO()
    _writer(out).finish(vp_seq=1, vp_wall_ns=1, vp_facts=[{}, {}])
    reader = ImageReader(io.BytesIO(out.getvalue()))
    assert list(reader.chunks()) == [] and reader.manifest is not None
    with pytest.raises(RuntimeError):
        list(reader.chunks())


def test_backup_layer_does_not_import_engines() -> None:
    """The kernel, driver API and image format know no engine; only the glue that builds a
    database's native drivers reaches down into the engines: ``online``, and ``chain`` (which
    assembles a chain's last VP from the engines' page and table streams)."""
    package = Path(lamina.backup.__file__).parent
    for module in package.glob("*.py"):
        if module.stem in ("online", "chain"):
            continue
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("lamina.engines", "lamina.cli")), (module, name)
                if name.startswith("lamina."):
                    assert name.split(".")[1] in ("backup", "core", "errors"), (module, name)
