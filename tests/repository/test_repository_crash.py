"""Prune killed with SIGKILL at every step boundary and at random moments (real
processes): every kept backup still restores, and re-running prune completes the job."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest

from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from lamina.repository.index import load_index
from lamina.repository.lock import EXCLUSIVE_KEY
from lamina.repository.prune import plan_prune
from lamina.repository.repository import open_storage
from support import cli
from support.rawstore import RawStore
from support.s3proxy import WRITES, S3Proxy
from support.s3server import S3Server
from support.waiting import wait_for

from .helpers import DAY_NS, content, make_db, vp_clock

POLICY = KeepPolicy(last=2, daily=3)
PRUNE_ARGS = ["--keep-last", "2", "--keep-daily", "3"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[uuid.UUID, dict[
        bytes, bytes]]]:
    """A repository of 12 backups over 6 days (fulls and, where possible, layers), and
    each backup's table content."""
    root = tmp_path_factory.mktemp("crash-template")
    repo = Repository.init(root / "repo", chain_limit=3)
    rng = random.Random(5)
    states: dict[uuid.UUID, dict[bytes, bytes]] = {}
    t0 = 1_699_920_000 * 10**9
    with make_db(root / "db") as db, vp_clock(t0) as clock:
        for i in range(12):
            clock.now_ns = t0 + (i // 2) * DAY_NS + rng.randrange(1, 11 * 3600) * 10**9
            db.put("t", b"k%d" % rng.randrange(4), b"v%d" % i)
            result = repo.backup(db, full=rng.random() < 0.3)
            with db.read() as txn:
                states[result.backup_id] = dict(txn.table("t").items())
    return root / "repo", states


def _expected(repo_path: Path) -> tuple[set[uuid.UUID], set[uuid.UUID], int]:
    repo = Repository.open(repo_path)
    plan = plan_prune(load_index(repo.storage).index, POLICY)
    return set(plan.keep), plan.needed, len(plan.merges) + len(plan.delete)


def _check_kept(repo_path: Path | str, keep: set[uuid.UUID],
                states: dict[uuid.UUID, dict[bytes, bytes]], rng: random.Random,
                scratch: Path | None = None) -> None:
    """Every kept backup's chain resolves and verifies; one restores exactly (into
    ``scratch``, default: next to a local repository)."""
    repo = Repository.open(repo_path)
    for k in sorted(keep, key=str):
        report = repo.verify(str(k))
        assert report.ok, report.results
    sample = rng.choice(sorted(keep, key=str))
    out = (scratch or Path(repo_path).parent) / f"restore-{uuid.uuid4().hex[:8]}"
    repo.restore(out, id=str(sample))
    assert content(out) == states[sample]
    shutil.rmtree(out)


def _finish_and_check(repo_path: Path | str, keep: set[uuid.UUID],
                      needed: set[uuid.UUID]) -> None:
    proc = cli.run("prune", "--repo", str(repo_path), *PRUNE_ARGS)
    assert proc.returncode == 0, proc.stderr
    repo = Repository.open(repo_path)
    entries, rebuilt = repo.list()
    assert rebuilt is None  # the completing run left an index that agrees
    present = {e.record.backup_id for e in entries}
    assert present == needed and keep <= present
    if not str(repo_path).startswith("s3://"):
        assert not list((Path(repo_path) / "tmp").iterdir())
    else:  # no merge of a killed run left half-uploaded (nor anything staged)
        raw = RawStore(repo_path)
        assert not raw.multipart_uploads() and not raw.names(f"{L.STAGING_DIR}/")
    again = repo.prune(POLICY)
    assert not again.plan.delete and not again.plan.merges


def _copy(source: Path, url: str) -> str:
    """The repository at ``source`` copied, object by object, to ``url``."""
    src, dst = open_storage(source), open_storage(url)
    dst.create_container()
    for stat in src.list(""):
        dst.put_bytes(stat.key, src.get_bytes(stat.key))
    return url


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_prune_killed_at_every_step(template: tuple[Path, dict[uuid.UUID, dict[bytes, bytes]]],
                                    tmp_path: Path, kind: str,
                                    request: pytest.FixtureRequest) -> None:
    source, states = template
    keep, needed, steps = _expected(source)
    assert steps >= 3, "the template must give prune several steps"
    rng = random.Random(1)
    base = "" if kind == "local" else request.getfixturevalue("s3_url")
    for n in range(1, steps + 1):
        if kind == "local":
            shutil.copytree(source, tmp_path / f"repo-{n}")
            url = str(tmp_path / f"repo-{n}")
        else:
            url = _copy(source, f"{base}-{n}")
        proc = cli.run("prune", "--repo", url, *PRUNE_ARGS,
                       env={**os.environ, "LAMINA_FAILPOINT": f"repository.prune_step:{n}"})
        assert proc.returncode == -signal.SIGKILL, (n, proc.returncode, proc.stderr)
        _check_kept(url, keep, states, rng, tmp_path)
        _finish_and_check(url, keep, needed)


def _locked(raw: RawStore) -> bool:
    """True while a process holds the repository lock exclusively (its lease object)."""
    return raw.exists(EXCLUSIVE_KEY)


def _listing(raw: RawStore) -> set[tuple[str, int]]:
    """(name, size) of every file under ``images/`` and ``tmp/``."""
    return {(key, size) for under in (L.IMAGES_PREFIX, f"{L.STAGING_DIR}/")
            for key, size in raw.sizes(under).items()}


def _repository(kind: str, source: Path, tmp_path: Path, request: pytest.FixtureRequest
                ) -> str:
    """A copy of the repository at ``source``: a local directory, or an S3 prefix."""
    if kind == "local":
        shutil.copytree(source, tmp_path / "repo")
        return str(tmp_path / "repo")
    return _copy(source, request.getfixturevalue("s3_url"))


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_prune_killed_at_a_random_moment(
        template: tuple[Path, dict[uuid.UUID, dict[bytes, bytes]]], tmp_path: Path,
        seed: int) -> None:
    source, states = template
    keep, needed, steps = _expected(source)
    rng = random.Random(seed)
    repo_path = tmp_path / "repo"
    shutil.copytree(source, repo_path)
    raw = RawStore(repo_path)
    # A random moment counted in the prune's own progress, not in seconds (a busy machine
    # can spend a whole idle run on interpreter start-up): once it holds the repository
    # lock, it is stopped and let run in short slices, and killed (still stopped) after a
    # random number of changes to images/ and tmp/ (file names and sizes: steps, and a
    # merge's output growing). Only a prune that finishes within one slice is not killed.
    changes = rng.randrange(0, steps)
    proc = cli.start("prune", "--repo", str(repo_path), *PRUNE_ARGS, capture=False)
    deadline = time.monotonic() + 120  # a hang guard only
    try:
        wait_for(lambda: proc.poll() is not None or _locked(raw),
                 "prune to take the repository lock", max_interval=0.0005)
        if proc.poll() is None:  # (not reaped yet: its pid is still ours to signal)
            os.kill(proc.pid, signal.SIGSTOP)
        seen = _listing(raw)
        while changes > 0 and proc.poll() is None:
            assert time.monotonic() < deadline, "prune made no progress"
            os.kill(proc.pid, signal.SIGCONT)
            os.sched_yield()  # a slice as short as the scheduler makes it
            os.kill(proc.pid, signal.SIGSTOP)
            now = _listing(raw)
            if now != seen:
                seen, changes = now, changes - 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL)
    _check_kept(repo_path, keep, states, rng)
    _finish_and_check(repo_path, keep, needed)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_prune_on_s3_killed_at_a_random_moment(
        template: tuple[Path, dict[uuid.UUID, dict[bytes, bytes]]], tmp_path: Path,
        seed: int, s3_server: S3Server, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on S3, the moment counted in the prune's requests to the store: a clean
    run through the proxy counts them; the killed run's N-th request (random; of any kind,
    or one that changes the store: a PUT, a part, a completion, a delete) is held
    (never reaches the server) and the prune is killed with SIGKILL while it waits for
    the answer."""
    source, states = template
    keep, needed, _steps = _expected(source)
    rng = random.Random(seed)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    # No lease renewal in either run (it would add a request at a moment of its own).
    monkeypatch.setenv("LAMINA_LEASE_TTL", "3600")
    with S3Proxy(port) as proxy:
        counted = _copy(source, f"{s3_url}-count")
        code, _out, err = cli.invoke("prune", "--repo", counted, *PRUNE_ARGS,
                                     "--s3-endpoint", proxy.endpoint)
        assert code == 0, err
        # Odd seeds: any request; even ones: a request that changes the store.
        kinds = None if seed % 2 else (*WRITES, "delete")
        total = sum(n for k, n in proxy.counts.items() if kinds is None or k in kinds)
        url = _copy(source, s3_url)
        at = rng.randrange(1, total + 1)
        proxy.hold_at(at, kinds)
        proc = cli.start("prune", "--repo", url, *PRUNE_ARGS, "--s3-endpoint",
                         proxy.endpoint, capture=False)
        try:
            wait_for(proxy.held.is_set, f"the prune's request {at} of {total}", proc=proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    _check_kept(url, keep, states, rng, tmp_path)
    _finish_and_check(url, keep, needed)  # (no multipart upload left either)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_template_plan_merges_and_deletes(
        template: tuple[Path, dict[uuid.UUID, dict[bytes, bytes]]], kind: str,
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The crash tests above kill prune inside merges too, not only deletions (the plan
    read from the copy on each storage, as the killed prunes read it)."""
    source, _states = template
    repo = Repository.open(_repository(kind, source, tmp_path, request))
    index = load_index(repo.storage).index
    plan = plan_prune(index, POLICY)
    assert plan.merges and plan.delete
    assert any(r.is_layer for r in index.records.values())
    assert load_index(repo.storage).index.records.keys() == \
        load_index(Repository.open(source).storage).index.records.keys()
