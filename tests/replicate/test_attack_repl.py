"""Attacks on continuous replication (issue 14's adversarial review): hand-made backups in
the middle of a replicated chain, two replicators at once, clocks stepping back, crafted
merged layers."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina import workload
from lamina.repository import Repository
from lamina.repository.levels import LevelPolicy
from lamina.repository.points import list_points
from lamina.repository.replicate import ReplicateOptions, Replicator
from support import cli

from .helpers import S, check_compacted, index_of, prove_every_point, vp_clock, workload_db
from .test_replicate_processes import GUARD, _replicator, wait_for_status

T0 = 1_800_000_000 * S
POLICY = LevelPolicy(levels_ns=(10 * S, 60 * S), level_keep_ns=(300 * S, None),
                     fine_window_ns=30 * S, retain_ns=3600 * S, full_every_ns=0,
                     full_fraction=0)


def test_an_at_end_backup_by_hand_does_not_stop_compaction(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for _ in range(5):
            wl.commit(1)
            clock.now_ns += 2 * S
            rep.step()
        wl.commit(1)
        clock.now_ns += 1 * S
        repo.backup(wl.db, vp="end")  # by hand, into the replicated chain
        for _ in range(40):
            wl.commit(1)
            clock.now_ns += 2 * S
            rep.step()  # must not raise forever
        check_compacted(repo, POLICY)
    assert rep.status.fulls_merged >= 1  # the at-end layer's point became a full
    prove_every_point(repo, wl.log_path, tmp_path / "out")
    assert repo.verify().ok



def test_a_second_replicator_of_one_database_into_one_repository_is_refused(
        tmp_path: Path) -> None:
    """Two replicators of one database into one repository took points at the same VP on
    the same base (duplicate points, forked chains): the second is refused at once (exit 8,
    one line naming the first), the first goes on; once the first is killed with SIGKILL a
    new one starts (the kernel released the lock); another repository is not locked."""
    db, log = tmp_path / "db", tmp_path / "wl.log"
    repo_url, other = str(tmp_path / "repo"), str(tmp_path / "other")
    cli.run_ok("repo", "init", repo_url)
    cli.run_ok("repo", "init", other)
    cli.run_ok("workload", str(db), "--steps", "20", "--log", str(log))
    first = _replicator(db, repo_url, tmp_path / "s1.json")
    procs = [first]
    try:
        wait_for_status(first, tmp_path / "s1.json", lambda s: s["points"] >= 1)
        second = cli.run("replicate", str(db), "--repo", repo_url, "--interval", "100ms",
                         "--json")
        assert second.returncode == 8, second.stderr
        error = json.loads(second.stderr)
        assert error["error"] == "LockedError" and f"process {first.pid}" in error["message"]
        assert len(second.stderr.strip().splitlines()) == 1
        elsewhere = _replicator(db, other, tmp_path / "s3.json")
        procs.append(elsewhere)
        wait_for_status(elsewhere, tmp_path / "s3.json", lambda s: s["points"] >= 1)
        assert first.poll() is None
        first.kill()
        first.communicate(timeout=GUARD)
        third = _replicator(db, repo_url, tmp_path / "s2.json")
        procs.append(third)
        cli.run_ok("workload", str(db), "--steps", "5", "--log", str(tmp_path / "more.log"))
        wait_for_status(third, tmp_path / "s2.json", lambda s: s["points"] >= 1
                        and s["last_vp_seq"] == s["commit_seq"] and s["state"] == "idle")
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)
            _o, err = proc.communicate(timeout=GUARD)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    listed = json.loads(cli.run_ok("list", "--repo", repo_url, "--points",
                                   "--json").stdout)["points"]
    seqs = [p["vp_seq"] for p in listed]
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)
    assert cli.run("verify", "--repo", repo_url).returncode == 0


def _snapshot(db: lamina.Database) -> dict[str, tuple[str, list[tuple[Any, bytes]]]]:
    """Every table's engine and contents (btree items, archive rows)."""
    out: dict[str, tuple[str, list[tuple[Any, bytes]]]] = {}
    for t in db.tables():
        if t.engine == "btree":
            with db.read() as r:
                out[t.name] = ("btree", list(r.table(t.name).items()))
        else:
            out[t.name] = ("archive", list(db.scan(t.name)))
    return out


def _ddl_round(db: lamina.Database, rng: random.Random, n: int) -> None:
    """One round of changes: puts (some overflow values), deletes, appends, and now and
    then a table dropped, recreated (under the same name, maybe the other engine),
    an archive optimized."""
    names = {t.name: t.engine for t in db.tables()}
    op = rng.choice(["data", "data", "data", "drop", "recreate", "optimize", "create"])
    if op == "drop" and names:
        db.drop_table(rng.choice(sorted(names)))
    elif op == "recreate" and names:
        name = rng.choice(sorted(names))
        db.drop_table(name)
        db.create_table(name, rng.choice(["btree", "archive"]))
    elif op == "optimize" and any(e == "archive" for e in names.values()):
        db.archive(rng.choice(sorted(k for k, e in names.items() if e == "archive"))
                   ).optimize()
    elif op == "create" or not names:
        db.create_table(f"t{n}", rng.choice(["btree", "archive"]))
    for name, engine in {t.name: t.engine for t in db.tables()}.items():
        for _ in range(rng.randint(0, 4)):
            if engine == "btree":
                key = f"k{rng.randint(0, 40)}".encode()
                if rng.random() < 0.2:
                    db.delete(name, key)
                else:
                    size = rng.choice([8, 100, 9000])  # 9000: an overflow value
                    db.put(name, key, rng.randbytes(size))
            else:
                db.append_many(name, [rng.randbytes(rng.choice([5, 300]))
                                      for _ in range(rng.randint(1, 30))])


@pytest.mark.parametrize("encrypted", [False, True])
def test_tables_dropped_recreated_optimized_mid_replication(tmp_path: Path,
                                                            encrypted: bool) -> None:
    """DDL between points (drop, recreate under the same name with either engine, create,
    archive optimize), overflow values, deletes, on a plain and on an encrypted repository:
    after compaction merged segments across those changes, every point restores to exactly
    the database's state at its VP."""
    pw = b"attack" if encrypted else None
    repo = Repository.init(tmp_path / "repo", passphrase=pw)
    if encrypted:
        repo = Repository.open(tmp_path / "repo", passphrase=lambda: b"attack")
    rng = random.Random(1414)
    states: dict[int, dict[str, Any]] = {}
    with vp_clock(T0) as clock, lamina.open(tmp_path / "db") as db:
        rep = Replicator(db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for n in range(60):
            _ddl_round(db, rng, n)
            clock.now_ns += rng.choice([1, 2, 3, 5]) * S
            rep.step()
            states[db.lockfile.commit_seq()] = _snapshot(db)
        assert rep.status.compactions > 5
        check_compacted(repo, POLICY)
    points, _ = list_points(repo)
    assert len(points) > 10
    for i, p in enumerate(points):
        dest = tmp_path / f"r{i}"
        repo.restore(dest, id=str(p.backup_id))
        with lamina.open(dest, create=False, readonly=True) as restored:
            assert _snapshot(restored) == states[p.vp_seq], (i, p.vp_seq)
    assert repo.verify().ok


def test_a_damaged_image_in_the_chain_does_not_poison_every_later_point(
        tmp_path: Path) -> None:
    """A layer of the newest chain damaged in the repository (one byte of a chunk): every
    step failed (backing off to a minute between points) and every later point was a layer
    on the damaged chain, so none of them restored. Now the merge that meets the damage is
    reported, the loop goes on at its interval, the next point is a full from the
    database, and every point from it on restores exactly; the damaged image is kept."""
    repo = Repository.init(tmp_path / "repo")
    events: list[dict[str, Any]] = []
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns, on_event=events.append)
        for _ in range(12):
            wl.commit(3)
            clock.now_ns += 2 * S
            rep.step()
        index = index_of(repo)
        newest = max(index.records.values(), key=lambda r: r.vp_seq)
        victim = index.chain(newest)[1]
        path = tmp_path / "repo" / "images" / f"{victim.backup_id}.lamina"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        damaged_at = wl.db.lockfile.commit_seq()
        for _ in range(30):
            wl.commit(3)
            clock.now_ns += 2 * S
            assert rep.step()  # no step fails: the RPO does not back off
        assert rep.status.errors >= 1 and "CorruptionError" in str(rep.status.last_error)
        assert any(e["event"] == "error" for e in events)
        heal = [e for e in events if e["event"] == "full" and e["vp_seq"] > damaged_at]
        assert heal and "damaged" in heal[0]["reason"]
        index = index_of(repo)
        assert victim.backup_id in index.records  # kept for repair
        newest = max(index.records.values(), key=lambda r: r.vp_seq)
        assert victim.backup_id not in {r.backup_id for r in index.chain(newest)}
        assert len(index.chain(newest)) <= POLICY.chain_bound(0, 4)
    points, _ = list_points(repo)
    after = [p for p in points if p.vp_seq >= heal[0]["vp_seq"]]
    assert len(after) >= 10
    for i, p in enumerate(after):
        dest = tmp_path / f"r{i}"
        repo.restore(dest, id=str(p.backup_id))
        with lamina.open(dest, create=False, readonly=True) as restored:
            assert workload.verify(restored, wl.log_path, p.vp_seq)["at_seq"] == p.vp_seq


def test_a_merged_layer_merged_again_onto_a_coarser_anchor(repo_url: str,
                                                           tmp_path: Path) -> None:
    """A layer merged onto an ancestor, then merged again onto an older one (what a
    promotion by retention does), then an uncompacted layer on it merged across it: every
    step restores the same point, exactly."""
    repo = Repository.init(repo_url)
    ids = []
    with workload_db(tmp_path) as wl:
        ids.append(str(repo.backup(wl.db, full=True).backup_id))
        for _ in range(6):
            wl.commit(4)
            ids.append(str(repo.backup(wl.db, base=ids[-1]).backup_id))
        seqs = {i: index_of(repo).find(i).vp_seq for i in ids}

        def proven(point: str, name: str, images: int) -> None:
            result = repo.restore(tmp_path / name, id=point)
            assert len(result.chain) == images
            with lamina.open(tmp_path / name, create=False, readonly=True) as restored:
                assert workload.verify(restored, wl.log_path, seqs[point])["at_seq"] \
                    == seqs[point]

        repo.merge_layers(ids[4], ids[2])  # F 1 2 [3 4] 5 6
        proven(ids[4], "a", 4)
        repo.merge_layers(ids[4], ids[0])  # again, across its own merged layer: F [1 2 4]
        proven(ids[4], "b", 2)
        proven(ids[6], "c", 4)
        repo.merge_layers(ids[6], ids[0])  # across 4 (merged twice) and 5: F [4 5 6]
        proven(ids[6], "d", 2)
        proven(ids[5], "e", 3)  # F 4 5
    assert repo.verify().ok


@pytest.mark.parametrize("seed", [3, 14])
def test_wall_clock_jumps_back_and_forth(tmp_path: Path, seed: int) -> None:
    """VP times that step back (up to two minutes) and forward (up to an hour) between
    points, with retention on: every step succeeds, compaction ends with nothing left to
    plan (it does not ping-pong), every point restores exactly and the repository
    verifies."""
    from lamina.repository.levels import plan_compaction

    repo = Repository.init(tmp_path / "repo")
    rng = random.Random(seed)
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for _ in range(60):
            wl.commit(rng.choice([1, 2, 3]))
            jump = rng.choice([1, 2, 3, 5, 5, -7, -30, -120, 65, 3600])
            clock.now_ns += jump * S
            rep.step()
        rep.step()
        assert plan_compaction(index_of(repo), lambda r: True, POLICY) == []
        assert rep.status.errors == 0
    points, _ = list_points(repo)
    for i, p in enumerate(points):
        repo.restore(tmp_path / f"r{i}", id=str(p.backup_id))
        with lamina.open(tmp_path / f"r{i}", create=False, readonly=True) as restored:
            assert workload.verify(restored, wl.log_path, p.vp_seq)["at_seq"] == p.vp_seq
    assert repo.verify().ok


class RacedRepository(Repository):
    """A repository where, just before the first compaction merge, another process made
    the point a synthetic full (what a concurrent ``lamina prune`` may do)."""

    raced = 0

    def merge_layers(self, backup_id, onto, *, cancel=None):  # type: ignore[no-untyped-def]
        if not RacedRepository.raced:
            RacedRepository.raced += 1
            self.merge_to_full(str(backup_id))
        return super().merge_layers(backup_id, onto, cancel=cancel)


def test_a_point_changed_under_the_plan_is_not_taken_for_damage(tmp_path: Path) -> None:
    """The plan is made from an index read before the merge's lock: a point made a full
    meanwhile fails its merge (ChainError) without any damage: no error, no full taken from
    the database, compaction goes on."""
    Repository.init(tmp_path / "repo")
    repo = RacedRepository.open(tmp_path / "repo")
    events: list[dict[str, Any]] = []
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns, on_event=events.append)
        for _ in range(30):
            wl.commit(2)
            clock.now_ns += 2 * S
            rep.step()
        assert RacedRepository.raced == 1
        assert rep.status.errors == 0, rep.status.last_error
        assert len([e for e in events if e["event"] == "full"]) == 1  # the first only
        check_compacted(repo, POLICY)
    prove_every_point(repo, wl.log_path, tmp_path / "out", limit=6)


def test_hand_made_backups_prune_and_restore_beside_a_running_replicator(
        repo_url: str, tmp_path: Path) -> None:
    """Real processes: a writer and ``lamina replicate``; meanwhile, by hand, an ``--vp
    end`` backup and a plain one into the same repository, a ``lamina prune
    --keep-last 6`` and a ``restore --at now``. The replicator keeps replicating and
    compacting (it does not end up failing every step), and afterwards every listed point
    restores exactly, no VP twice, the repository verifies."""
    from support.workload_log import logged, wait_for_workload

    from .test_replicate_processes import Events

    db, log, status = tmp_path / "db", tmp_path / "wl.log", tmp_path / "s.json"
    cli.run_ok("repo", "init", repo_url)
    writer = cli.start("workload", str(db), "--seconds", "600", "--rate", "200",
                       "--log", str(log))
    rep = None
    try:
        wait_for_workload(writer, log, commits=5)
        rep = _replicator(db, repo_url, status)
        events = Events(rep)
        events.wait(3, "point", "full")
        cli.run_ok("backup", str(db), "--repo", repo_url, "--vp", "end")
        events.wait(events.count("point") + 3, "point")
        cli.run_ok("backup", str(db), "--repo", repo_url)
        events.wait(events.count("compact", "merge") + 3, "compact", "merge")
        pruned = cli.run("prune", "--repo", repo_url, "--keep-last", "6")
        assert pruned.returncode == 0, pruned.stderr
        events.wait(events.count("compact", "merge") + 3, "compact", "merge")
        restored = cli.run("restore", "--repo", repo_url, "--at", "now",
                           "--to", str(tmp_path / "now"))
        assert restored.returncode == 0, restored.stderr
        writer.send_signal(signal.SIGTERM)
        _o, err = writer.communicate(timeout=GUARD)
        assert writer.returncode == 10, err
        _, last_seq = logged(log)
        wait_for_status(rep, status, lambda s: s["last_vp_seq"] == last_seq
                        and s["consecutive_errors"] == 0 and s["state"] == "idle")
        rep.send_signal(signal.SIGTERM)
        out = events.finish()
        _o, err = rep.communicate(timeout=GUARD)
        assert rep.returncode == 0, err
    finally:
        for proc in (writer, rep):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    lines = [json.loads(x) for x in out.splitlines()]
    errors = [e for e in lines if e["event"] == "error"]
    assert len(errors) <= 2, errors  # at most a race with the prune
    # a compaction meeting the at-end layer makes its point a full (no error); whether one
    # does depends on the moments (the in-process test above makes it happen)
    assert not [e for e in errors if e["error"] == "UnsupportedError"]
    assert cli.run("verify", "--repo", repo_url).returncode == 0
    repo = Repository.open(repo_url)
    prove_every_point(repo, log, tmp_path / "proved")


def test_a_restored_copy_replicated_into_the_same_repository(tmp_path: Path) -> None:
    """A point restored into a second database (same database id, its own incarnation)
    replicated into the same repository while the original stays idle: retention used to
    pool both histories, so the original's newest point was deleted once older than its
    window (the newest of the pool was the copy's). Each history keeps its newest point;
    both restore exactly."""
    from lamina.repository.levels import plan_retention

    from .helpers import Workload

    repo = Repository.init(tmp_path / "repo")
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for _ in range(20):
            wl.commit(2)
            clock.now_ns += 2 * S
            rep.step()
        newest = str(rep.status.last_point_id)
        points, _ = list_points(repo)
        middle = points[len(points) // 2]
        repo.restore(tmp_path / "copy", id=str(middle.backup_id))
        with lamina.open(tmp_path / "copy", create=False) as copy:
            assert copy.identity.db_id == wl.db.identity.db_id
            copy_wl = Workload(copy, tmp_path / "copy.log")
            copy_wl.steps = 10**6  # its own keys: the copy's log is not checked
            rep2 = Replicator(copy, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                              clock=lambda: clock.now_ns)
            for _ in range(40):
                copy_wl.commit(1)
                clock.now_ns += 100 * S  # past every window (retain: 1 h) in the end
                rep2.step()
                rep.step()
            copy_wl.close()
            assert rep.status.errors == 0 and rep2.status.errors == 0
            index = index_of(repo)
            assert newest in {str(i) for i in index.records}
            plan = plan_retention(index, wl.db.identity.db_id, clock.now_ns, POLICY)
            assert str(rep2.status.last_point_id) in {str(i) for i in plan.keep}
        repo.restore(tmp_path / "latest", id=newest)
        with lamina.open(tmp_path / "latest", create=False, readonly=True) as restored:
            seq = wl.db.lockfile.commit_seq()
            assert workload.verify(restored, wl.log_path, seq)["at_seq"] == seq
    assert repo.verify().ok


def test_a_damaged_full_is_healed_when_the_next_full_is_merged(tmp_path: Path) -> None:
    """The full every chain stands on damaged: compaction never reads it (a segment starts
    above its anchor), but the due full merged in the repository does; that merge failing
    makes the next point a full from the database, and the points from it on restore."""
    policy = LevelPolicy(levels_ns=POLICY.levels_ns, level_keep_ns=POLICY.level_keep_ns,
                         fine_window_ns=POLICY.fine_window_ns, retain_ns=POLICY.retain_ns,
                         full_every_ns=40 * S, full_fraction=0)
    repo = Repository.init(tmp_path / "repo")
    events: list[dict[str, Any]] = []
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=policy, compact_every=3600),
                         clock=lambda: clock.now_ns, on_event=events.append)
        wl.commit(3)
        clock.now_ns += 2 * S
        rep.step()
        full = index_of(repo).find(str(rep.status.last_point_id))
        assert full.kind == "full"
        path = tmp_path / "repo" / "images" / f"{full.backup_id}.lamina"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        for _ in range(30):
            wl.commit(2)
            clock.now_ns += 2 * S
            assert rep.step()
        assert any(e["event"] == "error" and "into a full" in e["message"] for e in events)
        heal = [e for e in events if e["event"] == "full" and "damaged" in e["reason"]]
        assert len(heal) == 1
    points, _ = list_points(repo)
    after = [p for p in points if p.vp_seq >= heal[0]["vp_seq"]]
    assert len(after) >= 3
    for i, p in enumerate(after):
        repo.restore(tmp_path / f"r{i}", id=str(p.backup_id))
        with lamina.open(tmp_path / f"r{i}", create=False, readonly=True) as restored:
            assert workload.verify(restored, wl.log_path, p.vp_seq)["at_seq"] == p.vp_seq
