"""Constants and fixed structures of the btree data file (docs/format.md, "Btree data file").

Everything here is pure layout: page header, entry records, root descriptors, the meta
record and the free-list record keys. No I/O. All integers are little-endian except the
free-list record key, which is big-endian so that byte order equals txnid order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from lamina.errors import CorruptionError, NotADatabaseError, VersionError

#: The data file's name inside the database directory.
DATA_FILE_NAME = "data.lamina"

#: Magic at offset 0 of both meta pages.
MAGIC = b"LAMBTRE\x00"
#: Format version this build writes and the newest it reads.
VERSION = 1

DEFAULT_PAGE_SIZE = 4096
MIN_PAGE_SIZE = 1024
MAX_PAGE_SIZE = 65536

#: Meta pages live at page numbers 0 and 1; the first tree page is 2.
META_PAGES = 2
FIRST_DATA_PAGE = 2

# Page types (header byte 20).
PAGE_META = 1
PAGE_BRANCH = 2
PAGE_LEAF = 3
PAGE_OVERFLOW = 4
PAGE_TYPE_NAMES = {PAGE_META: "meta", PAGE_BRANCH: "branch", PAGE_LEAF: "leaf",
                   PAGE_OVERFLOW: "overflow"}

#: Page header of every tree and overflow page (32 bytes):
#: checksum u64, txnid u64, pgno u32, type u8, flags u8, nkeys u16, aux u32, next u32.
HEADER = struct.Struct("<QQIBBHII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 32

#: Branch child record: pgno u32, txnid u64, subtree key count u64, blake2b-128 hash.
CHILD = struct.Struct("<IQQ16s")
CHILD_SIZE = CHILD.size
assert CHILD_SIZE == 36

#: Leaf value-length flag: the value slot holds an overflow reference, not the value.
VAL_OVERFLOW = 0x8000

#: Overflow reference stored in a leaf value slot: first pgno u32, page count u32,
#: value length u64, txnid of the chain u64, blake2b-128 of the value.
OVERFLOW_REF = struct.Struct("<IIQQ16s")
OVERFLOW_REF_SIZE = OVERFLOW_REF.size
assert OVERFLOW_REF_SIZE == 40

#: Root descriptor of a tree (catalog/free list in the meta, tables in catalog state):
#: root pgno u32 (0 = empty tree), depth u32, root txnid u64, key count u64, root hash.
ROOT = struct.Struct("<IIQQ16s")
ROOT_SIZE = ROOT.size
assert ROOT_SIZE == 40

#: Largest value size accepted (ValueTooLargeError above it).
MAX_VALUE_SIZE = 1 << 30

HASH_SIZE = 16
ZERO_HASH = bytes(HASH_SIZE)

#: Free-list record key: txnid that freed the pages (u64 BE) + chunk number (u32 BE).
FREE_KEY = struct.Struct(">QI")


def valid_page_size(page_size: int) -> bool:
    """True for a power of two between 1 KiB and 64 KiB."""
    return (MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE
            and page_size & (page_size - 1) == 0)


def max_key_size(page_size: int) -> int:
    """Longest key for ``page_size``: one eighth of the page (512 bytes at 4 KiB)."""
    return page_size // 8


def max_leaf_entry(page_size: int) -> int:
    """Largest leaf entry (4 + key + stored value); larger values go to overflow pages.

    A quarter of the page body, so a leaf always holds at least four entries and a split
    by bytes always leaves two non-empty, fitting halves.
    """
    return (page_size - HEADER_SIZE) // 4


def free_chunk_capacity(page_size: int) -> int:
    """Page numbers per free-list record value (each record stays inline in its leaf)."""
    return (max_leaf_entry(page_size) - 4 - FREE_KEY.size) // 4


def overflow_capacity(page_size: int) -> int:
    """Value bytes carried by one overflow page."""
    return page_size - HEADER_SIZE


def overflow_pages(length: int, page_size: int) -> int:
    """Pages of the overflow chain of a ``length``-byte value (at least one)."""
    return max(1, -(-length // overflow_capacity(page_size)))


def overflow_ref_valid(length: int, npages: int, page_size: int) -> bool:
    """Whether an overflow reference's length and page count agree (and the length is
    possible): checked before a chain is followed, so a damaged reference can never make
    a reader walk, or buffer, more than the value's own pages."""
    return length <= MAX_VALUE_SIZE and npages == overflow_pages(length, page_size)


@dataclass(frozen=True, slots=True)
class RootDesc:
    """A tree's root: page number (0 = empty), depth (0 empty, 1 = root is a leaf),
    txnid and hash of the root page, and the number of keys in the tree."""

    pgno: int = 0
    depth: int = 0
    txnid: int = 0
    count: int = 0
    hash: bytes = ZERO_HASH

    def encode(self) -> bytes:
        """The 40-byte descriptor."""
        return ROOT.pack(self.pgno, self.depth, self.txnid, self.count, self.hash)

    @classmethod
    def decode(cls, raw: bytes, what: str = "root descriptor") -> RootDesc:
        """Decode 40 bytes; raises CorruptionError on a wrong length or an impossible value."""
        if len(raw) != ROOT_SIZE:
            raise CorruptionError(f"{what} is {len(raw)} bytes, expected {ROOT_SIZE}")
        pgno, depth, txnid, count, digest = ROOT.unpack(raw)
        if (pgno == 0) != (depth == 0) or (pgno != 0 and pgno < FIRST_DATA_PAGE):
            raise CorruptionError(f"{what} is inconsistent (pgno {pgno}, depth {depth})")
        return cls(pgno, depth, txnid, count, digest)


EMPTY_ROOT = RootDesc()

#: Meta record (also published in the lock file): magic[8], version u32, page_size u32,
#: txnid u64, commit_seq u64, meta pgno u32, page type u8, pad[3], total_pages u64,
#: next_table_id u64, catalog root[40], free-list root[40], root hash[16], commit time ns u64.
#: Then an xxh3_64 checksum of everything before it.
META_BODY = struct.Struct("<8sIIQQIB3xQQ40s40s16sQ")
META_CHECK = struct.Struct("<Q")
META_SIZE = META_BODY.size + META_CHECK.size
assert META_SIZE == 168


@dataclass(frozen=True, slots=True)
class Meta:
    """One decoded meta record: the whole state of one committed btree transaction."""

    page_size: int
    txnid: int
    commit_seq: int
    slot: int
    total_pages: int
    next_table_id: int
    catalog: RootDesc
    freelist: RootDesc
    commit_ns: int = 0

    @property
    def root_hash(self) -> bytes:
        """The Merkle root of the snapshot: the catalog tree's root hash."""
        return self.catalog.hash

    def encode(self) -> bytes:
        """The 168-byte meta record (the meta page holds it at offset 0, rest zero)."""
        body = META_BODY.pack(MAGIC, VERSION, self.page_size, self.txnid, self.commit_seq,
                              self.slot, PAGE_META, self.total_pages, self.next_table_id,
                              self.catalog.encode(), self.freelist.encode(),
                              self.catalog.hash, self.commit_ns)
        return body + META_CHECK.pack(xxhash.xxh3_64_intdigest(body))

    @classmethod
    def decode(cls, raw: bytes, where: str = "meta") -> Meta:
        """Validate (magic, then version, then checksum, then fields) and decode.

        Raises NotADatabaseError (bad magic), VersionError (newer version) or
        CorruptionError (checksum or an impossible field).
        """
        if len(raw) < META_SIZE or raw[:8] != MAGIC:
            raise NotADatabaseError(f"{where}: not a Lamina btree meta record (bad magic)")
        version = struct.unpack_from("<I", raw, 8)[0]
        if version > VERSION:
            raise VersionError(f"{where}: btree format version {version}; "
                               f"this build reads up to {VERSION}")
        body = bytes(raw[: META_BODY.size])
        (checksum,) = META_CHECK.unpack_from(raw, META_BODY.size)
        if checksum != xxhash.xxh3_64_intdigest(body):
            raise CorruptionError("meta record checksum mismatch", where=where)
        (_m, _v, page_size, txnid, seq, slot, ptype, total, next_id, cat, free, rhash,
         ns) = META_BODY.unpack(body)
        if (not valid_page_size(page_size) or ptype != PAGE_META or slot not in (0, 1)
                or total < META_PAGES):
            raise CorruptionError("meta record has impossible fields", where=where)
        catalog = RootDesc.decode(cat, "catalog root")
        if rhash != catalog.hash:
            raise CorruptionError("meta root hash differs from catalog root hash", where=where)
        return cls(page_size, txnid, seq, slot, total, next_id, catalog,
                   RootDesc.decode(free, "free-list root"), ns)
