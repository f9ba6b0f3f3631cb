"""S3 repositories against a real SeaweedFS server: URLs and settings, one-line errors
with distinct exit codes, and faults — the connection to the server dropped in the middle
of a backup, a restore and a prune: exit 9, nothing half-published, every earlier backup
still restores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.layout import RepoConfig
from lamina.repository.ranged import PROBE_SIZE
from lamina.repository.repository import open_storage
from lamina.repository.s3client import S3Location
from lamina.repository.s3storage import S3Storage
from support import cli
from support.s3fixtures import BUCKET
from support.s3server import S3Server, client
from support.tcpproxy import DOWN, UP, TcpProxy
from support.waiting import wait_for

from .helpers import content, make_db


def _one_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: "), proc.stderr
    return lines[0]


def test_init_makes_the_bucket_never_a_local_directory(s3_server: S3Server, tmp_path: Path
                                                        ) -> None:
    bucket = f"fresh-{uuid.uuid4().hex[:10]}"
    url = f"s3://{bucket}/some/prefix"
    proc = cli.run("repo", "init", url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"path": "s3://' in proc.stdout
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()
    keys = [o["Key"] for o in client(s3_server.endpoint).list_objects_v2(
        Bucket=bucket)["Contents"]]
    assert f"some/prefix/{L.CONFIG_KEY}" in keys and f"some/prefix/{L.INDEX_KEY}" in keys
    assert "already" in _one_line(cli.run("repo", "init", url), 3)
    # Another prefix of the same bucket is another repository.
    assert cli.run("repo", "init", f"s3://{bucket}/other").returncode == 0


def test_errors_are_one_line_with_distinct_codes(s3_server: S3Server, s3_url: str,
                                                 tmp_path: Path) -> None:
    assert cli.run("repo", "init", s3_url).returncode == 0
    wrong = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    line = _one_line(cli.run("list", "--repo", s3_url, env=wrong), 12)
    assert "access denied" in line and "AWS_SECRET_ACCESS_KEY" in line
    assert "access denied" in _one_line(cli.run("repo", "init", f"{s3_url}-2", env=wrong), 12)
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/repo"
    assert "bucket does not exist" in _one_line(cli.run("list", "--repo", missing), 13)
    _one_line(cli.run("backup", str(tmp_path / "db"), "--repo", missing), 13)
    # A prefix holding something else, and an empty one.
    storage = open_storage(f"{s3_url}-foreign")
    storage.put_bytes("notes.txt", b"not a repository")
    foreign = f"{s3_url}-foreign"
    assert "not a Lamina repository" in _one_line(cli.run("list", "--repo", foreign), 5)
    assert "not empty" in _one_line(cli.run("repo", "init", foreign), 3)
    assert "nothing there" in _one_line(cli.run("list", "--repo", f"{s3_url}-empty"), 3)
    _one_line(cli.run("list", "--repo", "s3://Bad_Bucket/x"), 2)
    _one_line(cli.run("list", "--repo", str(tmp_path), "--s3-endpoint", "http://x"), 2)
    # The endpoint: --s3-endpoint overrides AWS_ENDPOINT_URL; nothing listening: exit 9.
    dead = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2"}
    assert "cannot" in _one_line(cli.run("list", "--repo", s3_url, env=dead), 9)
    proc = cli.run("list", "--repo", s3_url, "--s3-endpoint", s3_server.endpoint, env=dead)
    assert proc.returncode == 0 and "no backups" in proc.stdout, proc.stderr


def _big_db(path: Path, mib: int) -> None:
    with make_db(path) as db, db.write() as txn:
        table = txn.table("t")
        for i in range(mib * 1024 // 4):
            table.put(b"k%08d" % i, os.urandom(4000))


def _images(url: str) -> list[str]:
    return [s.key for s in open_storage(url).list(L.IMAGES_PREFIX)]


def _uploads(s3_server: S3Server) -> int:
    return len(client(s3_server.endpoint).list_multipart_uploads(Bucket=BUCKET)
               .get("Uploads", []))


@pytest.mark.slow
def test_connection_lost_mid_backup_restore_and_prune(s3_server: S3Server, s3_url: str,
                                                      tmp_path: Path) -> None:
    db = tmp_path / "db"
    _big_db(db, 24)
    assert cli.run("repo", "init", s3_url).returncode == 0
    first = cli.run("backup", str(db), "--repo", s3_url, "--compress", "none")
    assert first.returncode == 0, first.stderr
    with make_db(db) as d:
        d.put("t", b"k00000001", b"changed")
    second = cli.run("backup", str(db), "--repo", s3_url, "--compress", "none")
    assert second.returncode == 0, second.stderr
    before = _images(s3_url)
    assert len(before) == 2
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "2"}
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        via = ("--s3-endpoint", proxy.endpoint)
        # Mid-backup: the link drops after 10 MiB of a ~24 MiB full went up.
        proxy.break_after(UP, 10 << 20)
        proc = cli.run("backup", str(db), "--repo", s3_url, "--full", "--compress", "none",
                       *via, env=env, timeout=300)
        assert proxy.tripped.is_set()
        _one_line(proc, 9)
        proxy.heal()
        assert _images(s3_url) == before  # nothing half-published
        # Mid-restore: 5 MiB into reading the chain.
        proxy.break_after(DOWN, 5 << 20)
        proc = cli.run("restore", "--repo", s3_url, "--to", str(tmp_path / "out"), *via,
                       env=env, timeout=300)
        assert proxy.tripped.is_set()
        _one_line(proc, 9)
        assert not (tmp_path / "out").exists()
        proxy.heal()
        # Mid-prune: keep the layer only, so its chain is merged into a synthetic full
        # (read from the store, written back) and the old full deleted; the link drops
        # while the merge uploads.
        proxy.break_after(UP, 8 << 20)
        proc = cli.run("prune", "--repo", s3_url, "--keep-last", "1", *via, env=env,
                       timeout=300)
        assert proxy.tripped.is_set()
        _one_line(proc, 9)
        proxy.heal()
    assert _images(s3_url) == before  # the merge was not published, nothing deleted
    repo = Repository.open(s3_url)
    assert repo.verify().ok
    repo.restore(tmp_path / "r1", id=first.stdout.strip())
    assert content(tmp_path / "r1")[b"k00000001"] != b"changed"
    repo.restore(tmp_path / "r2", id=second.stdout.strip())
    assert content(tmp_path / "r2")[b"k00000001"] == b"changed"
    # A prune after the fault finishes the job.
    done = cli.run("prune", "--repo", s3_url, "--keep-last", "1")
    assert done.returncode == 0, done.stderr
    assert _images(s3_url) == [L.image_key(second.stdout.strip())]
    repo.restore(tmp_path / "final", id=second.stdout.strip())
    assert content(tmp_path / "final")[b"k00000001"] == b"changed"


class _CountingS3(S3Storage):
    """A real S3 storage that counts the bytes its ranged GETs fetch, per key."""

    def __init__(self, url: str) -> None:
        super().__init__(S3Location.parse(url))
        self.fetched: dict[str, int] = {}
        self._count = threading.Lock()

    def get_range(self, key: str, offset: int, length: int, *, etag: str | None = None
                  ) -> bytes:
        data = super().get_range(key, offset, length, etag=etag)
        with self._count:
            self.fetched[key] = self.fetched.get(key, 0) + len(data)
        return data


def test_a_chain_restore_reads_each_image_once(s3_url: str, tmp_path: Path) -> None:
    """Full + two layers on S3: restoring the newest reads every image of the chain once
    (plus the small header/footer probes), verifying likewise, never a whole download
    first; the bytes restored are the database's."""
    db = tmp_path / "db"
    _big_db(db, 12)
    repo = Repository.init(s3_url)
    with make_db(db) as d:
        repo.backup(d, codec="none")
        for i in range(2):
            d.put("t", b"k%08d" % i, b"changed")
            repo.backup(d, codec="none")
    storage = _CountingS3(s3_url)
    counted = Repository(storage, RepoConfig.decode(storage.get_bytes(L.CONFIG_KEY), "x"))
    sizes = {s.key: s.size for s in storage.list(L.IMAGES_PREFIX)}
    assert len(sizes) == 3 and max(sizes.values()) > 10 << 20
    for run in ("restore", "verify"):
        storage.fetched.clear()
        if run == "restore":
            result = counted.restore(tmp_path / "out")
            assert len(result.chain) == 3
        else:
            assert counted.verify().ok
        assert set(storage.fetched) == set(sizes), run
        for key, size in sizes.items():
            # Header, footer and manifest probes, then one sequential pass.
            assert size <= storage.fetched[key] <= size + 4 * PROBE_SIZE, (run, key)
    assert content(tmp_path / "out")[b"k00000001"] == b"changed"


def test_a_dropped_connection_is_retried(s3_server: S3Server, s3_url: str,
                                         tmp_path: Path) -> None:
    """Connections reset once in the middle of a backup's upload and of a restore's
    ranged reads: both retry and succeed, and the result is whole."""
    db = tmp_path / "db"
    _big_db(db, 16)
    assert cli.run("repo", "init", s3_url).returncode == 0
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    with TcpProxy(port) as proxy:
        via = ("--s3-endpoint", proxy.endpoint)
        proxy.cut_after(UP, 6 << 20)
        proc = cli.run("backup", str(db), "--repo", s3_url, "--compress", "none", *via,
                       timeout=300)
        assert proxy.tripped.is_set() and proc.returncode == 0, proc.stderr
        proxy.tripped.clear()
        proxy.cut_after(DOWN, 6 << 20)
        proc = cli.run("restore", "--repo", s3_url, "--to", str(tmp_path / "out"), *via,
                       timeout=300)
        assert proxy.tripped.is_set() and proc.returncode == 0, proc.stderr
    assert content(tmp_path / "out") == content(db)
    assert Repository.open(s3_url).verify().ok


def test_boto3_is_imported_only_for_s3(tmp_path: Path) -> None:
    code = ("import sys\nfrom lamina.repository import Repository\n"
            f"r = Repository.init({str(tmp_path / 'repo')!r})\nr.list()\n"
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
            "from lamina.repository import open_storage\n"
            "open_storage('s3://some-bucket/p')\nassert 'boto3' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_server_killed_mid_backup_then_restarted(tmp_path: Path) -> None:
    """A server of its own, killed (SIGKILL) while a backup's multipart upload has parts
    stored, then started again on the same ports and data: the backup ended with exit 9
    in one line, nothing was published, and the earlier backup restores."""
    server = S3Server(tmp_path / "weed")
    server.start()
    try:
        env = {**os.environ, **server.env(), "AWS_MAX_ATTEMPTS": "2"}
        s3 = client(server.endpoint)
        s3.create_bucket(Bucket="killed")
        url = "s3://killed/repo"
        db = tmp_path / "db"
        _big_db(db, 24)
        assert cli.run("repo", "init", url, env=env).returncode == 0
        first = cli.run("backup", str(db), "--repo", url, "--compress", "none", env=env)
        assert first.returncode == 0, first.stderr
        proc = cli.start("backup", str(db), "--repo", url, "--full", "--compress", "none",
                         env=env)
        deadline = time.monotonic() + 120  # a hang guard only
        while True:  # until the upload has a part stored on the server
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the backup never stored a part"
            uploads = s3.list_multipart_uploads(Bucket="killed").get("Uploads", [])
            if uploads and s3.list_parts(Bucket="killed", Key=uploads[0]["Key"],
                                         UploadId=uploads[0]["UploadId"]).get("Parts"):
                break
        server.kill()
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 9, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lamina: "), err
        server.start()
        # A restarted server answers ListBuckets before its volumes are loaded (reads of
        # older objects fail with InternalError meanwhile): wait until they are readable.
        wait_for(lambda: _readable(s3, "killed", f"repo/{L.CONFIG_KEY}"),
                 "the restarted server to serve the repository's objects")
        assert _images_env(url, env) == [L.image_key(first.stdout.strip())]
        restored = cli.run("restore", "--repo", url, "--to", str(tmp_path / "out"), env=env)
        assert restored.returncode == 0, restored.stderr
        assert content(tmp_path / "out") == content(db)
    finally:
        server.stop()


def _readable(s3: Any, bucket: str, key: str) -> bool:
    """True once ``key`` can be read whole from the server."""
    try:
        s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:
        return False
    return True


def _images_env(url: str, env: dict[str, str]) -> list[str]:
    """The image keys ``lamina list`` shows for ``url`` under ``env``."""
    import json

    proc = cli.run("list", "--repo", url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return [L.image_key(b["id"]) for b in json.loads(proc.stdout)["backups"]]


def _stop(proc: subprocess.Popen[str]) -> bool:
    """Stop ``proc`` where it is (SIGSTOP; the caller continues it): the moment a test
    waited for cannot pass while the test acts on it."""
    os.kill(proc.pid, signal.SIGSTOP)
    return True


def _written(pid: int) -> int:
    """Bytes process ``pid`` has written so far (``wchar``: a restore's pages, as it
    downloads them; its start-up writes next to nothing)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


@pytest.mark.slow
def test_server_killed_mid_restore_and_mid_prune(tmp_path: Path) -> None:
    """A server of its own, killed (SIGKILL) while a restore is downloading, then while a
    prune streams a synthetic full back into the store (each held with SIGSTOP at that
    moment, continued once the server is dead): both end with exit 9 in one line;
    the restore leaves no destination, the prune leaves the layer it was replacing as it
    was; after a restart every backup restores and a new prune finishes the merge."""
    server = S3Server(tmp_path / "weed")
    server.start()
    try:
        env = {**os.environ, **server.env(), "AWS_MAX_ATTEMPTS": "2"}
        s3 = client(server.endpoint)
        s3.create_bucket(Bucket="killed")
        url = "s3://killed/repo"
        db = tmp_path / "db"
        _big_db(db, 24)
        assert cli.run("repo", "init", url, env=env).returncode == 0
        full = cli.run("backup", str(db), "--repo", url, "--compress", "none", env=env)
        assert full.returncode == 0, full.stderr
        with make_db(db) as d, d.write() as txn:
            for i in range(0, 6144, 3):
                txn.table("t").put(b"k%08d" % i, os.urandom(4000))
        layer = cli.run("backup", str(db), "--repo", url, "--compress", "none", env=env)
        assert layer.returncode == 0, layer.stderr
        expected = content(db)
        before = {k: s3.head_object(Bucket="killed", Key=f"repo/{k}")["ETag"]
                  for k in _images_env(url, env)}

        # 1. mid-restore: killed once the restore has written 4 MiB of the 24 it restores
        out = tmp_path / "out"
        proc = cli.start("restore", "--repo", url, "--to", str(out), env=env)
        wait_for(lambda: _written(proc.pid) > 4 << 20 and _stop(proc),
                 "the restore to write 4 MiB", proc=proc, max_interval=0.005)
        server.kill()
        os.kill(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 9, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lamina: "), err
        assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())

        # 2. mid-prune: killed once the synthetic full's upload has a part on the server
        server.start()
        wait_for(lambda: _readable(s3, "killed", f"repo/{L.CONFIG_KEY}"),
                 "the restarted server to serve the repository's objects")
        proc = cli.start("prune", "--repo", url, "--keep-last", "1", env=env)

        def part_stored() -> bool:
            for upload in s3.list_multipart_uploads(Bucket="killed").get("Uploads", []):
                if s3.list_parts(Bucket="killed", Key=upload["Key"],
                                 UploadId=upload["UploadId"]).get("Parts"):
                    return _stop(proc)
            return False

        wait_for(part_stored, "the prune's merge to store a part", proc=proc)
        server.kill()
        os.kill(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 9, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("lamina: "), err

        server.start()
        wait_for(lambda: _readable(s3, "killed", f"repo/{L.CONFIG_KEY}"),
                 "the restarted server to serve the repository's objects")
        after = {k: s3.head_object(Bucket="killed", Key=f"repo/{k}")["ETag"]
                 for k in _images_env(url, env)}
        assert after == before  # nothing half-published: both images as they were
        for i, backup in enumerate((full, layer)):
            got = cli.run("restore", "--repo", url, "--id", backup.stdout.strip(), "--to",
                          str(tmp_path / f"r{i}"), env=env)
            assert got.returncode == 0, got.stderr
        assert content(tmp_path / "r1") == expected
        again = cli.run("prune", "--repo", url, "--keep-last", "1", env=env)
        assert again.returncode == 0, again.stderr
        assert _images_env(url, env) == [L.image_key(layer.stdout.strip())]
        assert not s3.list_multipart_uploads(Bucket="killed").get("Uploads")
        final = cli.run("restore", "--repo", url, "--to", str(tmp_path / "last"), env=env)
        assert final.returncode == 0, final.stderr
        assert content(tmp_path / "last") == expected
    finally:
        server.stop()
