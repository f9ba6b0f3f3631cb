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
4. every image nothing needs is deleted; images whose header cannot be read, and chains
   that do not resolve (a base missing), are kept as they are, with their ancestors.

Execution order (:func:`execute`), with the repository lock held exclusively so no backup
or restore runs: each merge publishes its synthetic full by an atomic put over the layer's
key (before: the layer, restorable through its chain; after: the full, restorable alone);
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
from pathlib import Path
from typing import Any, Protocol

from lamina.core.failpoints import failpoint
from lamina.errors import CorruptionError
from lamina.repository.index import ImageRecord, Index
from lamina.repository.policy import KeepPolicy, select


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


def plan_prune(index: Index, policy: KeepPolicy) -> PrunePlan:
    """Decide what a prune of ``index`` under ``policy`` keeps, merges and deletes."""
    keep = select(index.records.values(), policy)
    broken = sorted((i for i in keep if index.records[i].error is None
                     and index.chain_or_none(index.records[i]) is None), key=str)
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
    delete = [r.backup_id for r in sorted(index.records.values(),
                                          key=lambda r: (r.vp_seq, r.vp_wall_ns, str(r.backup_id)),
                                          reverse=True)
              if r.backup_id not in needed]
    freed = sum(index.records[i].size for i in delete)
    return PrunePlan(policy, keep, needed, merges, delete, broken, freed)


#: ``combine(chain_paths, out_path, backup_id) -> (image id, vp commit seq, is_full)`` of the
#: image it wrote, which must keep ``backup_id``: the repository wraps ``chain.combine_chain``.
Combine = Callable[[list[Path], Path, uuid.UUID], tuple[uuid.UUID, int, bool]]


class PruneTarget(Protocol):
    """What :func:`execute` needs from the repository."""

    def image_path(self, record: ImageRecord) -> Path:
        """A local readable path of the image."""
        ...

    def staging_path(self) -> Path:
        """A fresh local path to write a synthetic full to."""
        ...

    def publish(self, record: ImageRecord, staged: Path) -> int:
        """Put ``staged`` atomically under ``record``'s key; returns its size."""
        ...

    def delete(self, record: ImageRecord) -> None:
        """Delete ``record``'s image (idempotent)."""
        ...

    def discard(self, staged: Path) -> None:
        """Remove a staged file that will not be published."""
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
        staged = target.staging_path()
        try:
            image_id, vp_seq, is_full = combine(paths, staged, merge.backup_id)
            if image_id != merge.backup_id or vp_seq != record.vp_seq or not is_full:
                raise CorruptionError(f"synthetic full of backup {merge.backup_id} does not "
                                      f"stand for it (id {image_id}, commit seq {vp_seq}, "
                                      f"expected seq {record.vp_seq})", path=staged)
        except BaseException:
            target.discard(staged)
            raise
        plan.bytes_written += target.publish(record, staged)
        plan.done_merges.append(merge.backup_id)
        failpoint("repository.prune_step")
    for backup_id in plan.delete:
        target.delete(index.records[backup_id])
        plan.done_deletes.append(backup_id)
        failpoint("repository.prune_step")
