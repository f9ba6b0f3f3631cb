"""Levels, compaction and retention against a model (hypothesis): a replicator's decisions
replayed on synthetic repositories, with time jumps, fulls (taken from the database or
merged in the repository), compaction passes skipped (a replicator killed between
publishing a point and compacting, an outage) and retention runs at random moments.

The model of a merge is what ``Repository.merge_layers(backup_id, onto)`` does: the point
keeps its id and VP, and becomes a layer on ``onto``, which must be in its chain at that
moment. Invariants after every step: every point in the repository restores (its chain
resolves and covers commits 1..its VP seq without a gap or an overlap: each image's base
seq is the previous image's VP seq); once compacted, a level-i point's chain is at most
``k - i + 2`` images and a level-0 point's at most ``m + k + 2`` (``m``: the points before
it in its finest bucket); compaction is idempotent; retention never asks ``forget`` to
delete what a remaining point needs, never deletes the newest point nor a point younger
than its level's window; points are in time order.
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.repository.index import ImageRecord, Index
from lamina.repository.levels import (
    LevelPolicy,
    choose_base,
    full_due,
    order,
    plan_compaction,
    plan_retention,
    point_levels,
    points_of,
)

S = 10**9
DB = uuid.UUID(int=7)


def everything(_record: ImageRecord) -> bool:
    return True


@st.composite
def policies(draw: st.DrawFn) -> LevelPolicy:
    n = draw(st.integers(min_value=1, max_value=3))
    buckets = [draw(st.integers(min_value=2, max_value=30))]
    for _ in range(n - 1):
        buckets.append(buckets[-1] * draw(st.integers(min_value=2, max_value=8)))
    fine = draw(st.integers(min_value=0, max_value=600))
    keeps = tuple(draw(st.none() | st.integers(min_value=fine, max_value=20_000))
                  for _ in buckets)
    retain = draw(st.integers(min_value=fine, max_value=50_000))
    return LevelPolicy(levels_ns=tuple(b * S for b in buckets),
                       level_keep_ns=tuple(None if k is None else k * S for k in keeps),
                       fine_window_ns=fine * S, retain_ns=retain * S,
                       full_every_ns=draw(st.sampled_from([0, 300, 3600, 86400])) * S,
                       full_fraction=draw(st.sampled_from([0.0, 0.5, 2.0])))


STEP = st.tuples(st.integers(min_value=0, max_value=90),    # seconds to the next step
                 st.integers(min_value=0, max_value=3),     # commits since the last step
                 st.integers(min_value=1, max_value=5000),  # size of the image taken
                 st.sampled_from(["repository", "database"]),  # where a due full comes from
                 st.booleans(),                             # compaction runs (not killed)?
                 st.booleans())                             # retention runs now?


def _record(seq: int, when: int, base: ImageRecord | None, size: int) -> ImageRecord:
    bid = uuid.uuid4()
    return ImageRecord(bid, bid, DB, "full" if base is None else "layer",
                       None if base is None else base.image_id,
                       0 if base is None else base.vp_seq, seq, when, when, size, when)


def compact(index: Index, policy: LevelPolicy) -> tuple[Index, int]:
    """Apply the compaction plan as the replicator does (oldest first, one merge at a
    time); returns the new index and the merges made. Checks each merge is possible."""
    plan = plan_compaction(index, everything, policy)
    ids = [bid for bid, _ in plan]
    assert len(ids) == len(set(ids)) and ids == sorted(
        ids, key=lambda i: order(index.records[i]))
    for bid, onto in plan:
        record = index.records[bid]
        chain = index.chain(record)
        position = [c.backup_id for c in chain].index(onto)  # onto is in its chain now
        assert position < len(chain) - 2  # a real merge: not onto itself nor its own base
        merged = sum(c.size for c in chain[position + 1:])
        index = index.with_record(replace(record, base_image_id=chain[position].image_id,
                                          base_vp_seq=chain[position].vp_seq, size=merged))
    assert plan_compaction(index, everything, policy) == []  # idempotent
    return index, len(plan)


def check_restorable(index: Index) -> None:
    for r in index.records.values():
        chain = index.chain(r)  # raises if a kept point lost an image it needs
        assert not chain[0].is_layer and chain[-1] is r
        covered = 0
        for image in chain:
            assert image.base_vp_seq == covered  # no gap, no overlap: exactly 1..vp_seq
            covered = image.vp_seq
        assert covered == r.vp_seq
    times = [r.vp_wall_ns for r in sorted(index.records.values(), key=order)]
    assert times == sorted(times)


def check_bounds(index: Index, policy: LevelPolicy) -> None:
    """The chain bounds of a compacted repository (see the module doc of levels)."""
    points = points_of(index, everything)
    levels = point_levels(points, policy)
    fine = policy.levels_ns[0]
    k = len(policy.levels_ns)
    for i, r in enumerate(points):
        chain = index.chain(r)
        level = levels[r.backup_id]
        if not r.is_layer:
            assert len(chain) == 1
        elif level >= 1:
            assert len(chain) <= k - level + 2 == policy.chain_bound(level), (level, chain)
        else:
            before = sum(1 for p in points[:i] if p.vp_wall_ns // fine == r.vp_wall_ns // fine)
            assert len(chain) <= before + k + 2 == policy.chain_bound(0, before)
        # levels strictly rise down a compacted chain (below the point's finest bucket)
        below = [levels[c.backup_id] for c in chain[1:-1] if c.is_layer
                 and c.vp_wall_ns // fine != r.vp_wall_ns // fine]
        assert below == sorted(below, reverse=True)


@settings(max_examples=200, deadline=None)
@given(policies(), st.lists(STEP, min_size=1, max_size=80))
def test_replication_with_compaction_keeps_every_point_it_must(
        policy: LevelPolicy, steps: list[tuple[int, int, int, str, bool, bool]]) -> None:
    index = Index([])
    now, seq = 1_700_000_000 * S, 0
    newest: ImageRecord | None = None
    for gap, commits, size, full_from, compaction, retention in steps:
        now += gap * S
        seq += commits
        if commits and (newest is None or newest.vp_seq < seq):
            base = choose_base(index, everything)
            assert base is newest or (base is not None and newest is not None
                                      and base.backup_id == newest.backup_id)
            due = full_due(index, base, now, policy)
            if base is None or (due is not None and full_from == "database"):
                point = _record(seq, now, None, size * 4)
            else:
                point = _record(seq, now, base, size)  # what changed since the newest point
                if due is not None:  # merged into a synthetic full, same id
                    point = replace(point, kind="full", base_image_id=None, base_vp_seq=0,
                                    synthetic=True, size=size * 4)
            index = index.with_record(point)
            newest = point
        if compaction:  # after the point is published (a kill may come in between)
            index, _ = compact(index, policy)
        if retention:
            points = points_of(index, everything)
            levels = point_levels(points, policy)
            plan = plan_retention(index, DB, now, policy)
            assert plan.refused is None
            doomed = set(plan.delete)
            for r in index.records.values():  # what Repository.forget checks
                if r.backup_id not in doomed:
                    assert not doomed & {c.backup_id for c in index.chain(r)}
            for r in points:
                if r.backup_id in doomed:
                    assert newest is not None and r.backup_id != newest.backup_id
                    window = policy.window(levels[r.backup_id]) if r.is_layer \
                        else policy.retain_ns
                    assert now - r.vp_wall_ns > window
            index = Index([r for r in index.records.values() if r.backup_id not in doomed])
        check_restorable(index)
        if not plan_compaction(index, everything, policy):
            check_bounds(index, policy)
    index, _ = compact(index, policy)  # a replicator started again compacts every end
    check_restorable(index)
    check_bounds(index, policy)


@settings(max_examples=60, deadline=None)
@given(policies(), st.integers(min_value=2, max_value=300), st.integers(0, 3))
def test_a_steady_writer_reads_at_most_the_bound(policy: LevelPolicy, n: int,
                                                 per_point: int) -> None:
    """One point a second for ``n`` seconds, compacted after each: every point's chain is
    within its bound, each point merges each level at most once, and the points of the
    last fine window are all there after retention."""
    index = Index([])
    now = 1_700_000_000 * S
    merges = 0
    for seq in range(1, n + 1):
        now += S
        base = choose_base(index, everything)
        index = index.with_record(_record(seq, now, base, 10))
        index, made = compact(index, policy)
        assert made <= 1  # only the previous point closed
        merges += made
        plan = plan_retention(index, DB, now, policy)
        index = Index([r for r in index.records.values() if r.backup_id not in plan.delete])
        check_bounds(index, policy)
    check_restorable(index)
    fine = policy.levels_ns[0] // S
    assert merges <= n // fine + 1  # one merge per closed finest bucket
    window = policy.window(0)
    recent = {r.vp_seq for r in index.records.values() if now - r.vp_wall_ns <= window}
    assert recent == {s for s in range(1, n + 1) if (n - s) * S <= window}


def test_an_outage_leaves_uncompacted_ends_that_one_pass_compacts() -> None:
    """Ten minutes of one-second points never compacted (the replicator was killed after
    each publish): one pass compacts every closed bucket, and a second does nothing."""
    policy = LevelPolicy(levels_ns=(10 * S, 60 * S), level_keep_ns=(None, None))
    index = Index([])
    now = 1_700_000_000 * S
    for seq in range(1, 601):
        now += S
        index = index.with_record(_record(seq, now, choose_base(index, everything), 10))
    assert max(len(index.chain(r)) for r in index.records.values()) == 600
    index, made = compact(index, policy)
    assert made == 60  # the last point of every closed 10 s bucket
    check_bounds(index, policy)
    assert max(len(index.chain(r)) for r in index.records.values()) \
        == policy.chain_bound(0, 8) == 8 + 2 + 2  # tight: 9 fine points, 2 anchors, F
    assert compact(index, policy)[1] == 0
