"""Take images apart and put (possibly hostile) pieces back together with valid checksums,
so tests reach the reader's structural checks behind the checksums."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace

from backup_fakes import Rig, Script, tables

from lamina.backup import DriverKind
from lamina.backup import image_format as F


@dataclass
class Pieces:
    """An image in pieces: header bytes, catalog bytes, chunk records, manifest bytes."""

    header: bytes
    catalog: bytes
    chunks: list[bytes]
    manifest: bytes

    def build(self) -> bytes:
        """Reassemble, with a footer whose offsets and whole-image hash are right."""
        body = self.header + self.catalog + b"".join(self.chunks)
        hasher = F.data_hasher()
        hasher.update(body + self.manifest)
        footer = F.encode_footer(F.Footer(len(body), len(self.manifest), hasher.digest()))
        return body + self.manifest + footer


def split(image: bytes) -> Pieces:
    """Split a valid image into its pieces."""
    pos = F.HEADER_SIZE
    _d, _t, length, _c = F.decode_catalog_head(image[pos: pos + F.CATALOG_HEAD_SIZE], pos)
    catalog = image[pos: pos + F.CATALOG_HEAD_SIZE + length]
    pos += len(catalog)
    chunks = []
    while image[pos: pos + 4] == F.CHUNK_MAGIC:
        head = F.decode_chunk_header(image[pos: pos + F.CHUNK_HEAD_SIZE], pos)
        end = pos + F.CHUNK_HEAD_SIZE + head.stored_length
        chunks.append(image[pos:end])
        pos = end
    return Pieces(image[:F.HEADER_SIZE], catalog, chunks, image[pos: -F.FOOTER_SIZE])


def header_bytes(version: int = F.FORMAT_VERSION, flags: int = 0, size: int = F.HEADER_SIZE,
                 base: bytes | None = None) -> bytes:
    """A header with arbitrary version/flags/size and a valid checksum."""
    if base is None:
        fields = [F.HEADER_MAGIC, version, size, flags, bytes(16), bytes(16), 0, b"test"]
    else:
        fields = list(F.HEADER.unpack_from(base))
        fields[1:4] = [version, size, flags]
    body = F.HEADER.pack(*fields)
    return body + F.HEADER_CHECKSUM.pack(F.xxh3(body))


def catalog_bytes(drivers: int, tables_: int, payload: bytes) -> bytes:
    """A catalog block with arbitrary counts and payload, checksums valid."""
    head = F.CATALOG_HEAD.pack(F.CATALOG_MAGIC, drivers, tables_, len(payload),
                               F.xxh3(payload))
    return head + F.CATALOG_HEAD_CHECKSUM.pack(F.xxh3(head)) + payload


def chunk_bytes(stream: int, seq: int, flags: int, codec: int, raw_length: int,
                payload: bytes, reserved: int = 0) -> bytes:
    """A chunk with arbitrary fields, checksums valid."""
    head = F.CHUNK_HEAD.pack(F.CHUNK_MAGIC, stream, seq, flags, codec, reserved, raw_length,
                             len(payload), F.xxh3(payload))
    return head + F.CHUNK_HEAD_CHECKSUM.pack(F.xxh3(head)) + payload


def manifest_with(pieces: Pieces, **changes: object) -> bytes:
    """The image's manifest with some fields replaced, re-hashed."""
    m = F.decode_manifest(pieces.manifest, 0)
    return F.encode_manifest(replace(m, **changes))  # type: ignore[arg-type]


def small_image(tmp_dir: object = None, codec: str = "zstd", seed: int = 0,
                size: int = 40) -> bytes:
    """A small valid image: two drivers (one "at end"), three tables, a common stream."""
    rng = random.Random(seed)
    rig = Rig()
    rig.add("native", tables("t", 2, 1), Script(
        streams={0: b"common", 1: b"a" * size, 2: rng.randbytes(size)}, seed=seed))
    rig.add("snap", tables("s", 1, 7), Script(kind=DriverKind.AT_END,
                                              streams={1: rng.randbytes(size // 2)}))
    out = io.BytesIO()
    rig.run(out, codec=codec, buf_size=max(8, size // 3))
    return out.getvalue()


def restore_engine_names() -> list[str]:
    return ["native", "snap"]
