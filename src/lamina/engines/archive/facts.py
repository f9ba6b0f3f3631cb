"""The VP facts of the archive native backup driver (a typed record; docs/format.md,
"Archive native backup stream" and "Layer streams and chains").

JSON form, stored in the image manifest::

    {"vp_seq": V,
     "tables": {NAME: {"rows": R, "position": P, "generation": G, "last_commit_seq": S,
                       "table_id": I, "chain_head": H, "base_position": B}}}

``chain_head`` is the hex of the table's block chain head at the VP position (64 digits).

``base_position`` is present only in a layer (0: the table was sent whole; else the data file
offset its tail starts at). An "at end" image (docs/format.md, "At-end streams") adds
``"begin_seq": S0`` (the commit seq its initial sections were cut at) and, per table,
``"initial": {table facts}`` — the table as its initial section sent it, with the
``base_position`` of a layer — while ``base_position`` (always present then) says where the
final section starts: the initial section's end, or 0 when the table was optimized between
the two and the final section carries it whole. :meth:`ArchiveVpFacts.from_json` raises
CorruptionError when any fact is missing or mistyped (:class:`~lamina.core.driver.FactReader`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lamina.core.driver import FactReader, VpFacts
from lamina.engines.archive.chain import CHAIN_HASH_SIZE
from lamina.engines.archive.format import ARZ_HEADER_SIZE
from lamina.errors import CorruptionError


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
    #: An "at end" image: the table as its initial section sent it (else None).
    initial: ArchiveTableFacts | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (keys as listed in the module doc)."""
        out: dict[str, Any] = {
            "rows": self.rows, "position": self.position, "generation": self.generation,
            "last_commit_seq": self.last_commit_seq, "table_id": self.table_id,
            "chain_head": self.chain_head.hex()}
        if self.base_position is not None:
            out["base_position"] = self.base_position
        if self.initial is not None:
            out["initial"] = self.initial.to_json()
        return out

    @classmethod
    def read(cls, facts: FactReader) -> ArchiveTableFacts:
        """Decode one table's facts; CorruptionError if one is missing or mistyped."""
        base = facts.integer("base_position") if facts.has("base_position") else None
        initial = None
        if facts.has("initial"):
            initial = cls.read(facts.mapping("initial"))
            if initial.initial is not None or base is None:
                raise CorruptionError(f"{facts.where}: an at-end table's facts need "
                                      "'base_position' and one level of 'initial'")
        return cls(table_id=facts.integer("table_id", minimum=1),
                   rows=facts.integer("rows"),
                   position=facts.integer("position", minimum=ARZ_HEADER_SIZE),
                   generation=facts.integer("generation", minimum=1),
                   last_commit_seq=facts.integer("last_commit_seq"),
                   chain_head=facts.digest("chain_head", CHAIN_HASH_SIZE),
                   base_position=base, initial=initial)


@dataclass(frozen=True, slots=True)
class ArchiveVpFacts(VpFacts):
    """What the archive native backup driver froze: the VP commit seq and each table it
    sent (by name). Immutable by contract: do not change ``tables``."""

    vp_seq: int
    tables: Mapping[str, ArchiveTableFacts]
    #: An "at end" image: the commit seq its initial sections were cut at (else None).
    begin_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"vp_seq": V, "tables": {name: table facts}}`` (plus ``begin_seq``)."""
        out: dict[str, Any] = {"vp_seq": self.vp_seq,
                               "tables": {name: t.to_json() for name, t in self.tables.items()}}
        if self.begin_seq is not None:
            out["begin_seq"] = self.begin_seq
        return out

    @classmethod
    def from_json(cls, data: object, where: str) -> ArchiveVpFacts:
        """Decode the JSON form; CorruptionError (naming ``where`` and the fact) if a fact
        is missing or mistyped."""
        facts = FactReader(data, where)
        tables = {name: ArchiveTableFacts.read(table)
                  for name, table in facts.mapping("tables").entries()}
        begin = facts.integer("begin_seq") if facts.has("begin_seq") else None
        vp_seq = facts.integer("vp_seq")
        if begin is not None and begin > vp_seq:
            raise CorruptionError(f"{where}: VP fact 'begin_seq' {begin} is after the VP "
                                  f"{vp_seq}")
        if any((t.initial is not None) != (begin is not None) for t in tables.values()):
            raise CorruptionError(f"{where}: VP facts 'begin_seq' and the tables' 'initial' "
                                  "come together (an at-end image) or not at all")
        return cls(vp_seq, tables, begin)


__all__ = ["ArchiveTableFacts", "ArchiveVpFacts"]
