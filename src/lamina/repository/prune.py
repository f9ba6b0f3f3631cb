"""Plan and carry out a prune: drop what no kept backup needs, merge chains where that
frees space, and stay restorable however the process dies.

Plan (:func:`plan_prune`, pure):

1. the policy keeps some backups (:mod:`lamina.repository.policy`);
2. a kept backup needs its whole chain (full image and layers up to it);
3. a kept layer whose ancestors are all unkept is *merged*: replaced, under its own key, by
   a synthetic full of its chain (``chain.combine_chain``: same validity point, one image),
   so its ancestors are no longer needed by it — but only when that lets the chain's old
   full image go (otherwise the merge would add a full without removing one). The
   synthetic full keeps the layer's image id (same database, same VP, same btree txnid),
   so layers that stay on it still link to it;
4. every image nothing needs is deleted.

Damage (:mod:`lamina.repository.damage`: an image missing, or unreadable) never costs a
restorable point, so the policy's choice is widened — never narrowed — by three rules,
whose extra keeps the plan lists as ``refused`` deletions (with the reason; ``--dry-run``
shows them) and the damage itself as ``damaged``:

* a damaged backup (its chain reaches a missing or unreadable image) is always kept, as it
  is, with the images of its chain that are there (so it can be repaired: the image put
  back from a copy);
* nothing a damaged chain may stand on is deleted: a missing (or unreadable) image that a
  layer names as its base belongs to that layer's database at the layer's base commit
  seq, and every image of that database at or below that seq is kept (which of them its
  chain was cannot be known);
* each database's newest intact backup (its chain restores) is always kept, with its
  chain, so that a prune never leaves a database whose newest backups are damaged with
  only older restorable points, or none (keeping protects data better than refusing, and
  a re-run keeps the same).

``Repository.prune`` also refuses to run at all while any image is unreadable (which
backups its chain holds cannot be known if no layer names it); these rules make the plan
itself safe whatever it is given.

Execution order (:func:`execute`), with the repository lock held exclusively so no backup
or restore runs: each merge streams its synthetic full into the store under the layer's key
(:class:`~lamina.repository.staged_image.StagedImage`: proven as it is written) and
publishes it atomically over the layer (before: the layer, restorable through its chain;
after: the full, restorable alone);
then the deletions, newest first (a layer goes before its base, so no listed layer loses
its base); then staging leftovers; the index is written last. A process killed at any
moment leaves every kept backup restorable, and a new prune (same policy) computes the
same kept set and finishes the job. Failpoint ``repository.prune_step`` (``name:N``) kills
the process at the N-th step boundary, for crash tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lamina.backup.image_reader import ImageLocation
from lamina.core.failpoints import failpoint
from lamina.errors import CorruptionError
from lamina.repository import damage as D
from lamina.repository.index import ImageRecord, Index
from lamina.repository.policy import KeepPolicy, select
from lamina.repository.staged_image import StagedImage


@dataclass(frozen=True, slots=True)
class Merge:
    """Replace kept layer ``backup_id`` by a synthetic full of ``chain`` (backup ids,
    oldest first, ending with ``backup_id``)."""

    backup_id: uuid.UUID
    chain: tuple[uuid.UUID, ...]


@dataclass(slots=True)
class PrunePlan:
    """What a prune keeps, merges and deletes (``delete`` newest first)."""

    policy: KeepPolicy
    keep: dict[uuid.UUID, list[str]]
    needed: set[uuid.UUID]
    merges: list[Merge]
    delete: list[uuid.UUID]
    broken: list[uuid.UUID]
    bytes_freed: int
    #: Backups whose chain does not resolve, with why (newest first).
    damaged: list[D.Damage] = field(default_factory=list)
    #: What the policy alone would delete but damage keeps, with the reason.
    refused: dict[uuid.UUID, str] = field(default_factory=dict)
    done_merges: list[uuid.UUID] = field(default_factory=list)
    done_deletes: list[uuid.UUID] = field(default_factory=list)
    bytes_written: int = 0

    def to_json(self, index: Index) -> dict[str, Any]:
        """JSON-ready report (``lamina prune --json``)."""
        def desc(i: uuid.UUID) -> dict[str, Any]:
            r = index.records[i]
            return {"backup_id": str(i), "kind": r.kind, "vp_seq": r.vp_seq,
                    "vp_wall_ns": r.vp_wall_ns, "size": r.size}
        return {"policy": self.policy.describe(),
                "keep": [{**desc(i), "reasons": self.keep[i]}
                         for i in sorted(self.keep, key=lambda i: str(i))],
                "also_needed": [desc(i) for i in sorted(self.needed - set(self.keep),
                                                          key=lambda i: str(i))],
                "merge": [{"backup_id": str(m.backup_id), "chain": [str(c) for c in m.chain]}
                          for m in self.merges],
                "delete": [desc(i) for i in self.delete],
                "broken": [str(i) for i in self.broken],
                "damaged": [d.to_json() for d in self.damaged],
                "refused": [{**desc(i), "reason": why} for i, why in self.refused.items()],
                "bytes_freed": self.bytes_freed, "bytes_written": self.bytes_written}


def _needed(index: Index, keep: set[uuid.UUID], merged: set[uuid.UUID]) -> set[uuid.UUID]:
    """Every backup id that a kept backup's restore reads, when ``merged`` are fulls."""
    needed: set[uuid.UUID] = set()
    for kid in keep:
        current: ImageRecord | None = index.records[kid]
        while current is not None and current.backup_id not in needed:
            needed.add(current.backup_id)
            if current.backup_id in merged or current.error is not None:
                break
            current = index.base_of(current)  # None: a full, or a missing base
    return needed


def _damage_keeps(index: Index, keep: dict[uuid.UUID, list[str]],
                 damaged: dict[uuid.UUID, D.Damage]) -> dict[uuid.UUID, str]:
    """Add to ``keep`` what the damage rules of the module doc keep; returns, for each
    backup added, why."""
    why: dict[uuid.UUID, str] = {}

    def add(record: ImageRecord, rule: str, reason: str) -> None:
        if rule not in keep.setdefault(record.backup_id, []):
            keep[record.backup_id].append(rule)
        why.setdefault(record.backup_id, reason)

    readable = [r for r in index.records.values() if r.error is None]
    for bid, damage in damaged.items():
        add(index.records[bid], "damaged", f"damaged: {damage.describe()}")
        for r in D.may_stand_on(damage, readable):  # (only placed damage: needed_by set)
            seq = 0 if damage.needed_by is None else damage.needed_by.base_vp_seq
            add(r, "damaged chain", f"a damaged chain may stand on it: {damage.describe()}, "
                                    f"at commit seq {seq}")
    for db in sorted({r.database_id for r in readable}, key=str):
        newest = D.newest_intact(index, (r for r in readable if r.database_id == db))
        if newest is not None and newest.backup_id not in keep:
            add(newest, "newest intact", f"the newest intact backup of database {db}")
    return why


def plan_prune(index: Index, policy: KeepPolicy) -> PrunePlan:
    """Decide what a prune of ``index`` under ``policy`` keeps, merges and deletes (the
    damage rules of the module doc included)."""
    chosen = select(index.records.values(), policy)
    damaged = D.damaged_backups(index)
    keep = {k: list(v) for k, v in chosen.items()}
    why = _damage_keeps(index, keep, damaged)
    broken = sorted((i for i in keep if i in damaged), key=str)
    candidates: dict[uuid.UUID, list[ImageRecord]] = {}
    for kid in keep:
        record = index.records[kid]
        chain = index.chain_or_none(record)
        if record.is_layer and chain is not None and not any(
                r.backup_id in keep for r in chain[:-1]):
            candidates[kid] = chain
    merged = set(candidates)
    while True:  # drop merges that free no full image, to a fixpoint
        needed = _needed(index, set(keep), merged)
        dropped = {m for m in merged if candidates[m][0].backup_id in needed}
        if not dropped:
            break
        merged -= dropped
    merges = [Merge(m, tuple(r.backup_id for r in candidates[m]))
              for m in sorted(merged, key=lambda m: (index.records[m].vp_seq, str(m)))]
    newest_first = sorted(index.records.values(),
                          key=lambda r: (r.vp_seq, r.vp_wall_ns, str(r.backup_id)),
                          reverse=True)
    delete = [r.backup_id for r in newest_first if r.backup_id not in needed]
    freed = sum(index.records[i].size for i in delete)
    # What the policy's own keeps need; anything else kept is a refused deletion.
    wanted = _needed(index, set(chosen), merged)
    refused = {r.backup_id: why.get(r.backup_id, "in the chain of a backup kept for damage")
               for r in newest_first if r.backup_id in needed and r.backup_id not in wanted}
    damage_list = [damaged[r.backup_id] for r in newest_first if r.backup_id in damaged]
    return PrunePlan(policy, keep, needed, merges, delete, broken, freed, damage_list,
                     refused)


#: ``combine(chain_paths, staged, backup_id) -> (image id, vp commit seq, is_full)`` of the
#: image it wrote into ``staged`` (a :class:`~lamina.repository.staged_image.StagedImage`),
#: which must keep ``backup_id``: the repository wraps ``chain.combine_chain_to``.
Combine = Callable[[list[ImageLocation], StagedImage, uuid.UUID], tuple[uuid.UUID, int, bool]]


class PruneTarget(Protocol):
    """What :func:`execute` needs from the repository."""

    def image_path(self, record: ImageRecord) -> ImageLocation:
        """Where the image reader finds the image (a path, or a ranged-read source)."""
        ...

    def stage(self, record: ImageRecord) -> StagedImage:
        """A new image being written into the store at ``record``'s key (nothing visible
        until :meth:`publish`)."""
        ...

    def publish(self, record: ImageRecord, staged: StagedImage) -> int:
        """Prove ``staged`` and publish it atomically under ``record``'s key; returns its
        size."""
        ...

    def delete(self, record: ImageRecord) -> None:
        """Delete ``record``'s image (idempotent)."""
        ...

    def discard(self, staged: StagedImage) -> None:
        """Drop a staged image that will not be published."""
        ...


def execute(plan: PrunePlan, index: Index, target: PruneTarget, combine: Combine) -> None:
    """Carry out ``plan`` (merges, then deletions newest first); see the module doc.

    Raises CorruptionError if a synthetic full does not stand for its backup (its VP
    differs: nothing is published), and whatever combine or the storage raises; a
    re-run after any failure finishes the job.
    """
    for merge in plan.merges:
        record = index.records[merge.backup_id]
        paths = [target.image_path(index.records[i]) for i in merge.chain]
        staged = target.stage(record)
        try:
            image_id, vp_seq, is_full = combine(paths, staged, merge.backup_id)
            if image_id != merge.backup_id or vp_seq != record.vp_seq or not is_full:
                raise CorruptionError(f"synthetic full of backup {merge.backup_id} does not "
                                      f"stand for it (id {image_id}, commit seq {vp_seq}, "
                                      f"expected seq {record.vp_seq})",
                                      path=staged.key)
            plan.bytes_written += target.publish(record, staged)
        except BaseException:
            target.discard(staged)
            raise
        plan.done_merges.append(merge.backup_id)
        failpoint("repository.prune_step")
    for backup_id in plan.delete:
        target.delete(index.records[backup_id])
        plan.done_deletes.append(backup_id)
        failpoint("repository.prune_step")
