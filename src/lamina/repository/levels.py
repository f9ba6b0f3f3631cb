"""Levels of continuous replication: which base each new point is taken on, when a full is
due, and which points retention keeps. Pure functions over an :class:`~.index.Index`.

**Bases (a skip list in time).** Levels are time buckets, finest first (default ten
seconds, one minute, one hour). The points of one database history form a tree rooted at
its newest full image F. A new point at time *t* descends from F: at each level, coarsest
first, it takes the newest point that builds directly on the current anchor; if that point
lies in the same bucket of this level as *t* it becomes the anchor and the descent goes on,
else (or if there is none) the new point is taken on the current anchor and becomes the
first point of its bucket. So with levels (1 min, 1 h), for example:

* the first point of each hour is a layer on F (it holds what changed since F),
* the first point of each minute a layer on its hour's first point,
* every other point a layer on its minute's first point.

Every point's chain is therefore at most ``2 + len(levels)`` images (F, one anchor per
level, the point): **restoring any point reads at most 5 images** with the default three
levels (4 with two), however long the replication has run. A layer holds what changed since
its base, so a point holds at most one finest bucket of changes (10 s by default), an
anchor at most one bucket of the next level. A point's depth in the tree is its level:
depth ``len(levels) + 1`` are the finest points, depth 1 the coarsest anchors, depth 0 the
fulls.

**Fulls.** A new full is due when there is none, when the newest is ``full_every`` old, or
when the layers of the chain the next point would extend add up to more than
``full_fraction`` of the full's size (``None``: the reason).

**Retention.** A point is kept while it is younger than the window of its level (finest
points: ``fine_window``; anchors of level *i*: ``level_keep[i]``, default ``retain``; fulls:
``retain``); the newest point of the database is always kept; and so is every image a kept
point's chain needs (a full or an anchor outlives its window while a kept point stands on
it). Only images whose chain resolves are ever deleted, and nothing is deleted while an
image of the database is unreadable. Nothing kept ever loses its chain (the property tests
check this against a model).
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

    ``levels_ns``: bucket sizes, finest first, strictly increasing. ``level_keep_ns``: per
    level, how long its anchors stay (None: ``retain_ns``). ``fine_window_ns``: how long
    the finest points stay. ``full_every_ns``: the longest time between fulls (0: never on
    schedule). ``full_fraction``: a full is due when the chain's layers exceed this
    fraction of the full (0: never for size).
    """

    levels_ns: tuple[int, ...] = DEFAULT_LEVELS_NS
    level_keep_ns: tuple[int | None, ...] = (3600 * NS, 86_400 * NS, None)
    fine_window_ns: int = 600 * NS
    retain_ns: int = 7 * 86_400 * NS
    full_every_ns: int = 86_400 * NS
    full_fraction: float = 0.5

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.levels_ns, self.levels_ns[1:], strict=False)) \
                or any(d <= 0 for d in self.levels_ns):
            raise UsageError("levels must be positive durations, finest first, each longer "
                             "than the one before")
        if len(self.level_keep_ns) != len(self.levels_ns):
            raise UsageError("one keep window per level")
        if self.fine_window_ns < 0 or self.retain_ns < 0 or self.full_every_ns < 0 \
                or not self.full_fraction >= 0:
            raise UsageError("windows, full interval and full fraction must not be negative")

    @property
    def max_chain(self) -> int:
        """The most images a point's restore reads: ``2 + len(levels)``."""
        return 2 + len(self.levels_ns)

    def window(self, depth: int) -> int:
        """How long a point at ``depth`` (0: a full) is kept."""
        k = len(self.levels_ns)
        if depth == 0:
            return self.retain_ns
        if depth > k:
            return min(self.fine_window_ns, self.retain_ns)
        keep = self.level_keep_ns[k - depth]
        return self.retain_ns if keep is None else min(keep, self.retain_ns)


def newest_full(index: Index, usable: Callable[[ImageRecord], bool]) -> ImageRecord | None:
    """The newest readable full image among ``usable`` records."""
    fulls = [r for r in index.records.values()
             if r.error is None and not r.is_layer and usable(r)]
    return max(fulls, key=order, default=None)


def choose_base(index: Index, usable: Callable[[ImageRecord], bool],
                now_ns: int, policy: LevelPolicy) -> ImageRecord | None:
    """The base of a point taken at ``now_ns`` (see the module doc), or None when there is
    no full to build on."""
    full = newest_full(index, usable)
    if full is None:
        return None
    kids = index.children()
    anchor = full
    for bucket in reversed(policy.levels_ns):
        candidates = [c for c in kids.get(anchor.backup_id, [])
                      if c.error is None and usable(c) and index.chain_or_none(c) is not None]
        newest = max(candidates, key=order, default=None)
        if newest is None or newest.vp_wall_ns // bucket != now_ns // bucket:
            return anchor
        anchor = newest
    return anchor


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


def depth(index: Index, record: ImageRecord) -> int | None:
    """Layers between ``record`` and its full (0 for a full; None: the chain does not
    resolve)."""
    chain = index.chain_or_none(record)
    return None if chain is None else len(chain) - 1


@dataclass(slots=True)
class RetentionPlan:
    """What retention keeps (by the windows), needs (their chains) and deletes."""

    keep: set[uuid.UUID] = field(default_factory=set)
    needed: set[uuid.UUID] = field(default_factory=set)
    delete: list[uuid.UUID] = field(default_factory=list)
    refused: str | None = None


def plan_retention(index: Index, database_id: uuid.UUID, now_ns: int,
                   policy: LevelPolicy) -> RetentionPlan:
    """The retention plan of ``database_id``'s points at ``now_ns`` (see the module doc).
    Other databases' images are never touched."""
    plan = RetentionPlan()
    mine = [r for r in index.records.values() if r.database_id == database_id]
    if any(r.error is not None for r in mine):
        plan.refused = "an image of this database is unreadable"
        return plan
    chains: dict[uuid.UUID, list[ImageRecord] | None] = {
        r.backup_id: index.chain_or_none(r) for r in mine}
    restorable = [r for r in mine if chains[r.backup_id] is not None]
    newest = max(restorable, key=order, default=None)
    for r in restorable:
        chain = chains[r.backup_id]
        assert chain is not None
        if (newest is not None and r.backup_id == newest.backup_id) \
                or now_ns - r.vp_wall_ns <= policy.window(len(chain) - 1):
            plan.keep.add(r.backup_id)
    for r in mine:
        chain = chains[r.backup_id]
        if chain is None:  # damage: kept as it is, with what it may stand on
            plan.needed.add(r.backup_id)
            plan.needed.update(x.backup_id for x in mine if x.vp_seq <= r.base_vp_seq)
        elif r.backup_id in plan.keep:
            plan.needed.update(x.backup_id for x in chain)
    plan.delete = [r.backup_id for r in sorted(restorable, key=order, reverse=True)
                   if r.backup_id not in plan.needed]
    return plan


def max_chain_of(index: Index, records: Iterable[ImageRecord]) -> int:
    """The longest chain (in images) among ``records`` that resolve (0 if none)."""
    return max((len(c) for r in records if (c := index.chain_or_none(r)) is not None),
               default=0)


__all__ = ["DEFAULT_LEVELS_NS", "LevelPolicy", "RetentionPlan", "choose_base", "depth",
           "full_due", "max_chain_of", "newest_full", "order", "plan_retention"]
