"""Levels and retention against a model (hypothesis): a replicator's decisions replayed on
synthetic repositories, with time jumps, fulls (taken or merged in the repository) and
retention runs at random moments.

Invariants after every step: every point in the repository restores (its chain resolves
and covers commits 1..its VP seq without a gap: each image's base seq is the previous
image's VP seq); no chain is longer than ``2 + len(levels)`` images; a point younger
than the finest window, and the newest point, are never deleted; retention never asks
``forget`` to delete what a remaining point needs; points are in time order.
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
    plan_retention,
)

S = 10**9
DB = uuid.UUID(int=7)


@st.composite
def policies(draw: st.DrawFn) -> LevelPolicy:
    n = draw(st.integers(min_value=1, max_value=3))
    buckets = sorted(draw(st.sets(st.integers(min_value=2, max_value=4000), min_size=n,
                                  max_size=n)))
    fine = draw(st.integers(min_value=0, max_value=600))
    keeps = tuple(draw(st.none() | st.integers(min_value=fine, max_value=20_000))
                  for _ in buckets)
    retain = draw(st.integers(min_value=fine, max_value=50_000))
    return LevelPolicy(levels_ns=tuple(b * S for b in buckets),
                       level_keep_ns=tuple(None if k is None else k * S for k in keeps),
                       fine_window_ns=fine * S, retain_ns=retain * S,
                       full_every_ns=draw(st.sampled_from([0, 300, 3600, 86400])) * S,
                       full_fraction=draw(st.sampled_from([0.0, 0.5, 2.0])))


STEP = st.tuples(st.integers(min_value=0, max_value=900),   # seconds to the next step
                 st.integers(min_value=0, max_value=3),     # commits since the last step
                 st.integers(min_value=1, max_value=5000),  # size of the image taken
                 st.booleans(),                             # a due full merged in the repo?
                 st.booleans())                             # retention runs now?


def _record(seq: int, when: int, base: ImageRecord | None, size: int) -> ImageRecord:
    bid = uuid.uuid4()
    return ImageRecord(bid, bid, DB, "full" if base is None else "layer",
                       None if base is None else base.image_id,
                       0 if base is None else base.vp_seq, seq, when, when, size, when)


def _check(index: Index, policy: LevelPolicy) -> None:
    for r in index.records.values():
        chain = index.chain(r)  # raises if a kept point lost an image it needs
        assert len(chain) <= policy.max_chain, (len(chain), policy)
        assert not chain[0].is_layer and chain[-1] is r
        covered = 0
        for image in chain:
            assert image.base_vp_seq == covered  # no gap, no overlap: exactly 1..vp_seq
            covered = image.vp_seq
        assert covered == r.vp_seq


@settings(max_examples=150, deadline=None)
@given(policies(), st.lists(STEP, min_size=1, max_size=80))
def test_replication_keeps_every_point_it_must(policy: LevelPolicy,
                                               steps: list[tuple[int, int, int, bool,
                                                                 bool]]) -> None:
    index = Index([])
    now, seq = 1_700_000_000 * S, 0
    newest: ImageRecord | None = None
    for gap, commits, size, merge, retention in steps:
        now += gap * S
        seq += commits
        if commits and (newest is None or newest.vp_seq < seq):
            base = choose_base(index, lambda r: True, now, policy)
            due = full_due(index, base, now, policy)
            if base is None:
                point = _record(seq, now, None, size)
            else:
                point = _record(seq, now, base, size)
                if due is not None and merge:  # merged into a synthetic full, same id
                    point = replace(point, kind="full", base_image_id=None, base_vp_seq=0,
                                    synthetic=True, size=size * 4)
            index = index.with_record(point)
            newest = point
        if retention:
            plan = plan_retention(index, DB, now, policy)
            assert plan.refused is None
            doomed = set(plan.delete)
            for r in index.records.values():  # what Repository.forget checks
                if r.backup_id not in doomed:
                    assert not doomed & {c.backup_id for c in index.chain(r)}
            for r in index.records.values():
                age = now - r.vp_wall_ns
                if r.backup_id in doomed:
                    assert newest is not None and r.backup_id != newest.backup_id
                    assert age > policy.fine_window_ns or age > policy.retain_ns
            index = Index([r for r in index.records.values() if r.backup_id not in doomed])
        _check(index, policy)
        times = [r.vp_wall_ns for r in sorted(index.records.values(), key=order)]
        assert times == sorted(times)


@settings(max_examples=50, deadline=None)
@given(policies(), st.integers(min_value=2, max_value=200))
def test_a_steady_writer_reads_at_most_the_bound(policy: LevelPolicy, n: int) -> None:
    """One point per second for ``n`` seconds: the bound holds for every point, and the
    finest points of the last window are all there after retention."""
    index = Index([])
    now = 1_700_000_000 * S
    for seq in range(1, n + 1):
        now += S
        base = choose_base(index, lambda r: True, now, policy)
        index = index.with_record(_record(seq, now, base, 10))
        plan = plan_retention(index, DB, now, policy)
        index = Index([r for r in index.records.values() if r.backup_id not in plan.delete])
    _check(index, policy)
    recent = {r.vp_seq for r in index.records.values()
              if now - r.vp_wall_ns <= min(policy.fine_window_ns, policy.retain_ns)}
    assert recent == {s for s in range(1, n + 1)
                      if (n - s) * S <= min(policy.fine_window_ns, policy.retain_ns)}
