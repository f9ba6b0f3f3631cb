"""What a prune's (and a backup's) removal of dead writers' uploads must never remove: an
upload that is not the repository's (another application's in the same bucket, a sibling
repository's), an upload a backup starts while the removal lists, and the live resumable
upload of another copy of the same database. Local and S3 (a real SeaweedFS server)."""

from __future__ import annotations

import builtins
import json
import os
import random
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import lamina
from lamina.repository import KeepPolicy, Repository
from lamina.repository import lease as lease_module
from lamina.repository.lease import Lease, read_lease
from lamina.repository.lock import EXCLUSIVE_KEY
from lamina.repository.resumable import LEASE_FIELD
from lamina.repository.s3client import S3Location
from lamina.repository.s3multipart import MultipartUpload
from lamina.repository.s3storage import S3Storage
from lamina.repository.s3uploads import S3_MIN_PART_SIZE, S3Uploads
from lamina.repository.stale import remove_stale_uploads
from lamina.repository.storage import LocalStorage, ObjectStat, Storage
from lamina.repository.upload_store import uploads_of
from lamina.repository.uploads import info_document
from support.s3fixtures import BUCKET
from support.s3server import S3Server, client
from support.waiting import GUARD_SECONDS

from .test_lease_loss import _continue, _stalled
from .test_store_stream import leftovers

HOUR_NS = 3600 * 10**9


def _small_repo(tmp_path: Path, url: str) -> tuple[Path, Repository]:
    db_path = tmp_path / "db"
    with lamina.open(db_path) as db:
        db.create_table("t")
        with db.write() as txn:
            txn.table("t").put(b"k", b"v")
        repo = Repository.init(url)
        repo.backup(db)
    return db_path, repo


def _pending_keys(s3: Any, bucket: str) -> set[str]:
    return {str(u["Key"]) for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_prune_of_a_bucket_root_repository_leaves_other_applications_uploads(
        tmp_path: Path, s3_server: S3Server) -> None:
    """A repository at a bucket's root shares the bucket's multipart uploads with whatever
    else writes there: a prune aborts only those of keys the repository writes."""
    bucket = f"lamina-root-{uuid.uuid4().hex[:8]}"
    s3 = client(s3_server.endpoint)
    _db, repo = _small_repo(tmp_path, f"s3://{bucket}")
    foreign = ["videos/holiday.mp4", "images-of-cats/1.jpg", "images/not-a-backup.bin"]
    for key in foreign:
        s3.create_multipart_upload(Bucket=bucket, Key=key)
    repo.prune(KeepPolicy(last=5))
    assert _pending_keys(s3, bucket) == set(foreign)


def test_prune_leaves_a_sibling_repositorys_uploads(tmp_path: Path, s3_url: str,
                                                    s3_server: S3Server) -> None:
    """``s3://b/repo`` is not ``s3://b/repo2``: the sibling's merge in progress stays."""
    s3 = client(s3_server.endpoint)
    _db, repo = _small_repo(tmp_path, s3_url)
    prefix = S3Location.parse(s3_url).prefix
    sibling = f"{prefix}2/images/{uuid.uuid4()}.lamina"
    s3.create_multipart_upload(Bucket=BUCKET, Key=sibling)
    ours = f"{prefix}/images/{uuid.uuid4()}.lamina"  # a dead merge's: garbage
    s3.create_multipart_upload(Bucket=BUCKET, Key=ours)
    removed = repo.prune(KeepPolicy(last=5)).stale_uploads_removed
    assert [u.name for u in removed] == [f"s3://{BUCKET}/{ours}"]
    assert sibling in _pending_keys(s3, BUCKET) and ours not in _pending_keys(s3, BUCKET)


class _BackupStartsBetweenListings(S3Storage):
    """An S3 storage on which a backup starts its upload (description, then multipart
    upload, as :meth:`S3Uploads.create` does) right between the two listings a stale-upload
    removal makes — the moment a prune that stalled past its lease would meet it."""

    def __init__(self, location: S3Location, name: str) -> None:
        super().__init__(location)
        self.name = name
        self.listings = 0

    def _between(self) -> None:
        self.listings += 1
        if self.listings == 2:
            lease = {LEASE_FIELD: time.time_ns() + HOUR_NS}
            S3Uploads(self).create(self.name, S3_MIN_PART_SIZE, lease)

    def list(self, prefix: str = "") -> builtins.list[ObjectStat]:
        self._between()
        return super().list(prefix)

    def unfinished_uploads(self) -> builtins.list[MultipartUpload]:
        self._between()
        return super().unfinished_uploads()


def test_an_upload_started_while_the_removal_lists_is_kept(tmp_path: Path,
                                                           s3_url: str) -> None:
    _small_repo(tmp_path, s3_url)
    name = str(uuid.uuid4())
    storage = _BackupStartsBetweenListings(S3Location.parse(s3_url), name)
    removed = remove_stale_uploads(storage)
    assert storage.listings == 2
    assert removed == []
    upload = S3Uploads(storage).open(name)  # still resumable: its multipart upload lives
    assert upload.parts_present() == {}


def _describe_old_live_upload(repo: Repository, db_id: str) -> str:
    """An upload of a backup of another copy of the database ``db_id`` (its pin lives in
    that copy): started two hours ago, its lease (mirrored) lasting another hour."""
    uploads = uploads_of(repo.storage)
    name = str(uuid.uuid4())
    info = {"database_id": db_id, "image_id": name, LEASE_FIELD: time.time_ns() + HOUR_NS}
    uploads.create(name, S3_MIN_PART_SIZE, info)
    doc = info_document(name, S3_MIN_PART_SIZE, info, time.time_ns() - 2 * HOUR_NS)
    storage = repo.storage
    if isinstance(storage, LocalStorage):
        (storage.root / "uploads" / name / "UPLOAD").write_bytes(doc)
    else:
        storage.put_bytes(f"uploads/{name}", doc)
    return name


def test_a_backup_keeps_the_live_upload_of_another_copy_of_its_database(
        tmp_path: Path, repo_url: str) -> None:
    """A copy of a database (same database id) backs up into the same repository; its
    backup was interrupted two hours ago under a long ``--resume-lease``. A backup of the
    original must not remove that upload while the lease lasts (the pin is in the copy,
    which the original cannot see: the mirrored lease is all it knows)."""
    db_path, repo = _small_repo(tmp_path, repo_url)
    with lamina.open(db_path, create=False) as db:
        name = _describe_old_live_upload(repo, str(db.identity.db_id))
        repo.backup(db)
    assert [u.name for u in uploads_of(repo.storage).list()] == [name]
    uploads_of(repo.storage).open(name)


def _merge_in_progress(repo: Repository) -> str:
    """What a merge of a prune holding the lock leaves while it streams: an unfinished
    multipart upload of an image key (S3), a dot-temporary beside the images (local)."""
    storage = repo.storage
    key = f"images/{uuid.uuid4()}.lamina"
    if isinstance(storage, S3Storage):
        s3 = storage.client
        s3.create_multipart_upload(Bucket=storage.bucket, Key=storage.object_key(key))
        return storage.object_url(key)
    assert isinstance(storage, LocalStorage)
    temp = storage.root / "images" / f".{key.split('/')[1]}.tmp-0123456789ab"
    temp.write_bytes(b"half a merged image")
    return str(temp)


def test_a_prune_stalled_past_its_lease_removes_no_live_writers_upload(
        tmp_path: Path, repo_url: str) -> None:
    """A prune stopped (SIGSTOP) after planning, its 3 s lease expired; another prune
    takes the lock and streams a merge. The stalled prune, continued, stops with its lost
    lease (exit 8) before removing anything: the new holder's merge upload lives on."""
    _db, repo = _small_repo(tmp_path, repo_url)
    stalled = _stalled("prune", "--repo", repo_url, "--keep-last", "5",
                       point="repository.prune_planned")
    try:
        with Repository.open(repo_url, lock_timeout=GUARD_SECONDS).exclusive("prune"):
            live = _merge_in_progress(repo)
            code, err = _continue(stalled)
            assert leftovers(repo) == [live]
    finally:
        if stalled.returncode is None:
            stalled.kill()
            stalled.wait()
    assert code == 8, err
    assert len(err.strip().splitlines()) == 1 and "lease" in err, err


def test_an_oversized_lease_object_is_never_read_whole(tmp_path: Path, repo_url: str) -> None:
    """32 MiB of garbage where the exclusive lease goes: a lock taker reads at most a
    lease's bound of it (not the whole object into memory), treats it as stale and takes
    it over by compare-and-swap."""
    _db, repo = _small_repo(tmp_path, repo_url)
    junk = random.Random(7).randbytes(32 << 20)
    repo.storage.put_bytes(EXCLUSIVE_KEY, junk)
    tracemalloc.start()
    try:
        found = read_lease(repo.storage, EXCLUSIVE_KEY)
        lease = Lease(repo.storage, EXCLUSIVE_KEY, "prune", ttl=30.0)
        assert lease.try_acquire()  # unparseable: stale, taken over
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    try:
        assert found is not None and found[0] is None
        assert peak < 8 << 20, f"{peak} bytes allocated to read a lease"
        got = read_lease(repo.storage, EXCLUSIVE_KEY)
        assert got is not None and got[0] is not None and got[0].owner == lease.owner
    finally:
        lease.release()
    assert not repo.storage.exists(EXCLUSIVE_KEY)


def _crafted(storage: Storage, **fields: object) -> None:
    """A lease object at ``locks/exclusive`` as this host's processes write them, with
    ``fields`` changed."""
    now = time.time_ns()
    doc: dict[str, object] = {"magic": "LAMINA-LEASE", "version": 1, "owner": "f" * 32,
                              "host": lease_module._HOST, "boot": lease_module._BOOT,
                              "pid": os.getpid(), "pid_started": None, "operation": "prune",
                              "acquired_ns": now, "expires_ns": now + 30 * 10**9}
    doc.update(fields)
    storage.put_bytes(EXCLUSIVE_KEY, json.dumps(doc).encode())


def test_crafted_lease_objects_neither_crash_nor_lock_forever(tmp_path: Path,
                                                             repo_url: str) -> None:
    """A pid no process has (huge: no C long; 0 and -1 would name process groups, alive
    forever), an expiry in a far year: garbage, so stale, taken over at once."""
    _db, repo = _small_repo(tmp_path, repo_url)
    far = time.time_ns() + 500 * 365 * 24 * HOUR_NS
    for fields in ({"pid": 2**70}, {"pid": 0}, {"pid": -1},
                   {"host": "elsewhere", "boot": "b", "expires_ns": far}):
        _crafted(repo.storage, **fields)
        lease = Lease(repo.storage, EXCLUSIVE_KEY, "prune", ttl=30.0)
        assert lease.try_acquire(), fields
        lease.release()
    assert repo.prune(KeepPolicy(last=5)).plan.delete == []


def test_prune_never_empties_a_directory_the_staging_link_points_to(tmp_path: Path) -> None:
    """A user linked a local repository's staging directory (``tmp``) elsewhere (a bigger
    disk): a prune clears the repository's own leftovers, never the files of the linked
    directory, which are not the repository's."""
    _db, repo = _small_repo(tmp_path, str(tmp_path / "repo"))
    scratch = tmp_path / "scratch"
    (scratch / "project").mkdir(parents=True)
    (scratch / "precious.txt").write_bytes(b"not the repository's")
    (scratch / "project" / "notes.txt").write_bytes(b"nor this")
    staging = tmp_path / "repo" / "tmp"
    if staging.exists():
        staging.rmdir()
    staging.symlink_to(scratch, target_is_directory=True)
    repo.prune(KeepPolicy(last=5))
    assert (scratch / "precious.txt").read_bytes() == b"not the repository's"
    assert (scratch / "project" / "notes.txt").read_bytes() == b"nor this"
    (scratch / f"merge-{uuid.uuid4().hex}.lamina").write_bytes(b"a dead merge's")
    removed = repo.prune(KeepPolicy(last=5)).stale_files_removed
    assert removed == 1 and sorted(p.name for p in scratch.iterdir()) == \
        ["precious.txt", "project"]


def test_prune_never_removes_foreign_files_of_a_linked_uploads_directory(
        tmp_path: Path) -> None:
    """The same for ``uploads/`` linked to another directory: what is not an upload's
    (named by an image id) is not the repository's."""
    _db, repo = _small_repo(tmp_path, str(tmp_path / "repo"))
    big = tmp_path / "big"
    (big / "photos").mkdir(parents=True)
    (big / "todo.txt").write_bytes(b"mine")
    uploads = tmp_path / "repo" / "uploads"
    if uploads.exists():
        uploads.rmdir()
    uploads.symlink_to(big, target_is_directory=True)
    dead = str(uuid.uuid4())
    (big / dead).mkdir()  # a backup killed before it described its upload
    removed = repo.prune(KeepPolicy(last=5)).stale_uploads_removed
    assert [u.name for u in removed] == [dead]
    assert sorted(p.name for p in big.iterdir()) == ["photos", "todo.txt"]


def test_a_description_stating_a_nonsense_lease_end_is_removed_in_one_report(
        tmp_path: Path, repo_url: str) -> None:
    _db, repo = _small_repo(tmp_path, repo_url)
    uploads = uploads_of(repo.storage)
    name = str(uuid.uuid4())
    uploads.create(name, S3_MIN_PART_SIZE, {LEASE_FIELD: -10**30})
    [gone] = repo.prune(KeepPolicy(last=5)).stale_uploads_removed
    assert gone.name == name and "no representable time" in gone.reason
    assert uploads.entries() == []
