"""The replicator in-process on real databases and repositories (local and S3), with one
clock shared by the validity points and the replicator (so that levels, compaction and
retention are deterministic): points restore exactly, chains stay within their level's
bound, compaction left by a killed replicator is done on restart, idle costs nothing,
fulls on schedule and by size, retries with backoff, status file, metrics over HTTP."""

from __future__ import annotations

import json
import random
import urllib.request
from pathlib import Path

import pytest

import lamina
from lamina.errors import ChainError, StorageError
from lamina.repository import LocalStorage, Repository
from lamina.repository import layout as L
from lamina.repository.index import Index
from lamina.repository.levels import LevelPolicy
from lamina.repository.points import list_points, point_at
from lamina.repository.replicate import ReplicateOptions, Replicator
from lamina.repository.replication_metrics import ReplicationMetrics

from .helpers import S, check_compacted, index_of, prove_every_point, vp_clock, workload_db

T0 = 1_800_000_000 * S
POLICY = LevelPolicy(levels_ns=(10 * S, 60 * S), level_keep_ns=(300 * S, None),
                     fine_window_ns=30 * S, retain_ns=3600 * S, full_every_ns=0,
                     full_fraction=0)


class CountingRepository(Repository):
    """A repository that counts how often its index is read (``list``)."""

    lists = 0

    def list(self):  # type: ignore[no-untyped-def]
        CountingRepository.lists += 1
        return super().list()


def _index(repo: Repository) -> Index:
    return index_of(repo)


def test_every_point_restores_exactly_and_chains_stay_bounded(repo_url: str,
                                                               tmp_path: Path) -> None:
    """On a local and on an S3 repository."""
    repo = Repository.init(repo_url)
    rng = random.Random(14)
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=0),
                         clock=lambda: clock.now_ns)
        for _ in range(70):
            commits = rng.choice([0, 0, 1, 2, 5])
            before = wl.db.lockfile.commit_seq()
            wl.commit(commits) if commits else None
            clock.now_ns += rng.choice([1, 2, 3, 7]) * S
            took = rep.step()
            assert took == (wl.db.lockfile.commit_seq() != before or rep.status.points == 1)
            assert rep.status.last_vp_seq == wl.db.lockfile.commit_seq()
            assert rep.status.lag_commits == 0
            if took:  # every point is taken on the newest one: it holds what changed since
                record = _index(repo).find(str(rep.status.last_point_id))
                assert record.kind == "full" or record.base_vp_seq == before
    longest = check_compacted(repo, POLICY)  # level i: <= 4 - i images; level 0: m + 4
    assert longest[1] <= 3 and longest[2] <= 2
    assert rep.status.compactions > 0 and rep.status.merged_bytes > 0
    assert rep.status.points_deleted > 0  # retention ran: fine points older than 30 s went
    points, _ = list_points(repo)
    newest = max(p.vp_wall_ns for p in points)
    fine = [p for p in points if newest - p.vp_wall_ns <= 30 * S]
    assert len(fine) >= 3
    assert prove_every_point(repo, wl.log_path, tmp_path / "out", limit=10) >= 10
    assert repo.verify().ok


class KilledAfterPublish(Replicator):
    """A replicator that dies (for compaction's purposes) right after each publish."""

    def _compact(self) -> None:
        self._compaction_pending = False


def test_compaction_left_by_a_killed_replicator_is_done_on_restart(repo_url: str,
                                                                    tmp_path: Path) -> None:
    """Points published and never compacted (killed after each publish, an outage of
    compaction): the next replicator's first step compacts every closed bucket, though the
    database is idle; the one after finds nothing to do and reads nothing."""
    Repository.init(repo_url)
    repo = CountingRepository.open(repo_url)
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        killed = KilledAfterPublish(wl.db, repo, ReplicateOptions(policy=POLICY,
                                                                  compact_every=3600),
                                    clock=lambda: clock.now_ns)
        for _ in range(40):
            wl.commit(1)
            clock.now_ns += 2 * S
            killed.step()
        assert max(len(_index(repo).chain(r)) for r in _index(repo).records.values()) == 40
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=3600),
                         clock=lambda: clock.now_ns)
        assert not rep.step()  # no point: the database is idle
        assert rep.status.compactions == 8  # the last point of each closed 10 s bucket
        check_compacted(repo, POLICY)
        again = Replicator(wl.db, repo, ReplicateOptions(policy=POLICY, compact_every=3600),
                           clock=lambda: clock.now_ns)
        assert not again.step() and again.status.compactions == 0
        lists = CountingRepository.lists
        assert not again.step()
        assert CountingRepository.lists == lists
    prove_every_point(repo, wl.log_path, tmp_path / "out", limit=8)
    assert repo.verify().ok


def test_an_idle_database_costs_one_counter_read(repo_url: str, tmp_path: Path) -> None:
    Repository.init(repo_url)
    repo = CountingRepository.open(repo_url)
    with workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(compact_every=3600))
        assert rep.step()
        images = {s.key for s in repo.storage.list(L.IMAGES_PREFIX)}
        lists = CountingRepository.lists
        for _ in range(20):
            assert not rep.step()
        assert CountingRepository.lists == lists  # the repository was not even read
        assert {s.key for s in repo.storage.list(L.IMAGES_PREFIX)} == images
        wl.commit(2)
        assert rep.step() and rep.status.points == 2


@pytest.mark.parametrize("full_from", ["repository", "database"])
def test_a_due_full(repo_url: str, tmp_path: Path, full_from: str) -> None:
    """On schedule: merged in the repository into a synthetic full standing for the new
    point (same id), or read from the database; later points build on it."""
    repo = Repository.init(repo_url)
    policy = LevelPolicy(levels_ns=(10 * S, 60 * S), level_keep_ns=(None, None),
                         full_every_ns=100 * S, full_fraction=0)
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=policy, full_from=full_from),
                         clock=lambda: clock.now_ns)
        for _ in range(3):
            wl.commit(3)
            clock.now_ns += 5 * S
            rep.step()
        clock.now_ns += 100 * S
        wl.commit(3)
        rep.step()
        due = rep.status.last_point_id
        wl.commit(2)
        clock.now_ns += S
        rep.step()
    index = _index(repo)
    record = index.find(str(due))
    assert record.kind == "full" and record.synthetic == (full_from == "repository")
    newest = index.find(str(rep.status.last_point_id))
    assert [r.backup_id for r in index.chain(newest)] == [record.backup_id, newest.backup_id]
    assert rep.status.fulls_merged == (1 if full_from == "repository" else 0)
    assert rep.status.fulls_sent == (1 if full_from == "repository" else 2)
    prove_every_point(repo, wl.log_path, tmp_path / "out")


def test_a_full_when_the_layers_outgrow_a_fraction_of_it(repo_url: str,
                                                         tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    policy = LevelPolicy(full_every_ns=0, full_fraction=0.5)
    with vp_clock(T0) as clock, workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(policy=policy),
                         clock=lambda: clock.now_ns)
        for _ in range(12):
            wl.commit(40)
            clock.now_ns += 61 * S  # every point opens a new minute: layers on the hour's
            rep.step()
    assert rep.status.fulls_merged >= 1
    index = _index(repo)
    for r in index.records.values():
        chain = index.chain(r)
        layers = sum(x.size for x in chain[1:-1])  # what the point was taken on
        assert layers <= 0.5 * chain[0].size or r.kind == "full"


class FlakyStorage(LocalStorage):
    """A local storage whose puts fail while ``failures`` > 0 (a repository going away):
    a backup's image may reach its upload, but its index entry is never stored."""

    failures = 0

    @staticmethod
    def _fail(key: str) -> None:
        if FlakyStorage.failures > 0:
            FlakyStorage.failures -= 1
            raise StorageError(f"injected: cannot store {key}")

    def put_file(self, key: str, src: Path) -> None:
        self._fail(key)
        super().put_file(key, src)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._fail(key)
        super().put_bytes(key, data)


def test_a_failing_repository_is_retried_with_backoff(tmp_path: Path) -> None:
    Repository.init(tmp_path / "repo")
    plain = Repository.open(tmp_path / "repo")
    repo = Repository(FlakyStorage(plain.path, staging=L.STAGING_DIR, private=(L.LOCKS_DIR,)),
                      plain.config)
    status = tmp_path / "status.json"
    with workload_db(tmp_path) as wl:
        rep = Replicator(wl.db, repo, ReplicateOptions(interval=1.0, max_backoff=8.0),
                         status_file=status)
        waits: list[float] = []
        seen: list[dict[str, object]] = []

        def wait(delay: float) -> bool:
            waits.append(delay)
            seen.append(json.loads(status.read_text()))
            wl.commit(1)
            if len(waits) == 2:
                FlakyStorage.failures = 5
            return len(waits) >= 10

        rep.run(wait=wait)
    assert waits == [1.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 1.0, 1.0, 1.0]
    assert [s["consecutive_errors"] for s in seen[2:7]] == [1, 2, 3, 4, 5]
    lags = [s["lag_commits"] for s in seen[2:7]]
    assert lags == sorted(lags) and lags[-1] >= 5  # the lag grows visibly
    final = json.loads(status.read_text())
    assert final["errors"] == 5 and final["state"] == "stopped"
    assert "injected" in final["last_error"] and final["lag_commits"] <= 1
    assert final["consecutive_errors"] == 0
    prove_every_point(Repository.open(tmp_path / "repo"), wl.log_path, tmp_path / "out")


def test_status_file_and_metrics_over_http(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    metrics = ReplicationMetrics()
    host, port = metrics.serve("127.0.0.1", 0)
    try:
        with workload_db(tmp_path) as wl:
            rep = Replicator(wl.db, repo, ReplicateOptions(compact_every=0),
                             status_file=tmp_path / "s.json", metrics=metrics)
            rep.step()
            seq = wl.commit(4)
            rep.step()
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        metrics.close()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("lamina_replicate_")}
    assert values["lamina_replicate_fulls_total"] == 1
    assert values["lamina_replicate_layers_total"] == 1
    assert values["lamina_replicate_last_vp_seq"] == seq
    assert values["lamina_replicate_bytes_total"] == rep.status.bytes_sent > 0
    assert values["lamina_replicate_retention_runs_total"] == 2
    assert values["lamina_replicate_compactions_total"] == rep.status.compactions
    assert values["lamina_replicate_merged_bytes_total"] == rep.status.merged_bytes
    assert values["lamina_replicate_errors_total"] == 0
    assert values["lamina_replicate_lag_commits"] == 0
    assert 0 <= values["lamina_replicate_last_vp_age_seconds"] < 3600
    status = json.loads((tmp_path / "s.json").read_text())
    assert status["last_vp_seq"] == seq and status["points"] == 2
    assert status["bytes_sent"] == rep.status.bytes_sent


def test_database_replicate_and_point_at(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    with vp_clock(T0) as clock, lamina.open(tmp_path / "db") as db:
        db.create_table("t")
        rep = db.replicate(repo, interval=0.5, clock=lambda: clock.now_ns)
        assert isinstance(rep, Replicator) and rep.options.interval == 0.5
        seqs = []
        for i in range(3):
            db.put("t", b"k", b"%d" % i)
            clock.now_ns += 10 * S
            rep.step()
            seqs.append(rep.status.last_vp_seq)
    assert point_at(repo, T0 + 25 * S).vp_seq == seqs[1]
    assert point_at(repo, T0 + 30 * S).vp_seq == seqs[2]
    assert point_at(repo, T0 + 20 * S).vp_seq == seqs[1]  # at the VP itself: that point


def test_forget_never_breaks_a_chain(repo_url: str, tmp_path: Path) -> None:
    repo = Repository.init(repo_url)
    with lamina.open(tmp_path / "db") as db:
        db.create_table("t")
        full = repo.backup(db)
        db.put("t", b"a", b"1")
        layer = repo.backup(db)
    with pytest.raises(ChainError, match="needed by the chain"):
        repo.forget([full.backup_id])
    assert len(repo.list()[0]) == 2
    assert repo.forget([layer.backup_id, full.backup_id]) == [layer.backup_id,
                                                               full.backup_id]
    assert repo.list()[0] == []
