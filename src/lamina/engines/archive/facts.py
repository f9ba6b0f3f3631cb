"""The VP facts of the archive native backup driver (a typed record; docs/format.md,
"Archive native backup stream" and "Layer streams and chains").

JSON form, stored in the image manifest::

    {"vp_seq": V,
     "tables": {NAME: {"rows": R, "position": P, "generation": G, "last_commit_seq": S,
                       "table_id": I, "chain_head": H, "base_position": B}}}

``chain_head`` is the hex of the table's block chain head at the VP position (64 digits).

``base_position`` is present only in a layer (0: the table was sent whole; else the data file
offset its tail starts at). :meth:`ArchiveVpFacts.from_json` raises CorruptionError when any
fact is missing or mistyped (:class:`~lamina.core.driver.FactReader`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lamina.core.driver import FactReader, VpFacts
from lamina.engines.archive.chain import CHAIN_HASH_SIZE
from lamina.engines.archive.format import ARZ_HEADER_SIZE


@dataclass(frozen=True, slots=True)
class ArchiveTableFacts:
    """One table as of the VP: its id, row count, VP position (committed data length of the
    generation current at the VP), generation, last commit seq and block chain head at the
    VP position; ``base_position`` only in a layer (0: sent whole; else where its tail
    starts)."""

    table_id: int
    rows: int
    position: int
    generation: int
    last_commit_seq: int
    chain_head: bytes
    base_position: int | None = None

    def to_json(self) -> dict[str, int | str]:
        """The JSON form (keys as listed in the module doc)."""
        out: dict[str, int | str] = {
            "rows": self.rows, "position": self.position, "generation": self.generation,
            "last_commit_seq": self.last_commit_seq, "table_id": self.table_id,
            "chain_head": self.chain_head.hex()}
        if self.base_position is not None:
            out["base_position"] = self.base_position
        return out

    @classmethod
    def read(cls, facts: FactReader) -> ArchiveTableFacts:
        """Decode one table's facts; CorruptionError if one is missing or mistyped."""
        base = facts.integer("base_position") if facts.has("base_position") else None
        return cls(table_id=facts.integer("table_id", minimum=1),
                   rows=facts.integer("rows"),
                   position=facts.integer("position", minimum=ARZ_HEADER_SIZE),
                   generation=facts.integer("generation", minimum=1),
                   last_commit_seq=facts.integer("last_commit_seq"),
                   chain_head=facts.digest("chain_head", CHAIN_HASH_SIZE),
                   base_position=base)


@dataclass(frozen=True, slots=True)
class ArchiveVpFacts(VpFacts):
    """What the archive native backup driver froze: the VP commit seq and each table it
    sent (by name). Immutable by contract: do not change ``tables``."""

    vp_seq: int
    tables: Mapping[str, ArchiveTableFacts]

    def to_json(self) -> dict[str, Any]:
        """``{"vp_seq": V, "tables": {name: table facts}}``."""
        return {"vp_seq": self.vp_seq,
                "tables": {name: t.to_json() for name, t in self.tables.items()}}

    @classmethod
    def from_json(cls, data: object, where: str) -> ArchiveVpFacts:
        """Decode the JSON form; CorruptionError (naming ``where`` and the fact) if a fact
        is missing or mistyped."""
        facts = FactReader(data, where)
        tables = {name: ArchiveTableFacts.read(table)
                  for name, table in facts.mapping("tables").entries()}
        return cls(facts.integer("vp_seq"), tables)


__all__ = ["ArchiveTableFacts", "ArchiveVpFacts"]
