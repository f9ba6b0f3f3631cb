"""Resumable backups into a repository, local and S3 (the local SeaweedFS server): a backup
stopped or killed (SIGKILL, a real process) at chosen points, at seed-chosen chunks and at
seed-chosen numbers of stored parts, then resumed, publishes the very image the
uninterrupted backup published (the same bytes, so the same image hash), plain or
encrypted, storing only the parts that were missing; writers go on meanwhile without
reusing the pinned pages; a pin's lease runs out; and ``--abandon`` gives the pinned pages
back. Sizes per kind and the copy of a stopped backup's state: ``resumable_sites``."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lamina
from lamina.backup.image_reader import read_info
from lamina.core import pins
from lamina.core.crypto.kdf import CHEAP_KDF_ENV
from lamina.database import Database
from lamina.errors import (
    ChainError,
    LockedError,
    NotFoundError,
    PinExpiredError,
    StorageError,
)
from lamina.repository import layout as L
from lamina.repository.s3uploads import S3Upload, S3Uploads
from lamina.repository.uploads import LocalUpload
from support import cli
from support.waiting import wait_for

from .resumable_sites import (
    KINDS,
    PASSPHRASE,
    Kind,
    Site,
    content,
    make_site,
    pin_of,
    populate,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: The child: one repository backup (or resume) with the site's parts; prints its id.
CHILD = """
import sys
import lamina
from lamina.repository import Repository
db = lamina.open(sys.argv[1], create=False)
repo = Repository.open(sys.argv[2], passphrase=lambda: sys.argv[6].encode())
result = repo.backup(db, full=sys.argv[3] == "full", resume=sys.argv[3] == "resume",
                     part_size=int(sys.argv[4]), resume_lease=float(sys.argv[5]))
print(result.backup_id, flush=True)
db.close()
"""

#: A "big" site: values scaled so that an S3 image has several 5 MiB parts.
BIG = pytest.mark.parametrize("big", [pytest.param(True, id="big")])


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    """The repository kind: local, then S3."""
    return KINDS[request.param]


@pytest.fixture
def big() -> bool:
    """Whether the site's values are scaled for several S3 parts (overridden by BIG)."""
    return False


@pytest.fixture
def encrypted() -> bool:
    """Whether the repository is encrypted (overridden by a test's parameter)."""
    return False


@pytest.fixture
def site(kind: Kind, big: bool, encrypted: bool, tmp_path: Path,
         request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Site:
    """A site of ``kind`` (:func:`make_site`)."""
    monkeypatch.setenv(CHEAP_KDF_ENV, "1")
    url = None if kind.name == "local" else str(request.getfixturevalue("s3_url"))
    return make_site(kind, tmp_path / "a", url, big=big, encrypted=encrypted)


def start_child(site: Site, point: str, *, mode: str = "auto", lease: float = 3600.0,
                action: str = "stop") -> subprocess.Popen[str]:
    """A backup (``mode`` auto, full or resume) of ``site`` in a new process, armed at
    ``point`` (none if empty) to ``action`` (stop or kill) itself."""
    env = {**os.environ, "LAMINA_FAILPOINT": point, "LAMINA_FAILPOINT_ACTION": action,
           "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(site.db), site.url, mode,
                             str(site.part), str(lease), PASSPHRASE.decode()],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Wait until the child is stopped (at its failpoint, or by the test's SIGSTOP)."""
    wait_for(lambda: _state(proc.pid) == "T", "the backup to stop", proc=proc)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def killed(proc: subprocess.Popen[str]) -> None:
    """Wait for a child that kills itself at its failpoint."""
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err


def resume_in(site: Site) -> tuple[str, dict[str, int]]:
    """Resume the interrupted backup of ``site`` in this process; checks that its pin
    and every upload are gone after it."""
    with lamina.open(site.db, create=False) as db:
        result = site.repo().backup(db, resume=True)
        assert result.resumed
        assert not pins.load(site.db)  # released on completion
    assert site.leftovers() == []
    return str(result.backup_id), result.parts


def finish_uninterrupted(site: Site, proc: subprocess.Popen[str]) -> tuple[str, bytes]:
    """Let the stopped child run to its end; its backup id and published image."""
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    backup_id = out.strip()
    return backup_id, site.image(backup_id)


#: Where a test stops the backup: fixed points; "chunk" is a seed-chosen chunk in the
#: kind's range (after some parts are stored).
POINTS = ["backup.pinned", "backup.upload_part_stored:1", "backup.upload_part_stored:4",
          "chunk", "backup.before_publish", "backup.after_publish"]
CASES = ([(p, i % 2 == 0, False) for i, p in enumerate(POINTS)]
         + [("backup.upload_part_stored:2", False, True), ("chunk", True, True),
            ("backup.before_publish", False, True)])


@BIG
@pytest.mark.parametrize(("point", "full", "encrypted"), CASES)
def test_resume_publishes_the_uninterrupted_image(site: Site, tmp_path: Path, point: str,
                                                  full: bool, encrypted: bool) -> None:
    """Stopped at ``point``, the backup's state is copied as a kill would leave it; the
    original then runs to its end (the uninterrupted image) and the copy is resumed: the
    two images are the same bytes, and the resume stored exactly the parts the copy did
    not hold. Encrypted, the pin records the image's salt (never a key), so the resume
    seals the same bytes and skips the stored parts too."""
    if point == "chunk":
        point = f"backup.image_chunk_written:{random.Random(7).randrange(*site.kind.chunks)}"
    proc = start_child(site, point, mode="full" if full else "auto")
    try:
        wait_stopped(proc)
        crash = site.copy(tmp_path / "crash")
    finally:
        proc.send_signal(signal.SIGCONT)
    backup_id, uninterrupted = finish_uninterrupted(site, proc)
    copy = crash.site
    pin = pin_of(copy.db)
    assert pin.pin_id == backup_id and pin.expires_ns > time.time_ns()
    if encrypted:
        assert pin.seal is not None and bytes.fromhex(pin.seal.salt) in uninterrupted[:4096]
        assert set(pins.PinRecord.describe(pin)) & {"seal", "resume"} == set()
    else:
        assert pin.seal is None
    present = crash.parts_at_copy(backup_id)
    crash.finish(backup_id, uninterrupted)
    resumed_id, parts = resume_in(copy)
    assert resumed_id == backup_id
    assert copy.image(resumed_id) == uninterrupted
    if point == "backup.after_publish":
        assert parts["parts_stored"] == 0
    else:
        total = site.total_parts(backup_id)
        assert parts["parts_replaced"] == 0
        assert parts["parts_skipped"] == len(present), (parts, sorted(present))
        assert parts["parts_stored"] == total - len(present)
        if point.startswith("backup.upload_part_stored:"):
            assert len(present) >= int(point.rsplit(":", 1)[1])
        if point == "backup.before_publish":
            assert len(present) == total  # every part was stored: none again
    assert copy.repo().verify(resumed_id).ok


#: The seeds of the seeded kills (another set: LAMINA_TEST_RESUME_SEEDS=7,8,9,10).
SEEDS = [int(s) for s in os.environ.get("LAMINA_TEST_RESUME_SEEDS", "3,4,5,6").split(",")]


@BIG
@pytest.mark.parametrize("seed", SEEDS)
def test_killed_backup_resumes_while_writers_go_on(site: Site, tmp_path: Path,
                                                  seed: int) -> None:
    """A full backup (the most parts) stopped at a seed-chosen moment: at a chunk (its
    failpoint; on S3 after a part is stored, with up to 4 in flight) or as soon as a
    seed-chosen number of its parts is stored (on S3 others are in flight then). The
    state is copied as a kill leaves it (parts the copy does not list are lost); the
    original runs on and publishes the uninterrupted image. In the
    copy, a lot is written (every key rewritten several times, the archive table
    optimized): the pinned pages are not reused. Its resume is killed with SIGKILL after
    storing a seed-chosen number of parts (on S3 with others in flight), and resumed
    again: that publishes the uninterrupted image, skipping every part stored before,
    and restores exactly the state of the validity point."""
    rng = random.Random(seed)
    at_vp = content(site.db)
    at_chunk = seed % 2 == 1
    if at_chunk:
        chunk = rng.randrange(*site.kind.full_chunks)
        proc = start_child(site, f"backup.image_chunk_written:{chunk}", mode="full")
    else:
        # Stopped by its own failpoint once its part ``count`` is stored (other parts in
        # flight on S3): a poll from outside could miss the moment on a busy machine.
        count = rng.randrange(1, 3)
        proc = start_child(site, f"backup.upload_part_stored:{count}", mode="full")
    try:
        wait_stopped(proc)
        crash = site.copy(tmp_path / "crash")
    finally:
        proc.send_signal(signal.SIGCONT)
    backup_id, uninterrupted = finish_uninterrupted(site, proc)
    total = site.total_parts(backup_id)
    copy = crash.site
    present = crash.parts_at_copy(backup_id)
    assert 1 <= len(present) < total - 1, (len(present), total)
    crash.finish(backup_id, uninterrupted)
    with lamina.open(copy.db) as live:
        for round_ in range(4):
            populate(live, 100 + round_, n=900, scale=site.scale)
        live.archive("ev").optimize()
        assert live.check().ok
    m = rng.randrange(1, total - len(present))
    killed(start_child(copy, f"backup.upload_part_stored:{m}", mode="resume", action="kill"))
    stored = copy.parts(backup_id)
    assert present.items() <= stored.items() and len(stored) >= len(present) + m
    resumed_id, parts = resume_in(copy)
    assert resumed_id == backup_id
    # On S3 a part whose request was sent whole before the kill may be stored after it,
    # so after the listing above: at most the parts in flight.
    late = 0 if site.kind.name == "local" else S3Uploads.concurrency
    assert len(stored) <= parts["parts_skipped"] <= len(stored) + late, (parts, len(stored))
    assert parts["parts_stored"] == total - parts["parts_skipped"]
    assert parts["parts_replaced"] == 0
    assert copy.image(resumed_id) == uninterrupted
    out = tmp_path / "restored"
    copy.repo().restore(out, id=resumed_id)
    assert content(out) == at_vp
    with lamina.open(copy.db) as live:  # the writers' later state is untouched
        assert live.check().ok


@BIG
@pytest.mark.parametrize("encrypted", [False, True])
def test_a_stored_part_with_other_bytes(site: Site, tmp_path: Path, encrypted: bool) -> None:
    """Part 1 of the copy's upload is overwritten with other bytes of its size. Plain, the
    resume stores it again and publishes the uninterrupted image. Encrypted (local), it
    must not seal other bytes under the recorded salt: it records a fresh one and stores
    every part again, a valid image that restores the VP, not the same bytes. On S3 the
    store lists a re-uploaded part number twice (SeaweedFS), so the part counts as absent
    and is stored again: the uninterrupted image either way."""
    at_vp = content(site.db)
    proc = start_child(site, "backup.upload_part_stored:2")
    try:
        wait_stopped(proc)
        crash = site.copy(tmp_path / "crash")
    finally:
        proc.send_signal(signal.SIGCONT)
    backup_id, uninterrupted = finish_uninterrupted(site, proc)
    copy = crash.site
    crash.finish(backup_id, uninterrupted)
    salt = pin_of(copy.db).seal
    present = copy.parts(backup_id)
    assert len(present) >= 2
    copy.uploads().open(backup_id).put_part(1, bytes(site.part))
    resumed_id, parts = resume_in(copy)
    total = site.total_parts(backup_id)
    image = copy.image(resumed_id)
    if encrypted and site.kind.name == "local":
        assert parts["parts_skipped"] == 0 and parts["parts_stored"] == total
        assert salt is not None and bytes.fromhex(salt.salt) not in image[:4096]
        assert image != uninterrupted and len(image) == len(uninterrupted)
    else:
        assert image == uninterrupted
        assert parts["parts_skipped"] == len(present) - 1
        assert parts["parts_replaced"] == (1 if site.kind.name == "local" else 0)
    assert copy.repo().verify(resumed_id, deep=True).ok
    out = tmp_path / "restored"
    copy.repo().restore(out, id=resumed_id)
    assert content(out) == at_vp


@BIG
@pytest.mark.parametrize("encrypted", [True])
def test_an_encrypted_pin_without_a_seal_resumes_under_a_fresh_salt(site: Site,
                                                                     tmp_path: Path,
                                                                     encrypted: bool) -> None:
    """A pin that records no salt (one written by a version-1 build) cannot reproduce its
    stored parts: the resume records a fresh salt before sealing anything, drops the
    stored parts and stores every part again: a valid image of the VP."""
    at_vp = content(site.db)
    killed(start_child(site, "backup.upload_part_stored:2", action="kill"))
    pin = pin_of(site.db)
    assert pin.seal is not None and len(site.parts(pin.pin_id)) >= 2
    with lamina.open(site.db, create=False) as db:
        pins.update(db.lockfile, db.path,
                    lambda current: [dataclasses.replace(p, seal=None) for p in current])
    assert pin_of(site.db).seal is None
    backup_id, parts = resume_in(site)
    total = site.total_parts(backup_id)
    assert parts["parts_skipped"] == 0 and parts["parts_stored"] == total
    assert bytes.fromhex(pin.seal.salt) not in site.image(backup_id)[:4096]
    assert site.repo().verify(backup_id, deep=True).ok
    out = tmp_path / "restored"
    site.repo().restore(out, id=backup_id)
    assert content(out) == at_vp


def _grown(db: Database, seed: int) -> int:
    """Pages the btree file grew by while one batch rewrote the same keys."""
    before = db.store.current_meta().total_pages
    rng = random.Random(seed)
    with db.write() as txn:
        table = txn.table("t")
        for key in sorted(k for k, _v in table.items())[:300]:
            table.put(key, rng.randbytes(2000))
    return db.store.current_meta().total_pages - before


def test_abandon_releases_the_pin_and_its_pages(site: Site) -> None:
    killed(start_child(site, "backup.pinned", action="kill"))
    with lamina.open(site.db, create=False) as db:
        pin = pin_of(site.db)
        assert db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() == pin.txnid
        growth = [_grown(db, seed) for seed in range(1, 9)]
        # Pinned: once the pages freed before the VP are used up, no page freed since may
        # be reused, so every batch grows the file.
        assert growth[-1] > 0 and growth[-2] > 0, growth
        abandoned = site.repo().abandon(db)
        assert abandoned is not None and abandoned.pin_id == pin.pin_id
        assert not db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() is None
        # Released: the pages the pinned batches freed are reused.
        assert _grown(db, 20) == 0 and _grown(db, 21) == 0
        assert site.repo().abandon(db) is None
        with pytest.raises(NotFoundError, match="no interrupted backup"):
            site.repo().backup(db, resume=True)
    assert site.leftovers() == []


@BIG
def test_pin_survives_every_process_and_is_seeded_again(site: Site) -> None:
    """The pin lives in the database, not in a process: with every process gone the lock
    file is reset by the next opener, which mirrors the pin again."""
    killed(start_child(site, "backup.upload_part_stored:2", action="kill"))
    pin = pin_of(site.db)
    with lamina.open(site.db, create=False) as db:
        assert db.lockfile.initialized_here
        assert db.lockfile.live_pins() == [(pin.txnid, pin.expires_ns)]
        stat = db.stat()
    [shown] = stat["pins"]
    assert shown["pin_id"] == pin.pin_id and shown["state"] == "active"
    assert shown["where"] == site.url and "resume" not in shown
    assert len(site.parts(pin.pin_id)) >= 2


def test_lease_expiry_releases_the_pin(site: Site) -> None:
    killed(start_child(site, "backup.pinned", action="kill", lease=0.5))
    pin = pin_of(site.db)
    wait_for(pin.expired, "the lease's end on the wall clock")
    with lamina.open(site.db, create=False) as db:
        assert not db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() is None
        assert db.stat()["pins"][0]["state"] == "expired"
        with pytest.raises(PinExpiredError, match="expired") as info:
            site.repo().backup(db, resume=True)
        assert info.value.exit_code == 3
        # A new backup replaces the expired pin and removes its upload.
        result = site.repo().backup(db, part_size=site.part)
    assert not pins.load(site.db)
    assert site.leftovers() == []
    assert site.repo().verify(str(result.backup_id)).ok


def test_cli_resume_stat_abandon_and_expiry(site: Site) -> None:
    db, repo = str(site.db), site.url
    proc = cli.start("backup", db, "--repo", repo, "--resume-lease", "30m",
                     env={**os.environ, "LAMINA_FAILPOINT": "backup.pinned"})
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    shown = cli.run_ok("stat", db).stdout
    assert "interrupted backup" in shown and "resumable until" in shown
    [pin] = json.loads(cli.run_ok("stat", db, "--json").stdout)["pins"]
    assert 1700 < pin["expires_in_s"] <= 1800 and pin["state"] == "active"
    assert pin["where"] == repo
    done = cli.run("backup", db, "--repo", repo, "--resume", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] and summary["backup_id"] == pin["pin_id"]
    assert json.loads(cli.run_ok("stat", db, "--json").stdout)["pins"] == []
    assert site.leftovers() == []
    again = cli.run("backup", db, "--repo", repo, "--resume")
    assert again.returncode == 3 and len(again.stderr.strip().splitlines()) == 1
    assert "no interrupted backup" in again.stderr
    nothing = cli.run_ok("backup", db, "--repo", repo, "--abandon")
    assert "no interrupted backup" in nothing.stdout
    # An expired pin: one line, exit 3, and a hint.
    proc = cli.start("backup", db, "--repo", repo, "--resume-lease", "0.2s",
                     env={**os.environ, "LAMINA_FAILPOINT": "backup.pinned"})
    proc.communicate(timeout=120)
    record = pin_of(site.db)
    wait_for(record.expired, "the lease's end on the wall clock")
    expired = cli.run("backup", db, "--repo", repo, "--resume")
    assert expired.returncode == 3
    line = expired.stderr.strip()
    assert len(line.splitlines()) == 1 and "expired" in line and "lamina backup DB" in line
    gone = cli.run_ok("backup", db, "--repo", repo, "--abandon", "--json")
    assert json.loads(gone.stdout)["abandoned"]["pin_id"] == record.pin_id
    assert site.leftovers() == []
    bad = cli.run("backup", db, "--repo", repo, "--resume-lease", "soon")
    assert bad.returncode == 2


def test_resume_refused_when_the_base_was_pruned(site: Site) -> None:
    killed(start_child(site, "backup.pinned", action="kill"))
    base = pin_of(site.db).resume["base"]
    assert base is not None
    site.repo().storage.delete(L.image_key(base))
    with lamina.open(site.db, create=False) as live, \
            pytest.raises(ChainError, match="no longer in the repository"):
        site.repo().backup(live, resume=True)


def test_published_image_only_releases_the_pin(site: Site) -> None:
    """Killed after publishing, before releasing: resuming just releases the pin."""
    killed(start_child(site, "backup.after_publish", action="kill"))
    pin = pin_of(site.db)
    before = site.image(pin.pin_id)
    backup_id, parts = resume_in(site)
    assert backup_id == pin.pin_id and parts["parts_stored"] == 0
    assert site.image(backup_id) == before
    key = L.image_key(backup_id)
    assert str(read_info(site.repo().storage.image(key)).header.image_id) == pin.pin_id


@BIG
def test_a_failed_backup_keeps_its_pin_and_resumes(site: Site,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception mid-upload (a lost connection, a full disk) is an interruption too;
    the parts stored before it (on S3 also those in flight beside the failing one) are
    skipped by the resume."""
    at_vp = content(site.db)
    cls = LocalUpload if site.kind.name == "local" else S3Upload
    real = cls.put_part
    calls = []

    def flaky(self: LocalUpload | S3Upload, number: int, data: bytes) -> object:
        calls.append(number)
        if len(calls) == 3:
            raise StorageError("connection lost (test)")
        return real(self, number, data)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "put_part", flaky)
    with lamina.open(site.db, create=False) as db:
        with pytest.raises(StorageError, match="connection lost"):
            site.repo().backup(db, part_size=site.part)
        monkeypatch.undo()
        pin = pin_of(site.db)
        stored = site.parts(pin.pin_id)
        assert len(stored) >= 2 and 3 not in stored
        result = site.repo().backup(db, resume=True)
    assert str(result.backup_id) == pin.pin_id
    assert result.parts["parts_skipped"] == len(stored) and result.parts["parts_replaced"] == 0
    out = site.db.parent / "restored"
    site.repo().restore(out, id=pin.pin_id)
    assert content(out) == at_vp


@BIG
def test_resume_and_abandon_refuse_while_the_backup_runs(site: Site) -> None:
    proc = start_child(site, "backup.upload_part_stored:2")
    try:
        wait_stopped(proc)
        with lamina.open(site.db, create=False) as db:
            repo = site.repo()
            with pytest.raises(LockedError, match=f"process {proc.pid}"):
                repo.backup(db, resume=True)
            with pytest.raises(LockedError, match="still running"):
                repo.abandon(db)
    finally:
        kill(proc)
    resume_in(site)


def test_a_running_backup_keeps_its_pin_alive(site: Site) -> None:
    """The lease is renewed as parts are stored, once a quarter of it has passed."""
    from lamina.online.pinning import keep_alive
    killed(start_child(site, "backup.pinned", action="kill", lease=30))
    pin = pin_of(site.db)
    lease_ns = 200_000_000
    with lamina.open(site.db, create=False) as db:
        renew = keep_alive(db, pin.pin_id, lease_ns)
        renew()  # too early: unchanged
        assert pins.load(site.db)[0].expires_ns == pin.expires_ns
        start = time.monotonic_ns()
        wait_for(lambda: time.monotonic_ns() - start >= lease_ns // 4,
                 "a quarter of the lease to pass")
        renew()
        [renewed] = pins.load(site.db)
        assert renewed.pin_id == pin.pin_id and renewed.expires_ns != pin.expires_ns
        assert renewed.expires_ns > time.time_ns()
        assert db.lockfile.live_pins() == [(renewed.txnid, renewed.expires_ns)]
        keep_alive(db, "no-such-pin", 1)()  # a pin that is not there: left alone
        assert pins.load(site.db) == [renewed]
