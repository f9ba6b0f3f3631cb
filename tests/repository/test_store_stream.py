"""Synthetic fulls stream from the store back to the store, proven as they are written and
published over the layer only then; what a killed merge or backup leaves is removed by the
next prune (a resumable backup's upload only once its lease ended). Local and S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import lamina
from lamina.backup.verifying_stream import VerifyingStream
from lamina.errors import CancelledError, CorruptionError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.s3storage import S3Storage
from lamina.repository.staged_image import StagedImage
from lamina.repository.storage import LocalStorage
from lamina.repository.upload_store import uploads_of
from support import cli
from support.waiting import wait_for

from .helpers import content

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: A backup of a database of this many 1,000-byte random values is larger than one
#: 8 MiB part of the S3 storage (so a merge's upload is a multipart upload).
ROWS = 10_000


def populate(path: Path, seed: int, rows: int, start: int = 0) -> None:
    rng = random.Random(seed)
    with lamina.open(path) as db:
        if "t" not in {t.name for t in db.tables()}:
            db.create_table("t")
        with db.write() as txn:
            table = txn.table("t")
            for i in range(start, start + rows):
                table.put(b"k%06d" % i, rng.randbytes(1000))


def full_and_layer(tmp_path: Path, repo_url: str, rows: int = ROWS) -> tuple[Path, str, str]:
    """A database, a repository with a full backup of it and a layer on that full."""
    db_path = tmp_path / "db"
    populate(db_path, 1, rows)
    repo = Repository.init(repo_url)
    with lamina.open(db_path, create=False) as db:
        full = repo.backup(db).backup_id
    populate(db_path, 2, 50, start=rows)
    with lamina.open(db_path, create=False) as db:
        layer = repo.backup(db).backup_id
    return db_path, str(full), str(layer)


def object_digest(repo: Repository, backup_id: str) -> str:
    return hashlib.sha256(repo.storage.get_bytes(L.image_key(uuid.UUID(backup_id)))
                          ).hexdigest()


def leftovers(repo: Repository) -> list[str]:
    """Unfinished uploads (S3) or temporary objects (local) under the repository."""
    storage = repo.storage
    if isinstance(storage, S3Storage):
        return [u.where for u in storage.unfinished_uploads()]
    assert isinstance(storage, LocalStorage)
    return [str(p) for p in (storage.root / "images").iterdir() if p.name.startswith(".")]


def write_bytes() -> int:
    """Bytes this process has caused to be written to disks (/proc/self/io)."""
    with open("/proc/self/io") as f:
        fields = dict(line.split(": ") for line in f.read().splitlines())
    return int(fields["write_bytes"])


# ---------------------------------------------------------------- the verifying stream
def test_verifying_stream_proves_what_passes_and_refuses_damage(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    populate(db_path, 3, 300)
    with lamina.open(db_path, create=False) as db:
        db.backup(tmp_path / "img")
    image = (tmp_path / "img").read_bytes()
    good = io.BytesIO()
    stream = VerifyingStream(good, depth=2)
    for at in range(0, len(image), 7_777):
        stream.write(image[at:at + 7_777])
    report = stream.finish()
    assert report.size == len(image) and good.getvalue() == image
    for damage in (len(image) // 2, len(image) - 3):
        bad = bytearray(image)
        bad[damage] ^= 0x40
        stream = VerifyingStream(io.BytesIO(), depth=2)
        with pytest.raises(CorruptionError):
            for at in range(0, len(bad), 7_777):
                stream.write(bytes(bad[at:at + 7_777]))
            stream.finish()
    short = VerifyingStream(io.BytesIO(), depth=2)
    short.write(image[:len(image) // 2])
    with pytest.raises(CorruptionError, match="truncated"):
        short.finish()
    stuck = VerifyingStream(io.BytesIO(), depth=1)  # abort never blocks, whatever is queued
    stuck.write(image[:100])
    stuck.abort()


def test_staged_image_publishes_only_a_proven_image(tmp_path: Path, repo_url: str) -> None:
    db_path = tmp_path / "db"
    populate(db_path, 4, 300)
    with lamina.open(db_path, create=False) as db:
        db.backup(tmp_path / "img")
    image = (tmp_path / "img").read_bytes()
    repo = Repository.init(repo_url)
    repo.storage.put_bytes("images/x.lamina", b"the old object")
    with StagedImage(repo.storage, "images/x.lamina") as staged:  # half an image
        staged.stream.write(image[: len(image) // 2])
        with pytest.raises(CorruptionError):
            staged.publish()
    assert repo.storage.get_bytes("images/x.lamina") == b"the old object"
    with StagedImage(repo.storage, "images/x.lamina") as staged:  # left without publish
        staged.stream.write(image)
    assert repo.storage.get_bytes("images/x.lamina") == b"the old object"
    assert leftovers(repo) == []
    with StagedImage(repo.storage, "images/x.lamina") as staged:
        staged.stream.write(image)
        assert staged.publish() == len(image)
    assert repo.storage.get_bytes("images/x.lamina") == image
    assert leftovers(repo) == []


# ---------------------------------------------------------------- merges
def test_merge_streams_into_the_store_without_a_local_copy(tmp_path: Path,
                                                           repo_url: str) -> None:
    db_path, full, layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    layer_size = repo.storage.stat(L.image_key(uuid.UUID(layer))).size
    before = write_bytes()
    record = repo.merge_to_full(layer)
    written = write_bytes() - before
    assert record.kind == "full" and record.synthetic and record.backup_id == uuid.UUID(layer)
    assert record.size > 8 << 20 > layer_size
    if isinstance(repo.storage, S3Storage):
        # Working state only (the assembled pages, about the database's size): without
        # the image (> 8 MiB) on top of it, as a staged local copy would add.
        assert written < ROWS * 1000 * 1.5, written
        assert list(repo.storage.staging_dir().iterdir()) == []
    assert leftovers(repo) == []
    report = repo.verify(layer)
    assert report.ok and report.results[0]["chain"] == [layer]
    out = tmp_path / "restored"
    repo.restore(out, id=layer)
    assert content(out) == content(db_path)
    del full


def test_a_failed_merge_publishes_nothing(tmp_path: Path, repo_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _db, _full, layer = full_and_layer(tmp_path, repo_url, rows=2 * ROWS)
    repo = Repository.open(repo_url)
    digest = object_digest(repo, layer)
    written = threading.Event()
    original = VerifyingStream.write

    def count(self: VerifyingStream, data: bytes, /) -> int:
        n = original(self, data)
        if self.bytes_written > 9 << 20:  # S3: after the first 8 MiB part went out
            written.set()
        return n

    monkeypatch.setattr(VerifyingStream, "write", count)
    with pytest.raises(CancelledError):
        repo.merge_to_full(layer, cancel=written)
    assert written.is_set()
    assert object_digest(repo, layer) == digest  # the layer, byte for byte
    assert leftovers(repo) == []
    entries, _ = repo.list()
    assert [e.record.kind for e in entries] == ["full", "layer"]


# ---------------------------------------------------------------- stale uploads
def _prune(repo_url: str, *args: str) -> dict[str, object]:
    proc = cli.run_ok("prune", "--repo", repo_url, "--json", *args)
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def test_a_killed_merge_leaves_nothing_visible_and_prune_removes_it(
        tmp_path: Path, repo_url: str) -> None:
    db_path, full, layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    digest = object_digest(repo, layer)
    env = {**os.environ, "LAMINA_FAILPOINT": "backup.image_chunk_written:10"}
    proc = cli.run("prune", "--repo", repo_url, "--keep-last", "1", env=env)
    assert proc.returncode == -9, proc.stderr  # killed in the middle of the merge
    left = leftovers(repo)
    assert left, "the killed merge left its upload (S3) or temporary object (local)"
    assert object_digest(repo, layer) == digest
    assert {str(e.record.backup_id) for e in repo.list()[0]} == {full, layer}
    report = _prune(repo_url, "--keep-last", "1")
    if isinstance(repo.storage, S3Storage):
        stale = report["stale_uploads_removed"]
        assert isinstance(stale, list)
        assert [u["kind"] for u in stale] == ["multipart upload"]
        assert stale[0]["name"] == left[0]
    else:
        assert report["stale_files_removed"] >= 1  # type: ignore[operator]
    assert leftovers(repo) == []
    assert report["merged"] == [layer] and report["deleted"] == [full]
    out = tmp_path / "restored"
    repo.restore(out, id=layer)
    assert content(out) == content(db_path)


CHILD = """
import sys
import lamina
from lamina.repository import Repository
db = lamina.open(sys.argv[1], create=False)
repo = Repository.open(sys.argv[2])
repo.backup(db, full=True, part_size=int(sys.argv[3]), resume_lease=float(sys.argv[4]))
"""


def _killed_backup(db_path: Path, repo_url: str, lease: float) -> None:
    env = {**os.environ, "LAMINA_FAILPOINT": "backup.upload_part_stored:1",
           "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(db_path), repo_url,
                           str(5 << 20), str(lease)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == -9, proc.stderr


def test_prune_keeps_a_resumable_upload_while_its_lease_lasts(tmp_path: Path,
                                                             repo_url: str) -> None:
    db_path, _full, layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    _killed_backup(db_path, repo_url, 3600.0)
    [upload] = uploads_of(repo.storage).list()
    report = _prune(repo_url, "--keep-last", "5")
    assert report["stale_uploads_removed"] == []
    assert [u.name for u in uploads_of(repo.storage).list()] == [upload.name]
    resumed = cli.run_ok("backup", str(db_path), "--repo", repo_url, "--resume", "--json")
    parts = json.loads(resumed.stdout)["parts"]
    assert parts["parts_skipped"] >= 1  # what the killed backup stored was kept
    assert uploads_of(repo.storage).list() == [] and leftovers(repo) == []
    del layer


def test_prune_removes_a_resumable_upload_whose_lease_ended(tmp_path: Path,
                                                           repo_url: str) -> None:
    db_path, _full, _layer = full_and_layer(tmp_path, repo_url)
    repo = Repository.open(repo_url)
    _killed_backup(db_path, repo_url, 1.0)
    [upload] = uploads_of(repo.storage).list()
    until = int(upload.info["lease_until_ns"])
    assert until > upload.created_ns
    wait_for(lambda: time.time_ns() > until, "the interrupted backup's lease to end")
    report = _prune(repo_url, "--keep-last", "5")
    stale = report["stale_uploads_removed"]
    assert isinstance(stale, list) and stale[0]["kind"] == "resumable upload"
    assert stale[0]["name"] == upload.name and "lease ended" in stale[0]["reason"]
    assert uploads_of(repo.storage).list() == [] and leftovers(repo) == []
    proc = cli.run("backup", str(db_path), "--repo", repo_url, "--resume")
    assert proc.returncode != 0 and "expired" in proc.stderr.lower(), proc.stderr


def test_prune_removes_damaged_upload_descriptions(tmp_path: Path, repo_url: str) -> None:
    _db, _full, _layer = full_and_layer(tmp_path, repo_url, rows=100)
    repo = Repository.open(repo_url)
    name = str(uuid.uuid4())
    if isinstance(repo.storage, LocalStorage):
        (repo.storage.root / "uploads" / name).mkdir(parents=True)
        (repo.storage.root / "uploads" / name / "UPLOAD").write_bytes(b"{not json")
        (repo.storage.root / "uploads" / "stray").write_bytes(b"x")
        expected = {name, "stray"}
    else:
        repo.storage.put_bytes(f"uploads/{name}", b"{not json")
        expected = {name}
    report = _prune(repo_url, "--keep-last", "5")
    stale = report["stale_uploads_removed"]
    assert isinstance(stale, list)
    assert {u["name"] for u in stale} == expected
    assert all("damaged" in u["reason"] for u in stale)
    assert uploads_of(repo.storage).entries() == []
    if isinstance(repo.storage, LocalStorage):  # a description never written
        (repo.storage.root / "uploads" / name).mkdir()
    else:
        repo.storage.put_bytes(f"uploads/{name}", b"{not json")
    text = cli.run_ok("prune", "--repo", repo_url, "--keep-last", "5").stdout
    assert "stale uploads removed: 1\n" in text and f"resumable upload {name}" in text, text
