"""Backup image format v2: every constant, struct and block codec (docs/format.md,
"Backup image v2").

An image is written front to back in one pass::

    header (128)  [crypto block]  catalog block  chunk*  manifest  footer (48)

(the crypto block only in a sealed image: header flag ``HEADER_FLAG_SEALED``.)

This module is pure: it turns blocks into bytes and back, validating each block on the way
in (magic, then version, then checksum, then every field). The decoders raise only
:mod:`lamina.errors` classes: CorruptionError (naming the block and offset),
NotADatabaseError (wrong magic), VersionError (newer format), UnsupportedError (unknown
codec or flag). The writer/reader modules do the I/O, hashing and cross-block checks.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from lamina.core.driver import DriverKind
from lamina.core.names import validate_table_name
from lamina.errors import (
    AuthenticationError,
    CorruptionError,
    InvalidNameError,
    NotADatabaseError,
    UnsupportedError,
    VersionError,
)

#: Version 2 added the database root hash to the manifest (and, inside the streams, the
#: archive block chain and logical record checksums). Images of version 1 are refused with
#: a VersionError saying they were made by an older format.
FORMAT_VERSION = 2

#: Largest chunk payload, raw or stored. Bounds every allocation a reader makes for a chunk.
MAX_CHUNK_SIZE = 16 * 1024 * 1024
#: Default kernel buffer size (bytes per ``get_data`` call, i.e. per chunk).
DEFAULT_BUF_SIZE = 1024 * 1024
#: Catalog limits: drivers, tables, payload bytes.
MAX_DRIVERS = 256
MAX_TABLES = 65536
MAX_CATALOG_SIZE = 16 * 1024 * 1024
#: Longest driver or engine name (ASCII ``[a-z0-9_.-]``).
MAX_IDENT = 64
#: Largest VP facts JSON in the manifest.
MAX_VP_INFO_SIZE = 4 * 1024 * 1024
#: Largest manifest: fixed part + stream records + VP JSON + hash.
MAX_MANIFEST_SIZE = 128 + 40 * (MAX_DRIVERS + MAX_TABLES) + MAX_VP_INFO_SIZE + 16

HASH_SIZE = 16  # blake2b-128 (manifest) and xxh3-128 (streams, whole image)
#: The database root hash in the manifest (BLAKE2b-256); all zero: none recorded.
ROOT_HASH_SIZE = 32
NO_ROOT_HASH = bytes(ROOT_HASH_SIZE)
ZERO_UUID = uuid.UUID(int=0)


class StreamTally:
    """Running totals of one stream while an image is written or read: next sequence
    number, raw and stored bytes, whether its last chunk was seen, and its data hash."""

    __slots__ = ("closed", "hasher", "raw", "seq", "stored")

    def __init__(self) -> None:
        self.seq = 0
        self.raw = 0
        self.stored = 0
        self.closed = False
        self.hasher = data_hasher()


def blake2b_128() -> hashlib.blake2b:
    """A fresh BLAKE2b hasher with a 16-byte digest (the manifest hash)."""
    return hashlib.blake2b(digest_size=HASH_SIZE)


def data_hasher() -> Any:
    """A fresh XXH3-128 hasher for the bulk hashes: each stream's raw bytes and every image
    byte before the footer. Why not BLAKE2b: these run over every byte of a backup, where
    BLAKE2b alone would cap a backup near 1 GB/s; they detect damage, while the proof that
    the data is the VP's is the btree Merkle root and the manifest's BLAKE2b."""
    return xxhash.xxh3_128()


def xxh3(data: bytes | bytearray | memoryview) -> int:
    """XXH3 64-bit, seed 0: every block checksum."""
    return xxhash.xxh3_64_intdigest(data)


class Codec(enum.IntEnum):
    """Per-chunk compression codec."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2


class ImageKind(enum.IntEnum):
    """A full image, or a layer (incremental) on top of a base image."""

    FULL = 0
    LAYER = 1


# ---------------------------------------------------------------------------- header
HEADER_MAGIC = b"LAMBKUP\x00"
HEADER_SIZE = 128
#: magic[8] version u16 header_size u16 flags u32 image_id[16] database_id[16]
#: created_ns u64 lamina_version[32] reserved[32]; then xxh3_64 of those 120 bytes.
HEADER = struct.Struct("<8sHHI16s16sQ32s16s16x")
HEADER_CHECKSUM = struct.Struct("<Q")
HEADER_FLAG_LAYER = 0x1
#: Sealed (encrypted and authenticated): a crypto block follows the header (see below).
HEADER_FLAG_SEALED = 0x2
HEADER_FLAGS_KNOWN = HEADER_FLAG_LAYER | HEADER_FLAG_SEALED
VERSION_FIELD = 32
assert HEADER.size + HEADER_CHECKSUM.size == HEADER_SIZE


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The image header: who wrote the image, when, from which database."""

    image_id: uuid.UUID
    database_id: uuid.UUID
    created_ns: int
    lamina_version: str
    flags: int = 0
    #: The source database's incarnation (its history; see core/identity.py).
    incarnation: uuid.UUID = ZERO_UUID

    @property
    def kind(self) -> ImageKind:
        """FULL or LAYER, from the header flags."""
        return ImageKind.LAYER if self.flags & HEADER_FLAG_LAYER else ImageKind.FULL

    @property
    def sealed(self) -> bool:
        """True for an encrypted, authenticated image (a crypto block follows)."""
        return bool(self.flags & HEADER_FLAG_SEALED)


def encode_header(header: ImageHeader) -> bytes:
    """The 128 header bytes."""
    version = header.lamina_version.encode("utf-8")[:VERSION_FIELD]
    body = HEADER.pack(HEADER_MAGIC, FORMAT_VERSION, HEADER_SIZE, header.flags,
                       header.image_id.bytes, header.database_id.bytes, header.created_ns,
                       version, header.incarnation.bytes)
    return body + HEADER_CHECKSUM.pack(xxh3(body))


def decode_header(raw: bytes, path: object = None) -> ImageHeader:
    """Parse and validate the 128 header bytes (magic, version, checksum, flags)."""
    if len(raw) < HEADER_SIZE:
        raise CorruptionError("image is shorter than its header", path=path, where="offset 0")
    if raw[:8] != HEADER_MAGIC:
        raise NotADatabaseError(f"{path or 'input'} is not a Lamina backup image (bad magic)")
    (_magic, version, size, flags, image_id, db_id, created, lver,
     incarnation) = HEADER.unpack_from(raw)
    if version > FORMAT_VERSION:
        raise VersionError(f"{path or 'image'} is backup image format {version}; "
                           f"this build reads up to {FORMAT_VERSION}")
    if version == 1:
        raise VersionError(f"{path or 'image'} was made by an older format (backup image "
                           f"format 1, before root hashes); this build reads format "
                           f"{FORMAT_VERSION} only: restore it with the build that made it")
    (checksum,) = HEADER_CHECKSUM.unpack_from(raw, HEADER.size)
    if checksum != xxh3(raw[:HEADER.size]):
        raise CorruptionError("header checksum mismatch", path=path, where="header, offset 0")
    if version != FORMAT_VERSION or size != HEADER_SIZE:
        raise CorruptionError(f"header has version {version}, size {size}", path=path,
                              where="header, offset 8")
    if flags & ~HEADER_FLAGS_KNOWN:
        raise UnsupportedError(f"{path or 'image'} uses header flags {flags:#x} "
                               "unknown to this build")
    try:
        lamina_version = lver.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptionError("header version string is not UTF-8", path=path,
                              where="header, offset 56") from exc
    return ImageHeader(uuid.UUID(bytes=image_id), uuid.UUID(bytes=db_id), created,
                       lamina_version, flags, uuid.UUID(bytes=incarnation))


# ---------------------------------------------------------------------------- crypto block
SEAL_MAGIC = b"LSEA"
SEAL_VERSION = 1
SEAL_CIPHER_AES256GCM = 1
#: AES-GCM tag appended to every sealed chunk payload.
SEAL_TAG_SIZE = 16
#: Largest wrapped key (a key file) a crypto block may carry.
MAX_WRAPPED_KEY = 16 * 1024
#: magic[4] version u16 cipher u8 reserved u8 key_id[16] salt[32] wrapped_len u32
#: wrapped_xxh3 u64; then xxh3_64 of those 68 bytes; then wrapped_len bytes (a key file).
SEAL_HEAD = struct.Struct("<4sHBB16s32sIQ")
SEAL_HEAD_CHECKSUM = struct.Struct("<Q")
SEAL_HEAD_SIZE = SEAL_HEAD.size + SEAL_HEAD_CHECKSUM.size  # 76


@dataclass(frozen=True, slots=True)
class SealBlock:
    """A sealed image's crypto block: which master key (its id), the image's salt (its
    keys derive from the master key, this salt and the image id), and a wrapped key (the
    key file of a standalone image; empty for a repository's image)."""

    key_id: bytes
    salt: bytes
    wrapped: bytes = b""


def encode_seal_block(block: SealBlock) -> bytes:
    """The crypto block's bytes."""
    head = SEAL_HEAD.pack(SEAL_MAGIC, SEAL_VERSION, SEAL_CIPHER_AES256GCM, 0, block.key_id,
                          block.salt, len(block.wrapped), xxh3(block.wrapped))
    return head + SEAL_HEAD_CHECKSUM.pack(xxh3(head)) + block.wrapped


def decode_seal_head(raw: bytes, offset: int, path: object = None) -> tuple[SealBlock, int, int]:
    """Validate the 76-byte crypto block head (magic, version, checksum, fields); returns
    the block without its wrapped key, the wrapped key's length and checksum."""
    where = f"crypto block, offset {offset}"
    if len(raw) < SEAL_HEAD_SIZE or raw[:4] != SEAL_MAGIC:
        raise CorruptionError("crypto block magic missing", path=path, where=where)
    _m, version, cipher, reserved, key_id, salt, length, checksum = SEAL_HEAD.unpack_from(raw)
    if version > SEAL_VERSION:
        raise VersionError(f"{path or 'image'} has crypto block version {version}; this "
                           f"build reads up to {SEAL_VERSION}")
    (head_sum,) = SEAL_HEAD_CHECKSUM.unpack_from(raw, SEAL_HEAD.size)
    if head_sum != xxh3(raw[:SEAL_HEAD.size]):
        raise CorruptionError("crypto block checksum mismatch", path=path, where=where)
    if version != SEAL_VERSION or reserved:
        raise CorruptionError(f"crypto block has version {version}, reserved {reserved}",
                              path=path, where=where)
    if cipher != SEAL_CIPHER_AES256GCM:
        raise UnsupportedError(f"{path or 'image'} uses cipher {cipher}, unknown to this build")
    if length > MAX_WRAPPED_KEY:
        raise CorruptionError("crypto block wrapped key too long", path=path, where=where)
    return SealBlock(key_id, salt), length, checksum


# ---------------------------------------------------------------------------- catalog
CATALOG_MAGIC = b"LCAT"
#: magic[4] driver_count u32 table_count u32 payload_len u32 payload_xxh3 u64; then xxh3_64
#: of those 24 bytes.
CATALOG_HEAD = struct.Struct("<4sIIIQ")
CATALOG_HEAD_CHECKSUM = struct.Struct("<Q")
CATALOG_HEAD_SIZE = CATALOG_HEAD.size + CATALOG_HEAD_CHECKSUM.size  # 32
#: version u32 common_stream u32 kind u8 name_len u8 reserved u16; then name.
CATALOG_DRIVER = struct.Struct("<IIBBH")
#: table_id u32 stream u32 driver u16 name_len u16 engine_len u8 reserved[3]; then name, engine.
CATALOG_TABLE = struct.Struct("<IIHHB3x")

_IDENT_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_.-")


@dataclass(frozen=True, slots=True)
class CatalogDriver:
    """One driver in the image: its backup engine's name and version, its kind, and the
    global stream number of its common stream (its local stream 0)."""

    name: str
    version: int
    kind: DriverKind
    common_stream: int


@dataclass(frozen=True, slots=True)
class CatalogTable:
    """One table in the image: its name, storage engine, table id, global stream number,
    and the index (into ``ImageCatalog.drivers``) of the driver that backed it up."""

    name: str
    engine: str
    table_id: int
    stream: int
    driver: int


@dataclass(frozen=True, slots=True)
class ImageCatalog:
    """Which drivers and tables an image holds, and which stream carries what.

    A driver's tables, in catalog order, are its local streams 1, 2, ...; its common stream
    is local stream 0. Every global stream number ``0 .. stream_count-1`` belongs to exactly
    one driver (common stream) or table.
    """

    drivers: tuple[CatalogDriver, ...]
    tables: tuple[CatalogTable, ...]

    @property
    def stream_count(self) -> int:
        """Number of streams: one common stream per driver plus one per table."""
        return len(self.drivers) + len(self.tables)

    def tables_of(self, driver: int) -> list[CatalogTable]:
        """The tables of driver ``driver`` in local stream order (local stream = index + 1)."""
        return [t for t in self.tables if t.driver == driver]

    def stream_map(self) -> dict[int, tuple[int, int]]:
        """Global stream number -> (driver index, local stream number)."""
        mapping = {d.common_stream: (i, 0) for i, d in enumerate(self.drivers)}
        for i in range(len(self.drivers)):
            for local, table in enumerate(self.tables_of(i), start=1):
                mapping[table.stream] = (i, local)
        return mapping

    def stream_names(self) -> dict[int, str]:
        """Global stream number -> a human label (``"table 'x'"`` or ``"common of btree"``)."""
        names = {d.common_stream: f"common stream of driver {d.name!r}" for d in self.drivers}
        names.update({t.stream: f"table {t.name!r}" for t in self.tables})
        return names


def _ident_ok(raw: bytes) -> bool:
    return 0 < len(raw) <= MAX_IDENT and all(b in _IDENT_CHARS for b in raw)


def check_catalog(catalog: ImageCatalog, path: object = None) -> None:
    """Raise CorruptionError unless ``catalog`` is well formed: names valid (tables per
    :func:`~lamina.core.names.validate_table_name`, so no name can escape a directory),
    no duplicate table name or id, stream numbers a permutation of ``0..stream_count-1``,
    every driver with at least one table, limits respected."""
    def bad(what: str) -> CorruptionError:
        return CorruptionError(f"catalog: {what}", path=path, where="catalog")

    if len(catalog.drivers) > MAX_DRIVERS or len(catalog.tables) > MAX_TABLES:
        raise bad("too many drivers or tables")
    streams: set[int] = set()
    for d in catalog.drivers:
        if not _ident_ok(d.name.encode("utf-8", "replace")):
            raise bad(f"invalid driver name {d.name!r}")
        if not isinstance(d.kind, DriverKind):
            raise bad(f"driver {d.name!r} has an invalid kind")
        if not 0 <= d.version <= 0xFFFFFFFF:
            raise bad(f"driver {d.name!r} has an invalid version")
        streams.add(d.common_stream)
    names: set[str] = set()
    ids: set[int] = set()
    for t in catalog.tables:
        try:
            validate_table_name(t.name)
        except InvalidNameError as exc:
            raise bad(f"invalid table name: {exc}") from exc
        if not _ident_ok(t.engine.encode("utf-8", "replace")):
            raise bad(f"table {t.name!r} has an invalid engine name {t.engine!r}")
        if t.name in names:
            raise bad(f"duplicate table name {t.name!r}")
        if t.table_id in ids:
            raise bad(f"duplicate table id {t.table_id}")
        if not 0 <= t.driver < len(catalog.drivers):
            raise bad(f"table {t.name!r} names driver {t.driver}, out of range")
        if not 0 <= t.table_id <= 0xFFFFFFFF:
            raise bad(f"table {t.name!r} has an invalid id")
        names.add(t.name)
        ids.add(t.table_id)
        streams.add(t.stream)
    if streams != set(range(catalog.stream_count)):
        raise bad("stream numbers are not exactly 0.." + str(catalog.stream_count - 1))
    # A driver may own no table: the btree driver's common stream carries the file that
    # holds the catalog even when only archive tables were chosen.


def encode_catalog(catalog: ImageCatalog) -> bytes:
    """The catalog block's bytes. Does *not* validate (see :func:`check_catalog`), so tests
    can build hostile images; the writer validates before calling it."""
    parts: list[bytes] = []
    for d in catalog.drivers:
        name = d.name.encode("utf-8")
        parts.append(CATALOG_DRIVER.pack(d.version, d.common_stream, int(d.kind), len(name), 0))
        parts.append(name)
    for t in catalog.tables:
        name, engine = t.name.encode("utf-8"), t.engine.encode("utf-8")
        parts.append(CATALOG_TABLE.pack(t.table_id, t.stream, t.driver, len(name), len(engine)))
        parts.append(name + engine)
    payload = b"".join(parts)
    head = CATALOG_HEAD.pack(CATALOG_MAGIC, len(catalog.drivers), len(catalog.tables),
                             len(payload), xxh3(payload))
    return head + CATALOG_HEAD_CHECKSUM.pack(xxh3(head)) + payload


def decode_catalog_head(raw: bytes, offset: int, path: object = None) -> tuple[int, int, int, int]:
    """Validate the 32-byte catalog head; returns (drivers, tables, payload_len, checksum)."""
    where = f"catalog, offset {offset}"
    magic, drivers, tables, length, checksum = CATALOG_HEAD.unpack_from(raw)
    if magic != CATALOG_MAGIC:
        raise CorruptionError("catalog magic missing", path=path, where=where)
    (head_sum,) = CATALOG_HEAD_CHECKSUM.unpack_from(raw, CATALOG_HEAD.size)
    if head_sum != xxh3(raw[:CATALOG_HEAD.size]):
        raise CorruptionError("catalog head checksum mismatch", path=path, where=where)
    if drivers > MAX_DRIVERS or tables > MAX_TABLES or length > MAX_CATALOG_SIZE:
        raise CorruptionError("catalog sizes out of range", path=path, where=where)
    return drivers, tables, length, checksum


def decode_catalog_payload(payload: bytes, drivers: int, tables: int, checksum: int,
                           offset: int, path: object = None) -> ImageCatalog:
    """Parse and validate the catalog payload (after its head passed)."""
    where = f"catalog, offset {offset}"
    if xxh3(payload) != checksum:
        raise CorruptionError("catalog checksum mismatch", path=path, where=where)

    def bad(what: str) -> CorruptionError:
        return CorruptionError(f"catalog: {what}", path=path, where=where)

    def text(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad("a name is not UTF-8") from exc

    pos = 0
    out_drivers: list[CatalogDriver] = []
    for _ in range(drivers):
        if pos + CATALOG_DRIVER.size > len(payload):
            raise bad("driver record truncated")
        version, common, kind, nlen, reserved = CATALOG_DRIVER.unpack_from(payload, pos)
        pos += CATALOG_DRIVER.size
        if kind not in (DriverKind.AT_BEGIN, DriverKind.AT_END) or reserved:
            raise bad(f"driver record has kind {kind}, reserved {reserved}")
        if pos + nlen > len(payload):
            raise bad("driver name truncated")
        name = text(payload[pos: pos + nlen])
        pos += nlen
        out_drivers.append(CatalogDriver(name, version, DriverKind(kind), common))
    out_tables: list[CatalogTable] = []
    for _ in range(tables):
        if pos + CATALOG_TABLE.size > len(payload):
            raise bad("table record truncated")
        table_id, stream, driver, nlen, elen = CATALOG_TABLE.unpack_from(payload, pos)
        pos += CATALOG_TABLE.size
        if pos + nlen + elen > len(payload):
            raise bad("table name truncated")
        name = text(payload[pos: pos + nlen])
        engine = text(payload[pos + nlen: pos + nlen + elen])
        pos += nlen + elen
        out_tables.append(CatalogTable(name, engine, table_id, stream, driver))
    if pos != len(payload):
        raise bad(f"{len(payload) - pos} bytes after the last record")
    catalog = ImageCatalog(tuple(out_drivers), tuple(out_tables))
    check_catalog(catalog, path)
    return catalog


# ---------------------------------------------------------------------------- chunks
CHUNK_MAGIC = b"LCHK"
#: magic[4] stream u32 seq u32 flags u8 codec u8 reserved u16 raw_len u32 stored_len u32
#: payload_xxh3 u64; then xxh3_64 of those 32 bytes.
CHUNK_HEAD = struct.Struct("<4sIIBBHIIQ")
CHUNK_HEAD_CHECKSUM = struct.Struct("<Q")
CHUNK_HEAD_SIZE = CHUNK_HEAD.size + CHUNK_HEAD_CHECKSUM.size  # 40
CHUNK_FLAG_LAST = 0x1
CHUNK_FLAG_COMPRESSED = 0x2
#: The payload is AES-256-GCM ciphertext and tag (every chunk of a sealed image, no other).
CHUNK_FLAG_SEALED = 0x4
CHUNK_FLAGS_KNOWN = CHUNK_FLAG_LAST | CHUNK_FLAG_COMPRESSED | CHUNK_FLAG_SEALED


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """A chunk's header: global stream, per-stream sequence number, flags, codec, lengths."""

    stream: int
    seq: int
    flags: int
    codec: Codec
    raw_length: int
    stored_length: int
    payload_checksum: int

    @property
    def last(self) -> bool:
        """True on the final chunk of its stream."""
        return bool(self.flags & CHUNK_FLAG_LAST)

    @property
    def sealed(self) -> bool:
        """True when the payload is ciphertext (a sealed image's chunk)."""
        return bool(self.flags & CHUNK_FLAG_SEALED)


def chunk_flags(last: bool, codec: Codec, sealed: bool = False) -> int:
    """A chunk's flags byte."""
    return ((CHUNK_FLAG_LAST if last else 0) | (CHUNK_FLAG_COMPRESSED if codec != Codec.NONE
                                                else 0) | (CHUNK_FLAG_SEALED if sealed else 0))


def encode_chunk_header(stream: int, seq: int, last: bool, codec: Codec, raw_length: int,
                        payload: bytes | bytearray | memoryview, sealed: bool = False) -> bytes:
    """The 40 header bytes of a chunk carrying ``payload`` (stored bytes)."""
    flags = chunk_flags(last, codec, sealed)
    head = CHUNK_HEAD.pack(CHUNK_MAGIC, stream, seq, flags, int(codec), 0, raw_length,
                           len(payload), xxh3(payload))
    return head + CHUNK_HEAD_CHECKSUM.pack(xxh3(head))


def decode_chunk_header(raw: bytes, offset: int, path: object = None) -> ChunkHeader:
    """Validate a chunk header (checksum first, then every field); lengths are capped at
    :data:`MAX_CHUNK_SIZE`. Stream range and sequence are checked by the reader."""
    magic, stream, seq, flags, codec, reserved, raw_len, stored_len, psum = (
        CHUNK_HEAD.unpack_from(raw))
    where = f"chunk at offset {offset}"
    if magic != CHUNK_MAGIC:
        raise CorruptionError("chunk magic missing", path=path, where=where)
    (head_sum,) = CHUNK_HEAD_CHECKSUM.unpack_from(raw, CHUNK_HEAD.size)
    if head_sum != xxh3(raw[:CHUNK_HEAD.size]):
        raise CorruptionError("chunk header checksum mismatch", path=path, where=where)
    where = f"stream {stream} chunk {seq} at offset {offset}"
    if flags & ~CHUNK_FLAGS_KNOWN or reserved:
        raise UnsupportedError(f"chunk flags {flags:#x} unknown to this build ({where})")
    if codec not in Codec._value2member_map_:
        raise UnsupportedError(f"chunk codec {codec} unknown to this build ({where})")
    tag = SEAL_TAG_SIZE if flags & CHUNK_FLAG_SEALED else 0
    if raw_len > MAX_CHUNK_SIZE or stored_len > MAX_CHUNK_SIZE + tag:
        raise CorruptionError("chunk length over the maximum", path=path, where=where)
    compressed = bool(flags & CHUNK_FLAG_COMPRESSED)
    inner = stored_len - tag
    if compressed != (codec != Codec.NONE) or inner < 0 or (
            inner != raw_len if codec == Codec.NONE else inner > raw_len):
        raise CorruptionError("chunk flags, codec and lengths disagree", path=path, where=where)
    return ChunkHeader(stream, seq, flags, Codec(codec), raw_len, stored_len, psum)


# ---------------------------------------------------------------------------- manifest
MANIFEST_MAGIC = b"LMAN"
#: magic[4] stream_count u32 kind u8 reserved[3] vp_facts_len u32 image_id[16]
#: base_image_id[16] base_vp_seq u64 vp_seq u64 vp_wall_ns u64 blocker_held_ns u64
#: chunk_count u64 root_hash[32]; then xxh3_64 of those 120 bytes.
MANIFEST_HEAD = struct.Struct("<4sIB3xI16s16sQQQQQ32s")
MANIFEST_HEAD_CHECKSUM = struct.Struct("<Q")
MANIFEST_HEAD_SIZE = MANIFEST_HEAD.size + MANIFEST_HEAD_CHECKSUM.size  # 128
#: raw_bytes u64 stored_bytes u64 chunk_count u64 hash[16]
STREAM_RECORD = struct.Struct("<QQQ16s")


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream's totals: raw and stored bytes, chunks, blake2b-128 of its raw bytes."""

    raw_bytes: int
    stored_bytes: int
    chunks: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class ValidityPoint:
    """The VP: commit seq and wall clock when it was created, and each driver's VP facts
    in their JSON form (``drivers[i]`` is ``vp_info().to_json()`` of catalog driver ``i``;
    its engine's ``decode_vp_facts`` reads it back)."""

    commit_seq: int
    wall_ns: int
    drivers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Manifest:
    """The manifest trailer: what the image holds, proven by per-stream hashes."""

    image_id: uuid.UUID
    kind: ImageKind
    base_image_id: uuid.UUID
    base_vp_seq: int
    vp: ValidityPoint
    blocker_held_ns: int
    chunk_count: int
    streams: tuple[StreamStats, ...]
    #: The database root hash at the VP over the image's tables (docs/format.md, "Root
    #: hash"); :data:`NO_ROOT_HASH` when the backup's caller computed none.
    root_hash: bytes = NO_ROOT_HASH


def encode_vp_facts(drivers: Sequence[Mapping[str, Any]]) -> bytes:
    """Canonical JSON of the per-driver VP facts. Raises TypeError/ValueError if a fact is
    not JSON-serializable (the kernel reports that as the driver's bug)."""
    return json.dumps({"drivers": [dict(d) for d in drivers]}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


#: Computes a sealed image's manifest MAC from the manifest body (see ``encode_manifest``).
ManifestMac = Callable[[bytes], bytes]


def encode_manifest(manifest: Manifest, mac: ManifestMac | None = None) -> bytes:
    """The manifest's bytes, ending with its blake2b-128 hash, or for a sealed image
    with ``mac(body)`` (the keyed MAC of the image's metadata, 16 bytes)."""
    vp_json = encode_vp_facts(manifest.vp.drivers)
    head = MANIFEST_HEAD.pack(MANIFEST_MAGIC, len(manifest.streams), int(manifest.kind),
                              len(vp_json), manifest.image_id.bytes,
                              manifest.base_image_id.bytes, manifest.base_vp_seq,
                              manifest.vp.commit_seq, manifest.vp.wall_ns,
                              manifest.blocker_held_ns, manifest.chunk_count,
                              manifest.root_hash)
    body = [head, MANIFEST_HEAD_CHECKSUM.pack(xxh3(head))]
    body += [STREAM_RECORD.pack(s.raw_bytes, s.stored_bytes, s.chunks, s.hash)
             for s in manifest.streams]
    body.append(vp_json)
    data = b"".join(body)
    if mac is not None:
        return data + mac(data)
    hasher = blake2b_128()
    hasher.update(data)
    return data + hasher.digest()


def decode_manifest_head(raw: bytes, offset: int, path: object = None) -> tuple[int, int]:
    """Validate the 96-byte manifest head; returns (stream_count, total manifest length)."""
    where = f"manifest at offset {offset}"
    if raw[:4] != MANIFEST_MAGIC:
        raise CorruptionError("manifest magic missing", path=path, where=where)
    fields = MANIFEST_HEAD.unpack_from(raw)
    (head_sum,) = MANIFEST_HEAD_CHECKSUM.unpack_from(raw, MANIFEST_HEAD.size)
    if head_sum != xxh3(raw[:MANIFEST_HEAD.size]):
        raise CorruptionError("manifest head checksum mismatch", path=path, where=where)
    streams, vp_len = fields[1], fields[3]
    if streams > MAX_DRIVERS + MAX_TABLES or vp_len > MAX_VP_INFO_SIZE:
        raise CorruptionError("manifest sizes out of range", path=path, where=where)
    return streams, MANIFEST_HEAD_SIZE + STREAM_RECORD.size * streams + vp_len + HASH_SIZE


def decode_manifest(raw: bytes, offset: int, path: object = None, *,
                    mac: ManifestMac | None = None, sealed: bool = False) -> Manifest:
    """Parse a whole manifest (head validated again, then the hash, then every field).

    A sealed image's trailing hash is a MAC: checked with ``mac`` (AuthenticationError on
    mismatch), and not checked at all without it (no key: the caller says so)."""
    where = f"manifest at offset {offset}"
    if len(raw) < MANIFEST_HEAD_SIZE:
        raise CorruptionError("manifest truncated", path=path, where=where)
    streams, length = decode_manifest_head(raw, offset, path)
    if len(raw) != length:
        raise CorruptionError(f"manifest is {len(raw)} bytes, its head says {length}",
                              path=path, where=where)
    if sealed:
        if mac is not None and not hmac.compare_digest(mac(raw[:-HASH_SIZE]), raw[-HASH_SIZE:]):
            raise AuthenticationError(f"authentication failed: manifest MAC mismatch "
                                      f"({path or 'image'}, {where}): the image's metadata "
                                      "was tampered with, or this is not its key")
    else:
        hasher = blake2b_128()
        hasher.update(raw[:-HASH_SIZE])
        if hasher.digest() != raw[-HASH_SIZE:]:
            raise CorruptionError("manifest hash mismatch", path=path, where=where)
    (_m, _s, kind, _vl, image_id, base_id, base_seq, vp_seq, vp_ns, held_ns,
     chunks, root) = MANIFEST_HEAD.unpack_from(raw)
    if kind not in ImageKind._value2member_map_:
        raise CorruptionError(f"manifest image kind {kind} unknown", path=path, where=where)
    pos = MANIFEST_HEAD_SIZE
    stats = []
    for _ in range(streams):
        r, st, c, h = STREAM_RECORD.unpack_from(raw, pos)
        stats.append(StreamStats(r, st, c, h))
        pos += STREAM_RECORD.size
    vp_raw = raw[pos: -HASH_SIZE]
    try:
        doc = json.loads(vp_raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptionError("manifest VP facts are not JSON", path=path, where=where) from exc
    drivers = doc.get("drivers") if isinstance(doc, dict) else None
    if not isinstance(drivers, list) or not all(isinstance(d, dict) for d in drivers):
        raise CorruptionError("manifest VP facts lack a driver list", path=path, where=where)
    return Manifest(uuid.UUID(bytes=image_id), ImageKind(kind), uuid.UUID(bytes=base_id),
                    base_seq, ValidityPoint(vp_seq, vp_ns, tuple(drivers)), held_ns, chunks,
                    tuple(stats), root)


# ---------------------------------------------------------------------------- footer
FOOTER_MAGIC = b"LAMBEND\x00"
#: magic[8] manifest_offset u64 manifest_length u64 image_hash[16]; then xxh3_64 of those.
FOOTER = struct.Struct("<8sQQ16s")
FOOTER_CHECKSUM = struct.Struct("<Q")
FOOTER_SIZE = FOOTER.size + FOOTER_CHECKSUM.size  # 48


@dataclass(frozen=True, slots=True)
class Footer:
    """Where the manifest is, and blake2b-128 of every image byte before the footer."""

    manifest_offset: int
    manifest_length: int
    image_hash: bytes


def encode_footer(footer: Footer) -> bytes:
    """The 48 footer bytes."""
    body = FOOTER.pack(FOOTER_MAGIC, footer.manifest_offset, footer.manifest_length,
                       footer.image_hash)
    return body + FOOTER_CHECKSUM.pack(xxh3(body))


def decode_footer(raw: bytes, offset: int, path: object = None) -> Footer:
    """Validate the footer (magic, checksum, manifest length cap)."""
    where = f"footer at offset {offset}"
    if len(raw) != FOOTER_SIZE or raw[:8] != FOOTER_MAGIC:
        raise CorruptionError("footer missing: the image is truncated or incomplete",
                              path=path, where=where)
    _magic, moff, mlen, image_hash = FOOTER.unpack_from(raw)
    (checksum,) = FOOTER_CHECKSUM.unpack_from(raw, FOOTER.size)
    if checksum != xxh3(raw[:FOOTER.size]):
        raise CorruptionError("footer checksum mismatch", path=path, where=where)
    if mlen > MAX_MANIFEST_SIZE or mlen < MANIFEST_HEAD_SIZE + HASH_SIZE:
        raise CorruptionError("footer manifest length out of range", path=path, where=where)
    if moff + mlen != offset:
        raise CorruptionError("footer does not point at the manifest before it", path=path,
                              where=where)
    return Footer(moff, mlen, image_hash)
