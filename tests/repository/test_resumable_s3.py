"""Resumable backups into an S3 repository (the local SeaweedFS server): a real backup
process killed with SIGKILL after storing parts of its multipart upload leaves the upload
and its pin; the resume finds the stored parts by listing the store, regenerates the image
from the pin, skips every part whose MD5 (its ETag) matches — so the parts it keeps are the
bytes it would have written — stores the rest (up to 4 parts at once) and publishes an
image that restores to exactly the state at the pinned VP. (Byte identity with an
uninterrupted run is shown on a local repository in test_resumable.py; the same code runs
here, over multipart uploads.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lamina
from lamina.core import pins
from lamina.core.crypto.kdf import CHEAP_KDF_ENV
from lamina.database import Database
from lamina.errors import UsageError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.s3uploads import S3_MIN_PART_SIZE, S3Uploads
from support.waiting import wait_for

SRC = str(Path(__file__).resolve().parents[2] / "src")
PART = S3_MIN_PART_SIZE

CHILD = """
import sys
import lamina
from lamina.repository import Repository
from lamina.repository import layout as L
db = lamina.open(sys.argv[1], create=False)
repo = Repository.open(sys.argv[2], passphrase=lambda: b"pw")
result = repo.backup(db, full=True, part_size=int(sys.argv[3]))
print(result.backup_id, flush=True)
db.close()
"""


def populate(db: Database, seed: int, n: int) -> None:
    """Incompressible btree values (an image of several 5 MiB parts) and archive rows."""
    rng = random.Random(seed)
    if "t" not in {t.name for t in db.tables()}:
        db.create_table("t")
        db.create_table("ev", "archive")
    with db.write() as txn:
        table = txn.table("t")
        for i in range(n):
            table.put(b"k%06d" % i, rng.randbytes(1000))
    db.append_many("ev", [rng.randbytes(200) for _ in range(n // 10)])


def content(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    with lamina.open(path, create=False, readonly=True) as db, db.read() as txn:
        return dict(txn.table("t").items()), [row for _i, row in db.scan("ev")]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.mark.parametrize(("stored", "encrypted"), [(1, False), (2, False), (2, True)])
def test_killed_s3_backup_resumes_from_its_stored_parts(s3_url: str, tmp_path: Path,
                                                        stored: int, encrypted: bool,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Encrypted, the resume seals under a fresh image key (a nonce is never used twice,
    even if a regenerated chunk differed), so it stores every part again: the upload then
    lists part numbers twice, and the completion must take the parts just stored."""
    monkeypatch.setenv(CHEAP_KDF_ENV, "1")
    db_path = tmp_path / "db"
    Repository.init(s3_url, passphrase=b"pw" if encrypted else None)
    with lamina.open(db_path) as db:
        populate(db, 1, 40_000)  # ~40 MB of incompressible values: 8 parts
    at_vp = content(db_path)
    env = {**os.environ, "LAMINA_FAILPOINT": f"backup.upload_part_stored:{stored}",
           "LAMINA_FAILPOINT_ACTION": "stop", "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), s3_url, str(PART)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: _state(proc.pid) == "T", "the backup to stop at its failpoint",
             proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    repo = Repository.open(s3_url, passphrase=lambda: b"pw")
    assert repo.list()[0] == []  # nothing published
    [pin] = pins.load(db_path)
    upload = S3Uploads(repo.storage).open(pin.pin_id)  # type: ignore[arg-type]
    # Parts go up 4 at once: the kill leaves the part that stopped the child stored and
    # maybe some of its neighbours (any subset; a resume stores the missing ones).
    present = upload.parts_present()
    assert len(present) >= stored

    with lamina.open(db_path, create=False) as db:
        db.put("t", b"after-the-kill", b"not in the image")  # writers go on meanwhile
        result = repo.backup(db, resume=True)
    assert result.resumed and str(result.backup_id) == pin.pin_id
    if encrypted:
        assert result.parts["parts_skipped"] == 0
        assert result.parts["parts_replaced"] == len(present)
    else:
        assert result.parts["parts_skipped"] == len(present)
        assert result.parts["parts_replaced"] == 0
    info = repo.storage.stat(L.image_key(result.backup_id))
    skipped = result.parts["parts_skipped"]
    assert result.parts["parts_stored"] + skipped == -(-info.size // PART)
    assert not pins.load(db_path)
    assert S3Uploads(repo.storage).list() == []  # no upload description is left
    assert repo.verify(str(result.backup_id), deep=True).ok
    out = tmp_path / "restored"
    repo.restore(out, id=str(result.backup_id))
    assert content(out) == at_vp


def test_s3_parts_must_be_at_least_five_mib(s3_url: str) -> None:
    repo = Repository.init(s3_url)
    with pytest.raises(UsageError, match="at least"):
        S3Uploads(repo.storage).create(  # type: ignore[arg-type]
            "00000000-0000-4000-8000-000000000000", 64 * 1024, {})
