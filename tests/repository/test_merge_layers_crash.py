"""merge_layers killed with SIGKILL (real processes) while it writes the staged layer, once
it is staged, once it is published before the index, and at a random moment: the
repository verifies, every point restores exactly, and a re-run completes the merge."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import lamina
from lamina.repository import Repository
from lamina.repository.lock import EXCLUSIVE_KEY
from lamina.repository.repository import open_storage
from support.waiting import wait_for

State = tuple[dict[bytes, bytes], list[bytes]]

MERGER = """
import sys, uuid
from lamina.repository import Repository
repo = Repository.open(sys.argv[1], passphrase=lambda: b"pw")
repo.merge_layers(uuid.UUID(sys.argv[2]), uuid.UUID(sys.argv[3]))
print("merged")
"""


def _state(path: Path) -> State:
    with lamina.open(path, create=False, readonly=True) as db:
        assert db.check().ok
        with db.read() as txn:
            items = dict(txn.table("t").items())
        return items, [row for _id, row in db.scan("log")]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[Path, list[uuid.UUID], dict[uuid.UUID, State]]:
    """An encrypted repository: a full and 5 layers (each on the one before) of a
    database with a btree table and an archive table (optimized once), about 200 KiB of
    changes per layer so the merged layer spans many chunks; each point's state."""
    root = tmp_path_factory.mktemp("merge-crash")
    repo = Repository.init(root / "repo", passphrase=b"pw")
    rng = random.Random(3)
    ids: list[uuid.UUID] = []
    states: dict[uuid.UUID, State] = {}
    with lamina.open(root / "db", page_size=1024, sync=False) as db:
        db.create_table("t")
        db.create_table("log", "archive")
        for n in range(6):
            with db.write() as txn:
                t = txn.table("t")
                for _k in range(300):
                    t.put(f"k{rng.randrange(2000)}".encode(), rng.randbytes(rng.randrange(400)))
            db.append_many("log", [rng.randbytes(200) for _ in range(200)])
            if n == 3:
                db.archive("log").optimize()
            result = repo.backup(db, full=not ids, base=str(ids[-1]) if ids else None)
            ids.append(result.backup_id)
            states[result.backup_id] = _state_of_live(db)
    return root / "repo", ids, states


def _state_of_live(db: lamina.Database) -> State:
    with db.read() as txn:
        items = dict(txn.table("t").items())
    return items, [row for _id, row in db.scan("log")]


def _check(url: str, ids: list[uuid.UUID], states: dict[uuid.UUID, State],
           scratch: Path) -> list[uuid.UUID] | None:
    """The repository verifies deep, every point restores exactly; returns the chain of the
    last point."""
    repo = Repository.open(url, passphrase=lambda: b"pw")
    report = repo.verify(deep=True)
    assert report.ok, report.to_json()
    for backup_id in ids:
        dest = scratch / f"r-{uuid.uuid4().hex[:8]}"
        repo.restore(dest, str(backup_id))
        assert _state(dest) == states[backup_id]
        shutil.rmtree(dest)
    entries = {e.record.backup_id: e for e in repo.list()[0]}
    chain = entries[ids[-1]].chain
    return None if chain is None else list(chain)


def _copy(source: Path, url: str) -> str:
    src, dst = open_storage(source), open_storage(url)
    dst.create_container()
    for stat in src.list(""):
        dst.put_bytes(stat.key, src.get_bytes(stat.key))
    return url


def _merge(url: str, layer: uuid.UUID, onto: uuid.UUID, failpoint: str | None,
           ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if failpoint is not None:
        env["LAMINA_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-c", MERGER, url, str(layer), str(onto)],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("failpoint", ["backup.image_chunk_written:1",
                                       "repository.merge_staged",
                                       "repository.merge_published"])
def test_merge_killed_at_a_failpoint(template: tuple[Path, list[uuid.UUID],
                                                     dict[uuid.UUID, State]],
                                     tmp_path: Path, failpoint: str) -> None:
    source, ids, states = template
    url = str(tmp_path / "repo")
    shutil.copytree(source, url)
    proc = _merge(url, ids[5], ids[1], failpoint)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    chain = _check(url, ids, states, tmp_path)
    published = failpoint == "repository.merge_published"
    assert chain == ([ids[0], ids[1], ids[5]] if published else ids)
    again = _merge(url, ids[5], ids[1], None)
    assert again.returncode == 0, again.stderr
    assert _check(url, ids, states, tmp_path) == [ids[0], ids[1], ids[5]]


def test_merge_killed_after_publish_on_s3(template: tuple[Path, list[uuid.UUID],
                                                          dict[uuid.UUID, State]],
                                          tmp_path: Path, s3_url: str) -> None:
    source, ids, states = template
    url = _copy(source, s3_url)
    proc = _merge(url, ids[4], ids[0], "repository.merge_published")
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    chain = _check(url, ids, states, tmp_path)
    assert chain == [ids[0], ids[4], ids[5]]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merge_killed_at_a_random_moment(template: tuple[Path, list[uuid.UUID],
                                                         dict[uuid.UUID, State]],
                                         tmp_path: Path, seed: int) -> None:
    """Killed once it holds the repository lock, after a random number of changes to the
    staging directory and the images (progress of the merge itself, not seconds)."""
    source, ids, states = template
    repo_path = tmp_path / "repo"
    shutil.copytree(source, repo_path)
    rng = random.Random(seed)
    changes = rng.randrange(0, 6)
    proc = subprocess.Popen([sys.executable, "-c", MERGER, str(repo_path), str(ids[5]),
                             str(ids[2])], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.poll() is not None or (repo_path / EXCLUSIVE_KEY).is_file(),
                 "merge_layers to take the repository lock", max_interval=0.0005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)
        seen = _listing(repo_path)
        guard = 0
        while changes > 0 and proc.poll() is None:
            guard += 1
            assert guard < 10_000_000, "merge made no progress"
            os.kill(proc.pid, signal.SIGCONT)
            os.sched_yield()
            os.kill(proc.pid, signal.SIGSTOP)
            now = _listing(repo_path)
            if now != seen:
                seen, changes = now, changes - 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL)
    chain = _check(str(repo_path), ids, states, tmp_path)
    assert chain in (ids, [ids[0], ids[1], ids[2], ids[5]])


def _listing(repo_path: Path) -> set[tuple[str, int]]:
    """(name, size) of every file under ``images/`` and ``tmp/``."""
    out = set()
    for sub in (repo_path / "images", repo_path / "tmp"):
        for path in sub.rglob("*") if sub.is_dir() else []:
            try:
                out.add((str(path.relative_to(repo_path)), path.stat().st_size))
            except FileNotFoundError:
                continue
    return out
