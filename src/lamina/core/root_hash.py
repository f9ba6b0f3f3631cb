"""The database root hash: one BLAKE2b-256 over what a validity point *is* (docs/format.md,
"Root hash").

Inputs, every integer little-endian, tables sorted by the UTF-8 bytes of their names::

    "LAMROOT\\x01"                                         8 bytes (magic and version 1)
    table count u32, then per table:
        name length u16, name, engine length u8, engine, table id u32
    btree flag u8: 1 then the btree Merkle root (16 bytes), or 0 (no btree file in scope)
    archive table count u32, then per archive table:
        name length u16, name, generation u64, rows u64, committed length u64,
        chain head (32 bytes)

The btree Merkle root authenticates every btree page; each archive table's chain head
authenticates its blocks (:mod:`lamina.engines.archive.chain`); the catalog part pins which
tables exist. The inputs are metadata only, so computing it reads no data: O(tables).
Pure and thread-safe.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

ROOT_MAGIC = b"LAMROOT\x01"
ROOT_HASH_SIZE = 32
BTREE_ROOT_SIZE = 16
ARCHIVE_HEAD_SIZE = 32


@dataclass(frozen=True, slots=True)
class RootTable:
    """A catalog entry as the root hash sees it."""

    name: str
    engine: str
    table_id: int


@dataclass(frozen=True, slots=True)
class RootArchive:
    """An archive table's committed state as the root hash sees it."""

    name: str
    generation: int
    rows: int
    length: int
    chain_head: bytes


@dataclass(frozen=True, slots=True)
class RootInputs:
    """Everything the root hash covers (``btree_root`` None: no btree file in scope)."""

    tables: tuple[RootTable, ...]
    btree_root: bytes | None
    archive: tuple[RootArchive, ...]

    def only(self, names: Iterable[str], *, btree: bool = True,
             archive: Iterable[str] | None = None) -> RootInputs:
        """The inputs restricted to the tables ``names`` (and to the archive tables
        ``archive``, default: those of ``names``); without ``btree``, no btree root."""
        keep = set(names)
        arch = keep if archive is None else set(archive)
        return RootInputs(tuple(t for t in self.tables if t.name in keep),
                          self.btree_root if btree else None,
                          tuple(a for a in self.archive if a.name in arch))

    def digest(self) -> bytes:
        """The root hash of these inputs (32 bytes). Raises ValueError for a field out of
        its width (a name longer than 65535 bytes, a wrong-sized hash)."""
        return root_hash(self.tables, self.btree_root, self.archive)


def _name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"table name of {len(raw)} bytes")
    return struct.pack("<H", len(raw)) + raw


def root_hash(tables: Iterable[RootTable], btree_root: bytes | None,
              archive: Iterable[RootArchive]) -> bytes:
    """The root hash over the inputs (layout in the module doc). Order of the arguments'
    items does not matter (they are sorted). Raises ValueError (see
    :meth:`RootInputs.digest`)."""
    h = hashlib.blake2b(ROOT_MAGIC, digest_size=ROOT_HASH_SIZE)
    entries = sorted(tables, key=lambda t: t.name.encode("utf-8"))
    h.update(struct.pack("<I", len(entries)))
    for t in entries:
        engine = t.engine.encode("utf-8")
        if len(engine) > 0xFF:
            raise ValueError(f"engine name of {len(engine)} bytes")
        h.update(_name(t.name) + struct.pack("<B", len(engine)) + engine
                 + struct.pack("<I", t.table_id))
    if btree_root is None:
        h.update(b"\x00")
    else:
        if len(btree_root) != BTREE_ROOT_SIZE:
            raise ValueError(f"btree root of {len(btree_root)} bytes")
        h.update(b"\x01" + btree_root)
    tails = sorted(archive, key=lambda a: a.name.encode("utf-8"))
    h.update(struct.pack("<I", len(tails)))
    for a in tails:
        if len(a.chain_head) != ARCHIVE_HEAD_SIZE:
            raise ValueError(f"chain head of {len(a.chain_head)} bytes")
        h.update(_name(a.name) + struct.pack("<QQQ", a.generation, a.rows, a.length)
                 + a.chain_head)
    return h.digest()


__all__ = ["ROOT_HASH_SIZE", "RootArchive", "RootInputs", "RootTable", "root_hash"]
