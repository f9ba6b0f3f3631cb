"""Damaged backups: what a chain needs that is missing or unreadable, and what a restore
point or a prune must make of it. Pure functions over an :class:`~.index.Index`.

An image is *damaged* when it is unreadable (its header, manifest or footer cannot be read:
truncated, corrupt, empty) or *missing* (a layer in the repository builds on it, and it is
not there). A backup is damaged when its chain reaches a damaged image (or loops): it
cannot be restored, and what it needed can only partly be known:

* a damaged image that a readable layer names as its base is *placed*: it belongs to that
  layer's database, at the layer's base commit seq, so its own chain is among that
  database's images with a seq at or below it;
* an unreadable image no readable layer names is *unplaced*: its database, time and chain
  are unknown.

Rules built on this (``prune``: :mod:`~.prune`; restore points: :func:`check_point`):

1. prune never deletes a damaged backup, nor anything a placed damaged image's chain may
   stand on, and always keeps each database's newest intact backup; it refuses to run at
   all while an image is unreadable (an unplaced one could stand on anything);
2. a restore of the latest backup (or the newest at or before a time) never restores an
   older point silently: if the backup it would pick is damaged, or a damaged image may
   hold a newer point, it raises CorruptionError naming the image and the newest intact
   backup to restore explicitly with ``--id``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from lamina.errors import CorruptionError
from lamina.repository import layout as L
from lamina.repository.index import ImageRecord, Index


@dataclass(frozen=True, slots=True)
class Damage:
    """Why backup ``backup_id`` cannot be restored: its chain reaches image ``image_id``,
    which is ``problem`` ("missing", "unreadable" or "loop"). ``needed_by`` is the readable
    layer that names that image as its base (None when the backup's own image is
    unreadable): it places the image in its database at commit seq ``needed_by.base_vp_seq``."""

    backup_id: uuid.UUID
    image_id: uuid.UUID
    problem: str
    needed_by: ImageRecord | None
    detail: str = ""

    @property
    def key(self) -> str:
        """The damaged image's storage key."""
        return L.image_key(self.image_id)

    def describe(self) -> str:
        """``image X is missing (layer Y builds on it)``: for messages."""
        text = f"image {self.image_id} is {self.problem}"
        if self.needed_by is not None and self.problem != "loop":
            text += f" (layer {self.needed_by.backup_id} builds on it)"
        if self.detail:
            text += f": {self.detail}"
        return text

    def to_json(self) -> dict[str, object]:
        """JSON-ready description (``lamina prune --json``, ``damaged``)."""
        return {"backup_id": str(self.backup_id), "image": str(self.image_id),
                "problem": self.problem,
                "needed_by": None if self.needed_by is None else str(self.needed_by.backup_id),
                "message": self.describe()}


def order_key(record: ImageRecord) -> tuple[int, int, str]:
    """Newest-last order of restore points (VP time, then commit seq), as ``resolve``."""
    return (record.vp_wall_ns, record.vp_seq, str(record.backup_id))


def chain_damage(index: Index, record: ImageRecord) -> Damage | None:
    """What stops ``record``'s chain from resolving, or None when it restores."""
    if record.error is not None:
        return Damage(record.backup_id, record.backup_id, "unreadable", None, record.error)
    seen = {record.backup_id}
    current = record
    while current.is_layer:
        assert current.base_image_id is not None
        base = index.base_of(current)
        if base is None:
            named = index.records.get(current.base_image_id)
            if named is not None and named.error is not None:
                return Damage(record.backup_id, named.backup_id, "unreadable", current,
                              named.error)
            return Damage(record.backup_id, current.base_image_id, "missing", current)
        if base.backup_id in seen:
            return Damage(record.backup_id, base.backup_id, "loop", current,
                          "the chain loops")
        seen.add(base.backup_id)
        current = base
    return None


def damaged_backups(index: Index) -> dict[uuid.UUID, Damage]:
    """Every readable backup whose chain does not resolve, with why."""
    out = {}
    for r in index.records.values():
        if r.error is None:
            damage = chain_damage(index, r)
            if damage is not None:
                out[r.backup_id] = damage
    return out


def unplaced(index: Index) -> list[ImageRecord]:
    """Unreadable images that no readable layer names as its base (position unknown)."""
    named = {r.base_image_id for r in index.records.values()
             if r.error is None and r.base_image_id is not None}
    return sorted((r for r in index.records.values()
                   if r.error is not None and r.backup_id not in named),
                  key=lambda r: str(r.backup_id))


def may_stand_on(damage: Damage, records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """The readable images a placed damaged image's own chain may consist of: those of its
    database with a commit seq at or below its own (a chain's images are all older than
    its last one). Empty for an unreadable backup (not placed) or a loop."""
    layer = damage.needed_by
    if layer is None or damage.problem == "loop":
        return []
    return [r for r in records if r.error is None and r.database_id == layer.database_id
            and r.vp_seq <= layer.base_vp_seq and r.backup_id != damage.image_id]


def newest_intact(index: Index, records: Iterable[ImageRecord]) -> ImageRecord | None:
    """The newest of ``records`` whose chain resolves, or None."""
    intact = [r for r in records if r.error is None and chain_damage(index, r) is None]
    return max(intact, key=order_key, default=None)


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")


def _hint(index: Index, candidates: list[ImageRecord]) -> str:
    best = newest_intact(index, candidates)
    if best is None:
        return "there is no intact backup to restore instead"
    return (f"the newest intact backup is {best.backup_id} (VP {_iso(best.vp_wall_ns)}, "
            f"commit seq {best.vp_seq}): restore it with --id {best.backup_id}")


def check_point(index: Index, target: ImageRecord | None, pool: list[ImageRecord],
                what: str, root: str) -> None:
    """Refuse to restore ``target``, the newest backup at or before the requested time
    among ``pool`` (the readable backups of one database; None: there is none), when it is
    damaged, or when a damaged image may be a newer point than it (``what``: "latest
    backup", ...). Returns when ``target`` may be restored (or, None, is truly absent).

    Raises CorruptionError naming the damaged image (``path``: where it is or should be,
    under the repository ``root``, a directory or URL) and, when there is one, the newest intact
    backup at or before the time, to restore with ``--id``.
    """
    older = [] if target is None else [r for r in pool if order_key(r) <= order_key(target)]
    if target is not None:
        damage = chain_damage(index, target)
        if damage is not None:
            raise CorruptionError(f"the {what}, {target.backup_id}, is damaged: "
                                  f"{damage.describe()}; {_hint(index, older)}",
                                  path=f"{root}/{damage.key}")
    # A placed damaged image newer than the target: a backup past the requested time
    # stands on it, and it may lie between the two (its own time is unknown).
    for r in sorted(pool, key=order_key):
        if target is not None and order_key(r) <= order_key(target):
            continue
        damage = chain_damage(index, r)
        layer = None if damage is None else damage.needed_by
        if damage is None or layer is None or damage.problem == "loop":
            continue
        if target is not None and layer.incarnation == target.incarnation \
                and layer.base_vp_seq <= target.vp_seq:
            continue  # older than the target
        than = "the requested time" if target is None else f"the {what}, {target.backup_id}"
        raise CorruptionError(f"{damage.describe()}, and it may hold a newer point than "
                              f"{than}; {_hint(index, older)}", path=f"{root}/{damage.key}")
    lost = unplaced(index)
    if lost:
        first = lost[0]
        more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
        if target is None:
            raise CorruptionError(f"the repository holds no intact backup to restore: image "
                                  f"{first.backup_id} is damaged{more} (unreadable: "
                                  f"{first.error})", path=f"{root}/{first.key}")
        raise CorruptionError(f"image {first.backup_id} is damaged{more} (unreadable: "
                              f"{first.error}), and it may hold a newer point than the "
                              f"{what}, {target.backup_id}; {_hint(index, older)}",
                              path=f"{root}/{first.key}")
