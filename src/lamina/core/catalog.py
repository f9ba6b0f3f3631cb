"""The catalog entry codec: what a table is (name, engine, id, creation seq, engine state).

Catalog entries are stored by the btree engine in its catalog tree (key = UTF-8 name),
because the btree file is the database's transactional store; this module only defines
the record so every layer agrees on it. Format: docs/format.md, "Catalog entry".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lamina.errors import CorruptionError, UnsupportedError

ENGINE_BTREE = "btree"
ENGINE_ARCHIVE = "archive"
ENGINE_CODES: dict[str, int] = {ENGINE_BTREE: 1, ENGINE_ARCHIVE: 2}
ENGINE_NAMES: dict[int, str] = {v: k for k, v in ENGINE_CODES.items()}

# engine u8, reserved u8[3], table_id u32, created_seq u64, state_len u32
_ENTRY = struct.Struct("<B3xIQI")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One table: ``state`` is engine-private bytes (the btree engine keeps its root there)."""

    name: str
    engine: str
    table_id: int
    created_seq: int
    state: bytes = b""

    def encode_value(self) -> bytes:
        """The catalog tree value for this entry (the key is ``name`` in UTF-8)."""
        return _ENTRY.pack(ENGINE_CODES[self.engine], self.table_id, self.created_seq,
                           len(self.state)) + self.state

    @classmethod
    def decode(cls, key: bytes, value: bytes) -> CatalogEntry:
        """Decode a catalog record; raises CorruptionError / UnsupportedError on bad bytes."""
        if len(value) < _ENTRY.size:
            raise CorruptionError(f"catalog entry for {key!r} is {len(value)} bytes, too short")
        code, table_id, created_seq, state_len = _ENTRY.unpack_from(value)
        if code not in ENGINE_NAMES:
            raise UnsupportedError(f"table {key!r} uses engine code {code}, unknown to this build")
        state = value[_ENTRY.size:]
        if len(state) != state_len:
            raise CorruptionError(f"catalog entry for {key!r} has a bad state length")
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptionError(f"catalog key {key!r} is not UTF-8") from exc
        return cls(name, ENGINE_NAMES[code], table_id, created_seq, state)

    def with_state(self, state: bytes) -> CatalogEntry:
        """A copy of this entry with new engine state."""
        return CatalogEntry(self.name, self.engine, self.table_id, self.created_seq, state)
