"""The checker's vocabulary shared by every engine: a finding and a report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem the checker found.

    ``where`` locates it ("page 17", "block at offset 4096 rows 1-500", "meta 1"),
    ``what`` names the failed rule, ``expected``/``found`` give the two sides when known.
    """

    table: str | None
    where: str
    what: str
    expected: str = ""
    found: str = ""

    def __str__(self) -> str:
        text = f"{self.table + ': ' if self.table else ''}{self.where}: {self.what}"
        if self.expected or self.found:
            text += f" (expected {self.expected or '?'}, found {self.found or '?'})"
        return text


@dataclass(slots=True)
class CheckReport:
    """What a check looked at (``stats``) and what it found (``findings``; empty = clean)."""

    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    def extend(self, other: CheckReport, prefix: str = "") -> None:
        """Merge another report's findings and stats (stats keys get ``prefix``)."""
        self.findings.extend(other.findings)
        for key, value in other.stats.items():
            self.stats[prefix + key] = value

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form used by ``lamina check --json``."""
        return {"ok": self.ok, "stats": self.stats, "findings": [asdict(f) for f in self.findings]}
