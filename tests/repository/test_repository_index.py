"""The index is derived data: rebuilt from the images when it is missing, damaged or stale,
and it says so; staging and temporary files are never listed."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from lamina.errors import CorruptionError
from lamina.repository import KeepPolicy, Repository, uploads
from lamina.repository import layout as L
from lamina.repository.index import Index
from lamina.repository.lock import RepositoryLock
from lamina.repository.s3uploads import UPLOADS_PREFIX
from lamina.repository.storage import LocalStorage
from support import cli
from support.rawstore import RawStore
from support.s3proxy import S3Proxy
from support.s3server import S3Server
from support.waiting import wait_for

from .helpers import make_db


def _repo_with_backups(tmp_path: Path, n: int, url: str | None = None
                       ) -> tuple[Repository, list[str]]:
    repo = Repository.init(url or tmp_path / "repo")
    ids = []
    with make_db(tmp_path / "db") as db:
        for i in range(n):
            db.put("t", b"k%d" % i, b"v")
            ids.append(str(repo.backup(db, full=True).backup_id))
    return repo, ids


class _Object:
    """An object of a repository, read, replaced and removed through its storage (local
    directory or S3), as a file would be."""

    def __init__(self, repo: Repository, key: str) -> None:
        self.storage, self.key = repo.storage, key

    def read_bytes(self) -> bytes:
        return self.storage.get_bytes(self.key)

    def write_bytes(self, data: bytes) -> None:
        self.storage.put_bytes(self.key, data)

    def unlink(self) -> None:
        self.storage.delete(self.key)

    def exists(self) -> bool:
        return self.storage.exists(self.key)


def _listed(repo: Repository) -> tuple[list[str], str | None]:
    entries, rebuilt = repo.list()
    return [str(e.record.backup_id) for e in entries], rebuilt


def test_deleted_index_is_rebuilt_and_reported(repo_url: str, tmp_path: Path) -> None:
    repo, ids = _repo_with_backups(tmp_path, 3, repo_url)
    index = _Object(repo, L.INDEX_KEY)
    before = index.read_bytes()
    index.unlink()
    listed, rebuilt = _listed(repo)
    assert listed == ids
    assert rebuilt is not None and "index missing" in rebuilt and "3 image(s)" in rebuilt
    assert index.read_bytes() == before  # same derived data
    assert _listed(repo) == (ids, None)  # saved: no second rebuild
    # The CLI says it in one line on stderr and still lists everything.
    index.unlink()
    proc = cli.run("list", "--repo", repo.url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [b["id"] for b in json.loads(proc.stdout)["backups"]] == ids
    assert proc.stderr.count("\n") == 1 and "rebuilt" in proc.stderr


def test_corrupted_index_is_rebuilt(repo_url: str, tmp_path: Path) -> None:
    repo, ids = _repo_with_backups(tmp_path, 2, repo_url)
    path = _Object(repo, L.INDEX_KEY)
    for damage in (b"garbage", path.read_bytes().replace(b'"kind":"full"', b'"kind":"layer"'),
                   path.read_bytes()[:-20], b""):
        path.write_bytes(damage)
        listed, rebuilt = _listed(repo)
        assert listed == ids
        assert rebuilt is not None and "unreadable" in rebuilt
    # An index that parses but lies about an image (a forged record, checksum fixed up)
    # is caught by the size/stamp comparison.
    obj = json.loads(path.read_bytes())
    obj["images"][0]["size"] += 1
    obj["checksum"] = L.checksum(obj["images"])
    path.write_bytes(L.canonical_json(obj))
    listed, rebuilt = _listed(repo)
    assert listed == ids and rebuilt is not None and "changed" in rebuilt


def test_image_added_behind_the_index_appears(repo_url: str, tmp_path: Path) -> None:
    repo, ids = _repo_with_backups(tmp_path, 1, repo_url)
    other = Repository.init(f"{repo_url}-other")
    with make_db(tmp_path / "db") as db:
        db.put("t", b"new", b"x")
        extra = str(other.backup(db, full=True).backup_id)
    _Object(repo, L.image_key(extra)).write_bytes(
        _Object(other, L.image_key(extra)).read_bytes())
    listed, rebuilt = _listed(repo)
    assert listed == [*ids, extra]
    assert rebuilt is not None and "1 image(s) are not indexed" in rebuilt
    assert repo.restore(tmp_path / "out", id=extra).backup_id.hex == extra.replace("-", "")
    # And one removed behind its back disappears.
    _Object(repo, L.image_key(ids[0])).unlink()
    listed, rebuilt = _listed(repo)
    assert listed == [extra] and rebuilt is not None and "gone" in rebuilt


def test_damaged_image_is_listed_as_damaged_never_dropped(repo_url: str,
                                                         tmp_path: Path) -> None:
    repo, ids = _repo_with_backups(tmp_path, 2, repo_url)
    path = _Object(repo, L.image_key(ids[0]))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # the footer's checksum
    path.write_bytes(bytes(data))
    entries, rebuilt = repo.list()
    assert rebuilt is not None and "changed" in rebuilt
    by_id = {str(e.record.backup_id): e for e in entries}
    assert set(by_id) == set(ids)
    assert by_id[ids[0]].record.error is not None and by_id[ids[0]].problem is not None
    assert by_id[ids[1]].problem is None
    report = repo.verify()
    assert not report.ok and report.first_error is not None
    assert report.first_error.exit_code == 4


def test_half_written_images_are_never_listed(repo_url: str, tmp_path: Path) -> None:
    """What writers killed mid-way leave — a staged image, a put's dot-temporary; on S3
    an unfinished multipart upload of an image key (with its upload description) — and a
    foreign object are never listed, neither from the index nor by a rebuild."""
    repo, ids = _repo_with_backups(tmp_path, 1, repo_url)
    raw = RawStore(repo_url)
    image = raw.read(L.image_key(ids[0]))
    raw.write(f"{L.STAGING_DIR}/backup-0123.lamina", image[:100])
    raw.write(f"{L.IMAGES_PREFIX}.{ids[0][:-4]}aaaa.lamina.tmp-123456789abc", image)
    raw.write(f"{L.IMAGES_PREFIX}notes.txt", b"not an image")
    if raw.s3:
        name = str(uuid.uuid4())
        key = raw.prefix + L.image_key(name)
        upload = raw.client.create_multipart_upload(Bucket=raw.bucket, Key=key)["UploadId"]
        raw.client.upload_part(Bucket=raw.bucket, Key=key, UploadId=upload, PartNumber=1,
                               Body=image)
        raw.write(f"{UPLOADS_PREFIX}{name}", uploads.info_document(
            name, 8 << 20, {"database_id": str(uuid.uuid4()), "image_id": name}))
        assert raw.multipart_uploads() == [(L.image_key(name), upload)]
    assert _listed(repo) == (ids, None)
    raw.delete(L.INDEX_KEY)  # a rebuild from what is under images/
    listed, rebuilt = _listed(repo)
    assert listed == ids and rebuilt is not None and "1 image(s)" in rebuilt
    assert Repository.open(repo_url).verify().ok


def _staged_bytes(staging: Path, old: set[str], *, complete: bool, whole: int = 0) -> int:
    """The size of the largest image being written into the uploads directory, ignoring
    the ``old`` uploads (what killed backups left); with ``complete`` only one written
    whole (``whole`` bytes: its last part is stored, it waits to be published)."""
    sizes = [0]
    for path in staging.glob("*/data") if staging.is_dir() else []:
        if path.parent.name in old:
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # published or removed meanwhile
            continue
        if not complete or size >= whole:
            sizes.append(size)
    return max(sizes)


def test_backup_killed_mid_write_leaves_nothing_listed(tmp_path: Path) -> None:
    """A real ``lamina backup --repo`` process killed with SIGKILL while it writes: the
    repository lists exactly what it listed before, and a prune clears the leftovers."""
    repo, ids = _repo_with_backups(tmp_path, 1)
    db = tmp_path / "db"
    with make_db(db) as d, d.write() as txn:  # enough data that a backup takes a moment
        for i in range(3000):
            txn.table("t").put(b"big%06d" % i, os.urandom(300))
    command = ("backup", str(db), "--repo", str(repo.path), "--full", "--compress", "none")
    assert cli.run_bytes(*command, timeout=60).returncode == 0
    ids = _listed(repo)[0]
    whole = (repo.path / L.image_key(ids[-1])).stat().st_size
    staging = repo.path / L.UPLOADS_DIR
    locks = RepositoryLock(LocalStorage(repo.path), "test", timeout=120)
    killed = 0
    # Kill at fractions of a whole image, measured in the bytes the backup has written, not
    # in seconds; 0.99: about all written, soon waiting to publish. Once the backup is
    # writing (it loaded the index already) the test holds the index lock, so the backup
    # cannot publish before the kill, however slow the test is.
    for fraction in (0.5, 0.7, 0.8, 0.9, 0.99):
        old = {p.name for p in staging.glob("*")} if staging.is_dir() else set()
        proc = cli.start(*command, text=False)
        def staged(p: Any = proc, o: set[str] = old) -> bool:
            return bool(_staged_bytes(staging, o, complete=False)) or p.poll() is not None

        def written(p: Any = proc, o: set[str] = old, f: float = fraction) -> bool:
            return p.poll() is not None or (
                _staged_bytes(staging, o, complete=True, whole=whole) >= whole if f == 1.0
                else _staged_bytes(staging, o, complete=False) >= f * whole)

        wait_for(staged, "the backup to stage bytes", max_interval=0.0005)
        with locks.index():
            wait_for(written, f"the backup to write {fraction:.0%} of its image",
                     max_interval=0.0005)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait(timeout=60)
            assert proc.returncode in (0, -signal.SIGKILL), proc.communicate()
        listed, _ = _listed(repo)
        assert listed[: len(ids)] == ids
        ids = listed  # a backup that finished before the kill is complete and listed
        report = repo.verify()
        assert report.ok, report.results
    index = Index.from_bytes((repo.path / L.INDEX_KEY).read_bytes())
    assert {str(i) for i in index.records} == set(ids)
    result = repo.prune(KeepPolicy(last=100))
    assert not result.plan.delete and _listed(repo)[0] == ids
    assert list((repo.path / L.STAGING_DIR).iterdir()) == []
    assert killed >= 1


def test_prune_refuses_while_an_image_is_unreadable(repo_url: str, tmp_path: Path) -> None:

    """F L1 L2 with L1's footer damaged: keep-last 1 must not delete F (it could be the
    base of the damaged L1 that L2 needs); prune refuses and deletes nothing."""
    repo, ids = _repo_with_backups(tmp_path, 3, repo_url)
    path = _Object(repo, L.image_key(ids[1]))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="unreadable"):
        repo.prune(KeepPolicy(last=1))
    assert all(_Object(repo, L.image_key(i)).exists() for i in ids)


def test_backup_killed_mid_upload_to_s3_leaves_nothing_listed(
        s3_server: S3Server, s3_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 analogue: a real ``lamina backup --repo s3://...`` process killed with
    SIGKILL at its multipart start, at its first part, at its last part (the others
    stored or in flight) and with every part stored but the upload not completed — each
    request held at the proxy (it never reaches the server) while the process is killed:
    the repository lists exactly what it listed before, every backup verifies, nothing but
    resumable upload state (and the killed process's lease) is left, and a prune and the
    next backup work."""
    repo, ids = _repo_with_backups(tmp_path, 1, s3_url)
    db = tmp_path / "db"
    with make_db(db) as d, d.write() as txn:  # a full image of three 8 MiB parts
        for i in range(5000):
            txn.table("t").put(b"big%06d" % i, os.urandom(4000))
    raw = RawStore(s3_url)
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    monkeypatch.setenv("LAMINA_LEASE_TTL", "3600")  # no renewal: the counted requests
    with S3Proxy(port) as proxy:
        command = ("backup", str(db), "--repo", s3_url, "--full", "--compress", "none",
                   "--s3-endpoint", proxy.endpoint)
        assert cli.run_bytes(*command, timeout=120).returncode == 0  # counted
        parts = proxy.counts["part"]
        assert parts >= 3, dict(proxy.counts)
        ids = _listed(repo)[0]
        before = set(raw.names())
        for kind, n in (("create", 1), ("part", 1), ("part", parts), ("complete", 1)):
            proxy.hold_at(n, (kind,))
            proc = cli.start(*command, text=False)
            try:
                wait_for(proxy.held.is_set, f"the backup's {kind} request {n}", proc=proc)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=60)
            assert proc.returncode == -signal.SIGKILL, (kind, n)
            assert _listed(repo) == (ids, None), (kind, n)
            assert repo.verify().ok, (kind, n)
            left = set(raw.names()) - before
            assert all(k.startswith((UPLOADS_PREFIX, f"{L.LOCKS_DIR}/")) for k in left), left
            described = {k.removeprefix(UPLOADS_PREFIX) for k in raw.names(UPLOADS_PREFIX)}
            uploading = {k.removeprefix(L.IMAGES_PREFIX).removesuffix(L.IMAGE_SUFFIX)
                         for k, _ in raw.multipart_uploads()}
            assert uploading <= described, (kind, n)  # every upload resumable
    result = repo.prune(KeepPolicy(last=100))
    assert not result.plan.delete and _listed(repo)[0] == ids
    assert cli.run_bytes(*command[:-2], timeout=120).returncode == 0
    assert len(_listed(repo)[0]) == len(ids) + 1 and repo.verify().ok
    assert not raw.names(f"{L.LOCKS_DIR}/")


def test_an_old_upload_description_without_parts_is_tidied(repo_url: str,
                                                            tmp_path: Path) -> None:
    """A backup killed between writing its upload's description and starting to store
    parts (on S3: before its multipart upload exists) leaves a description that no resume
    can open: once older than the default lease, the next backup of that database removes
    it (a younger one may be a backup that has not reached its VP yet: kept)."""
    repo, _ids = _repo_with_backups(tmp_path, 1, repo_url)
    raw = RawStore(repo_url)
    with make_db(tmp_path / "db") as db:
        db_id = str(db.identity.db_id)
    where = {}
    for age, name in ((2 * 3600, str(uuid.uuid4())), (60, str(uuid.uuid4()))):
        doc = json.loads(uploads.info_document(name, 8 << 20, {"database_id": db_id,
                                                                "image_id": name}))
        doc["created_ns"] -= age * 10**9
        key = f"{UPLOADS_PREFIX}{name}" if raw.s3 else \
            f"{L.UPLOADS_DIR}/{name}/{uploads.INFO_FILE}"
        raw.write(key, json.dumps(doc, sort_keys=True).encode())
        where[age] = key
    with make_db(tmp_path / "db") as db:
        repo.backup(db)
    assert not raw.exists(where[2 * 3600]) and raw.exists(where[60])
    assert len(_listed(repo)[0]) == 2
