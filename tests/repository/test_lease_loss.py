"""A holder that loses its repository lease mid-operation stops, publishing nothing.

Real processes: the holder stops itself (SIGSTOP, at a failpoint) in the middle of its
work; with a 3 s lease (``LAMINA_LEASE_TTL``), another process goes ahead once the lease
expired and finishes its own work; SIGCONT: the stalled holder finds its lease expired or
taken over at its next renewal, cancels its operation and exits 8 (LockedError) with one
line. Its work is not published; the other's is intact. Local and S3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import LockedError, StorageError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.lease import Lease
from lamina.repository.s3client import S3Location
from lamina.repository.s3storage import S3Storage
from lamina.repository.storage import LocalStorage
from lamina.repository.upload_store import uploads_of
from support import cli
from support.s3server import S3Server
from support.tcpproxy import TcpProxy
from support.waiting import GUARD_SECONDS, wait_for

from .helpers import content
from .test_store_stream import full_and_layer, leftovers, populate


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _stalled(*args: str, point: str) -> subprocess.Popen[Any]:
    """``lamina ARGS`` with a 3 s lease (renewed every second: a loaded machine does not
    lose it before the failpoint), stopped by itself at ``point``."""
    env = {**os.environ, "LAMINA_LEASE_TTL": "3", "LAMINA_FAILPOINT": point,
           "LAMINA_FAILPOINT_ACTION": "stop"}
    proc = cli.start(*args, env=env)
    wait_for(lambda: _state(proc.pid) == "T", f"{args[0]} to stop at {point}", proc=proc)
    return proc


def _continue(proc: subprocess.Popen[Any]) -> tuple[int, str]:
    os.kill(proc.pid, signal.SIGCONT)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, str(err)


def _digest(repo: Repository, backup_id: str) -> str:
    return hashlib.sha256(repo.storage.get_bytes(L.image_key(uuid.UUID(backup_id)))
                          ).hexdigest()


def test_a_stalled_prune_whose_lease_expired_stops_and_publishes_nothing(
        tmp_path: Path, repo_url: str) -> None:
    db_path, full, layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    before = _digest(repo, layer)
    stalled = _stalled("prune", "--repo", repo_url, "--keep-last", "1",
                       point="backup.image_chunk_written:3")  # mid-merge
    try:
        # Another process goes ahead once the stalled prune's lease expired: a backup.
        populate(db_path, 9, 20, start=50_000)
        done = cli.run_ok("backup", str(db_path), "--repo", repo_url, "--json")
        newest = json.loads(done.stdout)["backup_id"]
    finally:
        code, err = _continue(stalled)
    assert code == 8, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "lease" in lines[0] and "nothing published" in lines[0], err
    assert _digest(repo, layer) == before  # the merge was not published ...
    present = {str(e.record.backup_id) for e in repo.list()[0]}
    assert present == {full, layer, newest}  # ... nor anything deleted
    assert leftovers(repo) == []  # its upload was aborted as it stopped
    assert repo.verify().ok
    out = tmp_path / "restored"
    repo.restore(out, id=newest)
    assert content(out) == content(db_path)


def test_a_stalled_backup_taken_over_by_a_prune_stops_and_stays_resumable(
        tmp_path: Path, repo_url: str) -> None:
    db_path, full, layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    populate(db_path, 10, 20, start=60_000)
    stalled = _stalled("backup", str(db_path), "--repo", repo_url, "--full",
                       point="backup.upload_part_stored:1")  # one part of two stored
    try:
        # The prune waits for the stalled backup's shared lease to expire, removes it and
        # takes the repository alone: it merges the layer and deletes the full.
        report = json.loads(cli.run_ok("prune", "--repo", repo_url, "--keep-last", "1",
                                       "--json").stdout)
    finally:
        code, err = _continue(stalled)
    assert report["merged"] == [layer] and report["deleted"] == [full], report
    assert report["stale_uploads_removed"] == []  # the stalled backup's upload lives on
    assert code == 8, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "lease" in lines[0] and "nothing published" in lines[0], err
    entries, _ = repo.list()
    assert [(str(e.record.backup_id), e.record.kind) for e in entries] == [(layer, "full")]
    assert repo.verify().ok  # the prune's work is intact
    assert len(uploads_of(repo.storage).list()) == 1  # the backup is resumable ...
    resumed = json.loads(cli.run_ok("backup", str(db_path), "--repo", repo_url, "--resume",
                                    "--json").stdout)
    assert resumed["resumed"] and resumed["parts"]["parts_skipped"] >= 1
    out = tmp_path / "restored"
    repo.restore(out, id=resumed["backup_id"])
    assert content(out) == content(db_path)
    if isinstance(repo.storage, S3Storage):
        assert leftovers(repo) == []


def test_a_renewal_that_finds_the_lease_taken_over_cancels_at_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    held = Lease(storage, "locks/x", "prune", ttl=3.0)
    assert held.try_acquire()
    token = held.cancel_token()
    try:
        assert not token()
        data, version = storage.read_versioned("locks/x")
        assert storage.replace_if("locks/x", version, data.replace(held.owner.encode(),
                                                                    b"0" * 32))
        assert held.lost_event.wait(timeout=GUARD_SECONDS)  # the next renewal sees it
        assert token() and "taken over" in held.lost_reason
        with pytest.raises(LockedError, match="nothing published"):
            held.confirm("prune")
    finally:
        held.release()


class _Unreachable:
    """A storage whose writes fail (a server that stopped answering), reads pass."""

    def __init__(self, inner: LocalStorage) -> None:
        self.inner = inner
        self.failing = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def replace_if(self, key: str, token: str, data: bytes) -> bool:
        if self.failing.is_set():
            raise StorageError("cannot reach the store (test)")
        return self.inner.replace_if(key, token, data)


def test_renewals_failing_until_the_lease_expired_cancel(tmp_path: Path) -> None:
    storage = _Unreachable(LocalStorage(tmp_path))
    held = Lease(storage, "locks/x", "merge", ttl=0.6)  # type: ignore[arg-type]
    assert held.try_acquire()
    try:
        storage.failing.set()
        assert held.lost_event.wait(timeout=GUARD_SECONDS)
        assert "could not be renewed" in held.lost_reason or "expired" in held.lost_reason
        assert held.cancel_token()()
        assert "merge stopped" in str(held.lost_error("merge"))
    finally:
        held.release()


def test_an_unreachable_store_loses_the_lease_once_it_expired(s3_server: S3Server,
                                                              s3_url: str) -> None:
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        storage = S3Storage(S3Location.parse(s3_url), endpoint=proxy.endpoint)
        held = Lease(storage, "locks/exclusive", "prune", ttl=1.5)
        assert held.try_acquire()
        try:
            token = held.cancel_token()
            assert not token()
            proxy.break_now()  # the server stops answering (connections reset, refused)
            assert held.lost_event.wait(timeout=GUARD_SECONDS)
            assert token() and "renewed" in held.lost_reason, held.lost_reason
            with pytest.raises(LockedError, match="prune stopped, nothing published"):
                held.confirm("prune")
        finally:
            proxy.heal()
            held.release()
