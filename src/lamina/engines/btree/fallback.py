"""Meta fallback: the newest meta slot of the data file is invalid, so the store reads the
previous commit (docs/format.md, "Meta pages", "Fallback").

Falling back is what makes a torn meta write harmless, so it stays; but a damaged newest
slot (a flipped bit, a lost sector) loses a commit the same way, and the next commit would
overwrite the evidence. So the store *says so*: :func:`detect` tells a damaged newest slot
from a damaged older one, ``BtreeStore.fallback`` keeps what it found when it opened, its
``stat()`` and ``check()`` report it (a check finding whose ``what`` starts with
``fallback:``), a warning is logged, and a writable open saves the damaged slot's bytes
aside (:func:`save_damaged`) before it rewrites the slot. Read-only opens write nothing.

Telling newest from older: the two slots hold the same commit (after a restore or a
repair) or consecutive ones (a commit writes the other slot), so a damaged slot held
either the current txnid V's predecessor (damage to the older slot: nothing is lost) or
V + 1 (the newest commit: lost, or a commit cut short by a crash while its meta was being
written — the same bytes). The damaged bytes' txnid field tells which; if that field itself
is damaged (neither V - 1, V nor V + 1), the commit seq field decides (newer than V's).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.core import fileio
from lamina.engines.btree import format as btree_format
from lamina.errors import DataError

_TXNID = struct.Struct("<QQ")  # txnid u64, commit seq u64 at offset 16 of a meta record
_TXNID_OFFSET = 16

#: How a saved-aside damaged slot is named in the database directory:
#: ``data.lamina.meta<slot>-<txnid>.damaged`` (``-<n>`` added if that name is taken by
#: other bytes).
DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True, slots=True)
class MetaFallback:
    """The newest meta slot is invalid; reads use the previous commit.

    ``slot`` is the damaged slot and ``lost_txnid`` the commit it held; ``current_slot``
    and ``current_txnid`` what the store reads instead; ``reason`` why the slot is invalid;
    ``saved`` where its bytes were saved aside (None until a writable open did it).
    """

    path: Path
    slot: int
    lost_txnid: int
    current_slot: int
    current_txnid: int
    reason: str
    saved: Path | None = None

    def describe(self) -> str:
        """One line for a warning or a check finding."""
        text = (f"{self.path.name} meta slot {self.slot}, holding txnid {self.lost_txnid}, is "
                f"damaged ({self.reason}); reading the previous commit, txnid "
                f"{self.current_txnid} (meta slot {self.current_slot}): commit "
                f"{self.lost_txnid} is lost unless a crash cut it short")
        if self.saved is not None:
            text += f"; the damaged slot was saved as {self.saved.name}"
        return text

    def to_json(self) -> dict[str, Any]:
        """The form ``stat()`` reports under ``fallback``."""
        return {"file": self.path.name, "slot": self.slot, "lost_txnid": self.lost_txnid,
                "current_slot": self.current_slot, "current_txnid": self.current_txnid,
                "reason": self.reason,
                "saved": None if self.saved is None else self.saved.name}


def _reason(err: btree_format.Meta | DataError) -> str:
    what = getattr(err, "what", None)
    return str(what if what is not None else err)


def detect(path: Path, current: btree_format.Meta,
           slots: list[btree_format.Meta | DataError], raw: list[bytes], *,
           reading_txnid: int | None = None) -> MetaFallback | None:
    """The fallback the slots show, if the invalid slot held a newer commit than
    ``current`` (see the module doc); None if both slots are valid or the invalid one held
    the older commit. ``reading_txnid``: the txnid readers use (the lock file's published
    meta); if it is not older than the damaged slot's commit, nothing falls back (yet: the
    processes that have the database open still read that commit). Pure."""
    for slot, got in enumerate(slots):
        if isinstance(got, btree_format.Meta):
            continue
        data = raw[slot] if slot < len(raw) else b""
        if len(data) < _TXNID_OFFSET + _TXNID.size:
            continue
        txnid, seq = _TXNID.unpack_from(data, _TXNID_OFFSET)
        v = current.txnid
        newer = txnid == v + 1 or (txnid not in (v - 1, v) and seq > current.commit_seq)
        if newer and (reading_txnid is None or reading_txnid <= v):
            return MetaFallback(path, slot, v + 1, current.slot, v, _reason(got))
    return None


def damaged_name(slot: int, txnid: int) -> str:
    """The file name a damaged slot is saved under (without a collision suffix)."""
    return f"{btree_format.DATA_FILE_NAME}.meta{slot}-{txnid}{DAMAGED_SUFFIX}"


def save_damaged(directory: Path, slot: int, txnid: int, data: bytes) -> Path:
    """Save the damaged slot's bytes ``data`` in ``directory`` under
    :func:`damaged_name`, durably and once (:func:`lamina.core.fileio.save_evidence`).
    Returns the path. Raises StorageError."""
    stem = damaged_name(slot, txnid)[: -len(DAMAGED_SUFFIX)]
    return fileio.save_evidence(directory, stem, DAMAGED_SUFFIX, data)


__all__ = ["DAMAGED_SUFFIX", "MetaFallback", "damaged_name", "detect", "save_damaged"]
