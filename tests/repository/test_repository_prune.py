"""Prune: restic-like policies on VP time, chains never broken, merges where they free a
full image, and a plan that a re-run (after a crash) completes with the same result."""

from __future__ import annotations

import datetime as dt
import random
import tempfile
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from lamina.repository.index import ImageRecord, Index
from lamina.repository.prune import plan_prune
from support.rawstore import RawStore
from support.s3fixtures import BUCKET
from support.s3server import S3Server

from .helpers import DAY_NS, content, make_db, vp_clock

T0 = 1_700_000_000 * 10**9

# ---------------------------------------------------------------- reference policy


def reference_keep(records: list[ImageRecord], policy: KeepPolicy) -> set[uuid.UUID]:
    """Independent restic-like selection, written plainly for the tests."""
    kept: set[uuid.UUID] = set()
    for db in {r.database_id for r in records}:
        mine = sorted((r for r in records if r.database_id == db),
                      key=lambda r: (r.vp_wall_ns, r.vp_seq, str(r.backup_id)), reverse=True)
        kept.update(r.backup_id for r in mine[:policy.last])
        for count, bucket in ((policy.daily, "%Y-%m-%d"), (policy.weekly, "%G-%V")):
            seen: list[str] = []
            for r in mine:
                b = dt.datetime.fromtimestamp(r.vp_wall_ns / 1e9, tz=dt.UTC).strftime(bucket)
                if b not in seen and len(seen) < count:
                    seen.append(b)
                    kept.add(r.backup_id)
    return kept


policies = st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 3)).filter(
    any).map(lambda t: KeepPolicy(last=t[0], daily=t[1], weekly=t[2]))
#: (database 0/1, take a layer?, hours since the previous backup)
steps = st.lists(st.tuples(st.integers(0, 1), st.booleans(), st.integers(1, 60)),
                 min_size=1, max_size=14)


def synthetic_records(plan: list[tuple[int, bool, int]]) -> list[ImageRecord]:
    """Records as backups of two databases would make them (layers on the newest)."""
    dbs = [uuid.uuid4(), uuid.uuid4()]
    newest: dict[int, ImageRecord] = {}
    seq = [0, 0]
    now = T0
    out = []
    for db, layer, hours in plan:
        now += hours * 3600 * 10**9
        seq[db] += 5
        bid = uuid.uuid4()
        base = newest.get(db) if layer else None
        r = ImageRecord(bid, bid, dbs[db], "layer" if base else "full",
                        None if base is None else base.image_id,
                        0 if base is None else base.vp_seq, seq[db], now, now,
                        100 if base else 1000, 1)
        newest[db] = r
        out.append(r)
    return out


def apply(index: Index, policy: KeepPolicy) -> Index:
    """What executing the plan makes of the index (merged layers become fulls)."""
    plan = plan_prune(index, policy)
    records = []
    for r in index.records.values():
        if r.backup_id in plan.delete:
            continue
        if r.backup_id in {m.backup_id for m in plan.merges}:
            # The synthetic full keeps the backup's image id, so layers on it still link.
            r = ImageRecord(r.backup_id, r.image_id, r.database_id, "full", None, 0,
                            r.vp_seq, r.vp_wall_ns, r.created_ns, 1000, 2)
        records.append(r)
    return Index(records)


@settings(max_examples=300)
@given(plan=steps, policy=policies)
def test_plan_keeps_every_chain_and_only_what_is_needed(plan: list[tuple[int, bool, int]],
                                                        policy: KeepPolicy) -> None:
    records = synthetic_records(plan)
    index = Index(records)
    p = plan_prune(index, policy)
    keep = reference_keep(records, policy)
    assert set(p.keep) == keep
    merged = {m.backup_id for m in p.merges}
    assert merged <= keep
    for m in p.merges:  # a merge is a kept layer with only unkept ancestors ...
        chain = [r.backup_id for r in index.chain(index.records[m.backup_id])]
        assert list(m.chain) == chain and len(chain) > 1
        assert not set(chain[:-1]) & keep
        assert chain[0] in p.delete  # ... and it frees the chain's full image
    after = apply(index, policy)
    survivors = set(after.records)
    assert survivors == p.needed and not survivors & set(p.delete)
    # Every kept backup still resolves; every survivor is kept or in a kept chain.
    in_chains: set[uuid.UUID] = set()
    for k in keep:
        chain = after.chain(after.records[k])
        in_chains.update(r.backup_id for r in chain)
    assert in_chains == survivors
    # Deletions go newest first, so no listed layer ever loses its base mid-way.
    order = [index.records[i].vp_seq for i in p.delete]
    dbs = {index.records[i].database_id for i in p.delete}
    for db in dbs:
        mine = [index.records[i].vp_seq for i in p.delete if index.records[i].database_id == db]
        assert mine == sorted(mine, reverse=True)
    assert len(order) == len(p.delete)
    # A re-run (after a crash, or just again) keeps the same and has nothing left to do.
    again = plan_prune(after, policy)
    assert set(again.keep) == keep and not again.merges and not again.delete


def test_merge_only_when_it_frees_a_full() -> None:
    # F L1 L2 L3, keep L3 only: merge L3 (F, L1, L2 go).
    records = synthetic_records([(0, False, 1), (0, True, 1), (0, True, 1), (0, True, 1)])
    index = Index(records)
    p = plan_prune(index, KeepPolicy(last=1))
    assert [m.backup_id for m in p.merges] == [records[3].backup_id]
    assert set(p.delete) == {r.backup_id for r in records[:3]}
    # Keep L2 and L3 (last 2): L2 becomes a synthetic full under its own image id, L3
    # stays a layer on it, and F and L1 go.
    p = plan_prune(index, KeepPolicy(last=2))
    assert [m.backup_id for m in p.merges] == [records[2].backup_id]
    assert set(p.delete) == {records[0].backup_id, records[1].backup_id}
    after = apply(index, KeepPolicy(last=2))
    assert [r.backup_id for r in after.chain(after.records[records[3].backup_id])] == [
        records[2].backup_id, records[3].backup_id]
    # Keep F (weekly: the only week's newest is L3, so use last=4): nothing to merge.
    p = plan_prune(index, KeepPolicy(last=4))
    assert not p.merges and not p.delete


# ---------------------------------------------------------------- real images


real_plans = st.lists(st.tuples(st.booleans(), st.integers(1, 50)), min_size=1, max_size=7)


def _prune_real(url: str, root: Path, plan: list[tuple[bool, int]], policy: KeepPolicy,
                data: st.DataObject) -> None:
    """Random backups (VP times spread over days) into the repository at ``url`` and a
    random policy: after prune every kept backup verifies (a sampled one restores exactly),
    and only unneeded images went."""
    repo = Repository.init(url, chain_limit=3)
    states: dict[uuid.UUID, dict[bytes, bytes]] = {}
    with make_db(root / "db") as db, vp_clock(T0) as clock:
        for i, (full, hours) in enumerate(plan):
            clock.now_ns += hours * 3600 * 10**9
            db.put("t", b"k%d" % (i % 3), b"v%d" % i)
            result = repo.backup(db, full=full)
            with db.read() as txn:
                states[result.backup_id] = dict(txn.table("t").items())
    entries, _ = repo.list()
    records = [e.record for e in entries]
    keep = reference_keep(records, policy)
    result = repo.prune(policy)
    assert set(result.plan.keep) == keep
    after, rebuilt = repo.list()
    assert rebuilt is None
    present = {e.record.backup_id for e in after}
    assert present == result.plan.needed and keep <= present
    assert not present & set(result.plan.done_deletes)
    # What is stored (listed around Lamina) is exactly what the index lists.
    assert {L.image_key(i) for i in present} == set(RawStore(url).names(L.IMAGES_PREFIX))
    for e in after:
        assert e.chain is not None, e.problem
    for k in keep:
        assert repo.verify(str(k)).ok
    sample = data.draw(st.sampled_from(sorted(keep, key=str)))
    repo.restore(root / "out", id=str(sample))
    assert content(root / "out") == states[sample]
    # Nothing left to do on a second run.
    again = repo.prune(policy)
    assert not again.plan.delete and not again.plan.merges


@settings(max_examples=25, deadline=None)
@given(plan=real_plans, policy=policies, data=st.data())
def test_prune_real_repository(plan: list[tuple[bool, int]], policy: KeepPolicy,
                               data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _prune_real(str(Path(tmp) / "repo"), Path(tmp), plan, policy, data)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(plan=real_plans, policy=policies, data=st.data())
def test_prune_real_repository_on_s3(s3_server: S3Server, plan: list[tuple[bool, int]],
                                     policy: KeepPolicy, data: st.DataObject) -> None:
    """The same on S3 (fewer examples, derandomized: each is a few dozen requests); a
    fresh prefix per example."""
    with tempfile.TemporaryDirectory() as tmp:
        _prune_real(f"s3://{BUCKET}/prune-real-{uuid.uuid4().hex[:12]}", Path(tmp), plan,
                    policy, data)


def test_keep_daily_and_weekly_on_vp_time(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    ids = []
    midnight = 1_699_920_000 * 10**9  # 2023-11-14T00:00:00Z
    with make_db(tmp_path / "db") as db, vp_clock(midnight) as clock:
        for day in range(10):  # two backups a day, 10 days
            for hour in (1, 20):
                clock.now_ns = midnight + day * DAY_NS + hour * 3600 * 10**9
                db.put("t", b"x", b"%d-%d" % (day, hour))
                ids.append(repo.backup(db, full=True).backup_id)
    dry = repo.prune(KeepPolicy(daily=3), dry_run=True)
    assert set(dry.plan.keep) == {ids[-1], ids[-3], ids[-5]}
    assert len(repo.list()[0]) == 20  # a dry run changes nothing
    result = repo.prune(KeepPolicy(daily=3, weekly=2))
    kept = set(result.plan.keep)
    assert {ids[-1], ids[-3], ids[-5]} <= kept
    present = {e.record.backup_id for e in repo.list()[0]}
    assert present == kept and len(present) in (4, 5)


def test_prune_json_cli(repo_url: str, tmp_path: Path) -> None:
    from support import cli
    repo = Repository.init(repo_url)
    with make_db(tmp_path / "db") as db:
        ids = [str(repo.backup(db, full=True).backup_id) for _ in range(3)]
    import json
    proc = cli.run("prune", "--repo", repo.url, "--keep-last", "1", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] and [d["backup_id"] for d in report["delete"]] == ids[1::-1]
    assert len(repo.storage.list(L.IMAGES_PREFIX)) == 3
    proc = cli.run("prune", "--repo", repo.url, "--keep-last", "1")
    assert proc.returncode == 0 and "2 deletion(s)" in proc.stdout, proc.stdout
    assert [s.key for s in repo.storage.list(L.IMAGES_PREFIX)] == [L.image_key(ids[2])]
    _ = random  # (random is used by the crash tests' seeds)
