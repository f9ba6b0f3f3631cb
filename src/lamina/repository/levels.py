"""Levels of continuous replication: what each new point is taken on, which points the
repository compacts and onto what, when a full is due, and which points retention keeps.
Pure functions over an :class:`~.index.Index` (the replicator keeps no state: every
decision is derived from the repository's images).

**Taking a point.** Every point is taken from the database as a layer on the *newest*
point (:func:`choose_base`): it holds exactly what was committed since the previous point,
so the database is read for nothing else (a full is taken as described below).

**Levels (compaction in the repository).** Levels are time buckets ``l_1 < ... < l_k``,
finest first, each a multiple of the one before (default 10 s, 1 min, 1 h), so that a
bucket of level *i* lies inside one bucket of every coarser level. A point's *level*
(:func:`point_levels`) is the coarsest *i* such that the point is the last of its level-*i*
bucket and that bucket has closed (the next point lies in a later level-*i* bucket); 0
otherwise (and for the newest point). A level-*i* point (*i* >= 1) is rewritten **in the
repository**, in place (same backup id, same image id, same VP: layers built on it still
link), as a layer on its *anchor* (:func:`anchor_of`): the newest point of its chain older
than the start of its level-(*i* + 1) bucket, for *i* = *k* the full its chain stands on
(never below that full). :func:`plan_compaction` lists those rewrites, oldest first, as
``(backup_id, onto)`` pairs for ``Repository.merge_layers``; applied, a second plan is empty
(compaction is idempotent), and a point that a retention pass promoted to a coarser level
(its next point was deleted) is simply planned again onto its coarser anchor.

With the default levels this gives:

* the last point of each hour: a layer on the full (what changed since the full),
* the last point of each minute: a layer on the last point of the previous hour,
* the last point of each 10 s: a layer on the last point of the previous minute,
* every other point: a layer on the point before it, as it was taken.

**Bounds** (proven against a model in ``tests/replicate/test_levels_properties.py``): once
compacted, a level-*i* point's chain is at most ``k - i + 2`` images (its anchor has a
higher level: the levels strictly rise down the chain), and a level-0 point's chain at most
``m + k + 2`` images, ``m`` being the points before it in its finest bucket (they chain one
on the other, the first on the last point of the previous finest bucket, a level >= 1
point). With the default levels and one point a second: at most 4 images for a level-1
point, 14 for any point. Merging a level-*i* point reads at most its own layer, the layers
of its finest bucket, and one compacted layer per finer level.

**Fulls.** A new full is due when there is none, when the newest is ``full_every`` old, or
when the layers of the chain the next point would extend add up to more than
``full_fraction`` of the full's size (``None``: the reason).

**Retention.** A point is kept while it is younger than the window of its level (level 0:
``fine_window``; level *i*: ``level_keep[i]``, default ``retain``; fulls: ``retain``); the
newest point of the database is always kept (levels and the newest point are those of each
incarnation: a restored copy replicated into the same repository is a history of its own);
and so is every image a kept point's chain
needs (an anchor outlives its window while a kept point stands on it). Compacted, the level-0
points of a closed finest bucket are needed only by each other, so they go when their
window ends. Only images whose chain resolves are ever deleted, and nothing is deleted while
an image of the database is unreadable. Nothing kept ever loses its chain (the property
tests check this against a model).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lamina.errors import UsageError
from lamina.repository.index import ImageRecord, Index

NS = 1_000_000_000
#: Default levels: ten-second buckets, then one-minute, then one-hour buckets.
DEFAULT_LEVELS_NS = (10 * NS, 60 * NS, 3600 * NS)


def order(record: ImageRecord) -> tuple[int, int, str]:
    """Newest-last order of one database's points: commit seq, then VP time, then id."""
    return (record.vp_seq, record.vp_wall_ns, str(record.backup_id))


@dataclass(frozen=True, slots=True)
class LevelPolicy:
    """Levels, fulls and retention of a replicator (all durations in ns).

    ``levels_ns``: bucket sizes, finest first, each a multiple of the one before (so the
    buckets nest). ``level_keep_ns``: per level, how long its points stay (None:
    ``retain_ns``). ``fine_window_ns``: how long level-0 points stay. ``full_every_ns``:
    the longest time between fulls (0: never on schedule). ``full_fraction``: a full is due
    when the chain's layers exceed this fraction of the full (0: never for size). Raises
    UsageError when these do not hold.
    """

    levels_ns: tuple[int, ...] = DEFAULT_LEVELS_NS
    level_keep_ns: tuple[int | None, ...] = (3600 * NS, 86_400 * NS, None)
    fine_window_ns: int = 600 * NS
    retain_ns: int = 7 * 86_400 * NS
    full_every_ns: int = 86_400 * NS
    full_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not self.levels_ns or any(d <= 0 for d in self.levels_ns) \
                or any(b <= a or b % a for a, b in zip(self.levels_ns, self.levels_ns[1:],
                                                       strict=False)):
            raise UsageError("levels must be positive durations, finest first, each a "
                             "multiple of the one before")
        if len(self.level_keep_ns) != len(self.levels_ns):
            raise UsageError("one keep window per level")
        if self.fine_window_ns < 0 or self.retain_ns < 0 or self.full_every_ns < 0 \
                or not self.full_fraction >= 0:
            raise UsageError("windows, full interval and full fraction must not be negative")

    @property
    def max_chain(self) -> int:
        """The most images a compacted level-1 point's restore reads: ``k + 1`` (a level-0
        point adds the points before it in its finest bucket: :meth:`chain_bound`)."""
        return len(self.levels_ns) + 1

    def chain_bound(self, level: int, before_in_bucket: int = 0) -> int:
        """The most images a compacted point of ``level`` reads: ``k - level + 2`` for a
        level >= 1, ``before_in_bucket + k + 2`` for level 0 (``before_in_bucket``: the
        points before it in its finest bucket)."""
        k = len(self.levels_ns)
        return k - level + 2 if level >= 1 else before_in_bucket + k + 2

    def window(self, level: int) -> int:
        """How long a layer point of ``level`` (0 .. k) is kept (fulls: ``retain_ns``)."""
        if level == 0:
            return min(self.fine_window_ns, self.retain_ns)
        keep = self.level_keep_ns[level - 1]
        return self.retain_ns if keep is None else min(keep, self.retain_ns)


def points_of(index: Index, usable: Callable[[ImageRecord], bool]) -> list[ImageRecord]:
    """The readable ``usable`` records whose chain resolves, oldest first (:func:`order`)."""
    return sorted((r for r in index.records.values()
                   if r.error is None and usable(r) and index.chain_or_none(r) is not None),
                  key=order)


def newest_full(index: Index, usable: Callable[[ImageRecord], bool]) -> ImageRecord | None:
    """The newest readable full image among ``usable`` records."""
    fulls = [r for r in index.records.values()
             if r.error is None and not r.is_layer and usable(r)]
    return max(fulls, key=order, default=None)


def choose_base(index: Index, usable: Callable[[ImageRecord], bool]) -> ImageRecord | None:
    """The base of the next point: the newest ``usable`` point whose chain resolves (None:
    there is none, a full is due)."""
    points = points_of(index, usable)
    return points[-1] if points else None


def level_between(policy: LevelPolicy, record: ImageRecord, following: ImageRecord | None
                  ) -> int:
    """The level of ``record`` when ``following`` is the next point (None: none yet): how
    many levels, finest first, have ``following`` in a later bucket."""
    level = 0
    if following is None:
        return level
    for size in policy.levels_ns:
        if following.vp_wall_ns // size <= record.vp_wall_ns // size:
            break
        level += 1
    return level


def point_levels(points: list[ImageRecord], policy: LevelPolicy) -> dict[uuid.UUID, int]:
    """Every point's level (see the module doc); ``points`` oldest first."""
    return {r.backup_id: level_between(policy, r, points[i + 1] if i + 1 < len(points)
                                       else None)
            for i, r in enumerate(points)}


def anchor_of(index: Index, record: ImageRecord, level: int,
              policy: LevelPolicy) -> ImageRecord | None:
    """What a level-``level`` point (>= 1) is compacted onto: the newest image of its
    chain older than the start of its level-(``level`` + 1) bucket, the chain's full for
    the coarsest level or when there is none (never below that full). None: the chain does
    not resolve."""
    chain = index.chain_or_none(record)
    if chain is None:
        return None
    if level >= len(policy.levels_ns):
        return chain[0]
    size = policy.levels_ns[level]
    start = record.vp_wall_ns // size
    for image in reversed(chain[:-1]):
        if image.vp_wall_ns // size < start:
            return image
    return chain[0]


def plan_compaction(index: Index, usable: Callable[[ImageRecord], bool],
                    policy: LevelPolicy) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """The rewrites that compact ``usable`` points (see the module doc): ``(backup_id,
    onto)`` pairs, oldest point first, for every layer of level >= 1 that is not yet a
    layer on its anchor. Applied in this order, each ``onto`` is in the chain of its point
    at that moment; planned again afterwards, the list is empty."""
    points = points_of(index, usable)
    levels = point_levels(points, policy)
    plan = []
    for record in points:
        level = levels[record.backup_id]
        if level == 0 or not record.is_layer:
            continue
        onto = anchor_of(index, record, level, policy)
        if onto is not None and onto.image_id != record.base_image_id:
            plan.append((record.backup_id, onto.backup_id))
    return plan


def full_due(index: Index, base: ImageRecord | None, now_ns: int,
             policy: LevelPolicy) -> str | None:
    """Why the next point must be a full (None: a layer on ``base`` will do)."""
    if base is None:
        return "no full image of this database's history"
    chain = index.chain_or_none(base)
    if chain is None:
        return f"the chain of {base.backup_id} does not resolve"
    full = chain[0]
    if policy.full_every_ns and now_ns - full.vp_wall_ns >= policy.full_every_ns:
        return f"the newest full {full.backup_id} is older than the full interval"
    layers = sum(r.size for r in chain[1:])
    if policy.full_fraction and layers > policy.full_fraction * max(full.size, 1):
        return (f"the chain's layers ({layers} bytes) exceed {policy.full_fraction:g} of "
                f"the full ({full.size} bytes)")
    return None


@dataclass(slots=True)
class RetentionPlan:
    """What retention keeps (by the windows), needs (their chains) and deletes."""

    keep: set[uuid.UUID] = field(default_factory=set)
    needed: set[uuid.UUID] = field(default_factory=set)
    delete: list[uuid.UUID] = field(default_factory=list)
    refused: str | None = None


def plan_retention(index: Index, database_id: uuid.UUID, now_ns: int,
                   policy: LevelPolicy) -> RetentionPlan:
    """The retention plan of ``database_id``'s points at ``now_ns`` (see the module doc),
    per incarnation (each history of the database keeps its own newest point and levels).
    Other databases' images are never touched."""
    plan = RetentionPlan()
    mine = [r for r in index.records.values() if r.database_id == database_id]
    if any(r.error is not None for r in mine):
        plan.refused = "an image of this database is unreadable"
        return plan
    chains: dict[uuid.UUID, list[ImageRecord] | None] = {
        r.backup_id: index.chain_or_none(r) for r in mine}
    restorable = sorted((r for r in mine if chains[r.backup_id] is not None), key=order)
    # Each incarnation (the database, a restored copy of it replicated into the same
    # repository) is its own line of points: its levels and its newest point are its own,
    # never decided by the points of another history interleaved with it.
    lines: dict[uuid.UUID, list[ImageRecord]] = {}
    for r in restorable:
        lines.setdefault(r.incarnation, []).append(r)
    levels: dict[uuid.UUID, int] = {}
    newest: set[uuid.UUID] = set()
    for line in lines.values():
        levels.update(point_levels(line, policy))
        newest.add(line[-1].backup_id)
    for r in restorable:
        window = policy.window(levels[r.backup_id]) if r.is_layer else policy.retain_ns
        if r.backup_id in newest or now_ns - r.vp_wall_ns <= window:
            plan.keep.add(r.backup_id)
    for r in mine:
        chain = chains[r.backup_id]
        if chain is None:  # damage: kept as it is, with what it may stand on
            plan.needed.add(r.backup_id)
            plan.needed.update(x.backup_id for x in mine if x.vp_seq <= r.base_vp_seq)
        elif r.backup_id in plan.keep:
            plan.needed.update(x.backup_id for x in chain)
    plan.delete = [r.backup_id for r in reversed(restorable)
                   if r.backup_id not in plan.needed]
    return plan


def max_chain_of(index: Index, records: Iterable[ImageRecord]) -> int:
    """The longest chain (in images) among ``records`` that resolve (0 if none)."""
    return max((len(c) for r in records if (c := index.chain_or_none(r)) is not None),
               default=0)


__all__ = ["DEFAULT_LEVELS_NS", "LevelPolicy", "RetentionPlan", "anchor_of", "choose_base",
           "full_due", "level_between", "max_chain_of", "newest_full", "order",
           "plan_compaction", "plan_retention", "point_levels", "points_of"]
