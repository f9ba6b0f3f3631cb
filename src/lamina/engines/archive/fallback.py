"""Meta fallback of an archive table: the newest ``.ARM`` slot is invalid, so the table
reads the previous commit (docs/format.md, "`T.ARM` — meta file", "Fallback").

As for the btree meta pages (:mod:`lamina.engines.btree.fallback`): falling back keeps a
torn slot write harmless, but a damaged newest slot loses a commit the same way and the
next meta write would overwrite the evidence. So :func:`detect` tells a damaged newest slot
from a damaged older one, the table keeps what it found (``TableFiles.fallback``), its
``stat()`` and ``check()`` report it (a finding whose ``what`` starts with ``fallback:``
while the damage is on disk), a warning is logged, and a writer saves the damaged slot's
bytes aside (:func:`save_damaged`) before any meta write reuses the slot. Read-only opens
write nothing.

Telling newest from older: a meta write puts counter + 1 into the slot not holding the
current state, so the slots hold counters C - 1 and C (C current): a damaged slot that
held C + 1 was the newest (lost, or a write cut short by a crash); one that held C - 1 the
older. If the counter field itself is damaged, the last commit seq field decides (newer
than the current one's).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.core import fileio
from lamina.engines.archive.format import ARM_SLOT_SIZE, ARM_SLOT_STRIDE
from lamina.engines.archive.meta import MetaRead

log = logging.getLogger(__name__)

_COUNTER = struct.Struct("<Q")  # at offset 16 of a slot
_GENERATION_OFFSET = 32
_LAST_SEQ_OFFSET = 72
DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True, slots=True)
class ArmFallback:
    """The newest ``.ARM`` slot is invalid; the table reads the previous commit.

    ``slot`` is the damaged slot; ``lost_counter``, ``lost_generation`` and
    ``lost_commit_seq`` what its bytes say it held (the counter is the current one + 1;
    the other two fields are as read, so they may be damaged too); ``current_*`` what the
    table reads instead; ``reason`` why the slot is invalid; ``saved`` where its bytes were
    saved aside (None until a writer did it).
    """

    path: Path
    slot: int
    lost_counter: int
    lost_generation: int
    lost_commit_seq: int
    current_slot: int
    current_counter: int
    current_generation: int
    current_commit_seq: int
    reason: str
    saved: Path | None = None

    def describe(self) -> str:
        """One line for a warning or a check finding."""
        text = (f"{self.path.name} slot {self.slot}, holding counter {self.lost_counter} "
                f"(generation {self.lost_generation}, last commit seq {self.lost_commit_seq}), "
                f"is damaged ({self.reason}); reading the previous commit, counter "
                f"{self.current_counter} (generation {self.current_generation}, last commit "
                f"seq {self.current_commit_seq}, slot {self.current_slot}): that commit is "
                "lost unless a crash cut it short")
        if self.saved is not None:
            text += f"; the damaged slot was saved as {self.saved.name}"
        return text

    def to_json(self) -> dict[str, Any]:
        """The form ``stat()`` and ``check()`` report under ``fallback``."""
        return {"file": self.path.name, "slot": self.slot, "lost_counter": self.lost_counter,
                "lost_generation": self.lost_generation,
                "lost_commit_seq": self.lost_commit_seq, "current_slot": self.current_slot,
                "current_counter": self.current_counter,
                "current_generation": self.current_generation,
                "current_commit_seq": self.current_commit_seq, "reason": self.reason,
                "saved": None if self.saved is None else self.saved.name}


def slot_bytes(read: MetaRead, slot: int) -> bytes:
    """The bytes of ``slot``'s sector as ``read`` saw them (empty if not read)."""
    return read.raw[slot * ARM_SLOT_STRIDE:(slot + 1) * ARM_SLOT_STRIDE]


def detect(path: Path, read: MetaRead) -> ArmFallback | None:
    """The fallback ``read`` shows, if a damaged slot held a newer state than the current
    one (see the module doc); None otherwise. Pure."""
    cur = read.meta
    for slot in read.damaged_slots:
        raw = slot_bytes(read, slot)[:ARM_SLOT_SIZE]
        if len(raw) < ARM_SLOT_SIZE:
            continue
        (counter,) = _COUNTER.unpack_from(raw, 16)
        (generation,) = _COUNTER.unpack_from(raw, _GENERATION_OFFSET)
        (seq,) = _COUNTER.unpack_from(raw, _LAST_SEQ_OFFSET)
        newer = counter == cur.counter + 1 or (counter != cur.counter - 1
                                               and seq > cur.last_commit_seq)
        if newer:
            return ArmFallback(path, slot, cur.counter + 1, generation, seq, read.slot,
                               cur.counter, cur.generation, cur.last_commit_seq,
                               read.states[slot])
    return None


def save_damaged(arm: Path, slot: int, counter: int, data: bytes) -> Path:
    """Save a damaged slot's sector ``data`` next to ``arm`` as
    ``T.ARM.slot<slot>-<counter>.damaged``, durably and once
    (:func:`lamina.core.fileio.save_evidence`). Returns the path. Raises StorageError."""
    return fileio.save_evidence(arm.parent, f"{arm.name}.slot{slot}-{counter}",
                                DAMAGED_SUFFIX, data)


__all__ = ["DAMAGED_SUFFIX", "ArmFallback", "detect", "save_damaged", "slot_bytes"]
