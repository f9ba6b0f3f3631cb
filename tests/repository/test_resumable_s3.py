"""What is S3's own in resuming a backup (the rest of the resumable suite runs on local and
S3 repositories alike: test_resumable.py): a part's checksum is its ETag, the MD5 of its
bytes, so a resume compares regenerated parts with the stored ones without downloading any;
and every part but the last has at least 5 MiB."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import lamina
from lamina.core.crypto.kdf import CHEAP_KDF_ENV
from lamina.errors import UsageError
from lamina.repository import Repository
from lamina.repository.s3uploads import S3_MIN_PART_SIZE, S3Uploads

from .resumable_sites import KINDS, PASSPHRASE, content, make_site, pin_of

SRC = str(Path(__file__).resolve().parents[2] / "src")

CHILD = """
import sys
import lamina
from lamina.repository import Repository
db = lamina.open(sys.argv[1], create=False)
repo = Repository.open(sys.argv[2], passphrase=lambda: sys.argv[4].encode())
repo.backup(db, full=True, part_size=int(sys.argv[3]))
"""


@pytest.mark.parametrize("encrypted", [False, True])
def test_the_resume_keeps_the_parts_whose_etag_is_their_md5(s3_url: str, tmp_path: Path,
                                                            encrypted: bool,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Killed (SIGKILL, at its 2nd stored part: up to 4 are in flight at once), the backup
    leaves a multipart upload whose listed ETags are the MD5s of those parts of the image
    the resume publishes; the resume stores only the other parts (encrypted too: it seals
    under the salt its pin records)."""
    monkeypatch.setenv(CHEAP_KDF_ENV, "1")
    site = make_site(KINDS["s3"], tmp_path, s3_url, big=True, encrypted=encrypted)
    at_vp = content(site.db)
    env = {**os.environ, "LAMINA_FAILPOINT": "backup.upload_part_stored:2",
           "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(site.db), s3_url,
                           str(S3_MIN_PART_SIZE), PASSPHRASE.decode()],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pin = pin_of(site.db)
    assert (pin.seal is not None) == encrypted
    listed = site.parts(pin.pin_id)
    assert len(listed) >= 2
    with lamina.open(site.db, create=False) as db:
        db.put("t", b"after-the-kill", b"not in the image")  # writers go on meanwhile
        result = site.repo().backup(db, resume=True)
    assert str(result.backup_id) == pin.pin_id
    # A part whose request was sent whole before the kill may be stored after the listing
    # above (the server finishes it): at most the others in flight.
    skipped = result.parts["parts_skipped"]
    assert len(listed) <= skipped <= len(listed) + S3Uploads.concurrency - 1
    assert result.parts["parts_replaced"] == 0
    image = site.image(pin.pin_id)
    for number, part in listed.items():
        data = image[(number - 1) * S3_MIN_PART_SIZE:number * S3_MIN_PART_SIZE]
        assert part.checksum == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert result.parts["parts_stored"] == site.total_parts(pin.pin_id) - skipped
    assert S3Uploads(site.repo().storage).list() == []  # type: ignore[arg-type]
    assert site.leftovers() == []
    assert site.repo().verify(pin.pin_id, deep=True).ok
    out = tmp_path / "restored"
    site.repo().restore(out, id=pin.pin_id)
    assert content(out) == at_vp


def test_s3_parts_must_be_at_least_five_mib(s3_url: str) -> None:
    repo = Repository.init(s3_url)
    with pytest.raises(UsageError, match="at least"):
        S3Uploads(repo.storage).create(  # type: ignore[arg-type]
            "00000000-0000-4000-8000-000000000000", 64 * 1024, {})
