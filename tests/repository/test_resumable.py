"""Resumable backups into a repository: a backup stopped or killed (SIGKILL, a real
process) at chosen points and at seed-chosen byte offsets, then resumed, publishes the
very image the uninterrupted backup published (the same bytes, so the same image hash);
writers go on meanwhile without reusing the pinned pages; a pin's lease runs out; and
``--abandon`` gives the pinned pages back."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import lamina
from lamina.backup.image_reader import read_info
from lamina.core import pins
from lamina.database import Database
from lamina.errors import (
    ChainError,
    LockedError,
    NotFoundError,
    PinExpiredError,
    StorageError,
)
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.uploads import LocalUpload
from support import cli
from support.waiting import wait_for

PART = 64 * 1024
SRC = str(Path(__file__).resolve().parents[2] / "src")

#: The child: one repository backup with small parts; prints the backup id.
CHILD = """
import sys
import lamina
from lamina.repository import Repository
db = lamina.open(sys.argv[1], create=False)
repo = Repository.open(sys.argv[2])
result = repo.backup(db, full=sys.argv[3] == "full", part_size=int(sys.argv[4]),
                     resume_lease=float(sys.argv[5]))
print(result.backup_id, flush=True)
db.close()
"""


def populate(db: Database, seed: int, n: int = 1500) -> None:
    """Btree keys with incompressible values (so the image has many parts) and archive
    rows."""
    rng = random.Random(seed)
    if "t" not in {t.name for t in db.tables()}:
        db.create_table("t")
        db.create_table("ev", "archive")
    with db.write() as txn:
        table = txn.table("t")
        for _ in range(n):
            table.put(b"k%05d" % rng.randrange(4 * n), rng.randbytes(rng.randrange(100, 1500)))
    db.append_many("ev", [rng.randbytes(rng.randrange(50, 400)) for _ in range(n // 2)])


def content(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    with lamina.open(path, create=False, readonly=True) as db, db.read() as txn:
        return dict(txn.table("t").items()), [row for _i, row in db.scan("ev")]


def start_child(db: Path, repo: Path, point: str, *, full: bool = False,
                lease: float = 3600.0, action: str = "stop") -> subprocess.Popen[str]:
    env = {**os.environ, "LAMINA_FAILPOINT": point, "LAMINA_FAILPOINT_ACTION": action,
           "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(repo),
                             "full" if full else "auto", str(PART), str(lease)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def wait_stopped(proc: subprocess.Popen[str]) -> None:
    """Wait until the child stopped itself at its failpoint (a hang guard only bounds it)."""
    wait_for(lambda: _state(proc.pid) == "T", "the backup to stop at its failpoint",
             proc=proc)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def image_bytes(repo: Path, backup_id: str) -> bytes:
    return (repo / L.image_key(backup_id)).read_bytes()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A database with data and one full backup already in the repository (so a new
    backup is a layer unless asked for a full)."""
    root = tmp_path / "a"
    root.mkdir()
    repo = Repository.init(root / "repo")
    with lamina.open(root / "db") as db:
        populate(db, 1)
        repo.backup(db)
        populate(db, 2)
    yield root / "db", root / "repo"


def resume_in(db_path: Path, repo_path: Path) -> tuple[str, dict[str, int]]:
    with lamina.open(db_path, create=False) as db:
        result = Repository.open(repo_path).backup(db, resume=True)
        assert result.resumed
        assert not pins.load(db_path)  # released on completion
    assert not list((repo_path / L.UPLOADS_DIR).iterdir())
    return str(result.backup_id), result.parts


def _points(seed: int) -> list[str]:
    """Deterministic points, and byte offsets (the N-th chunk written) chosen by ``seed``."""
    rng = random.Random(seed)
    return ["backup.pinned", "backup.upload_part_stored:1", "backup.upload_part_stored:5",
            f"backup.image_chunk_written:{rng.randrange(2, 6)}", "backup.before_publish",
            "backup.after_publish"]


@pytest.mark.parametrize(("point", "full"), [(p, i % 2 == 0) for i, p in enumerate(_points(7))])
def test_resume_publishes_the_uninterrupted_image(setup: tuple[Path, Path], tmp_path: Path,
                                                  point: str, full: bool) -> None:
    """Stopped at ``point``, the backup's files are copied as a kill would leave them; the
    original then runs to its end (the uninterrupted image) and the copy is resumed: the
    two images are the same bytes."""
    db, repo = setup
    proc = start_child(db, repo, point, full=full)
    try:
        wait_stopped(proc)
        crash = tmp_path / "crash"
        shutil.copytree(db.parent, crash, symlinks=True)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    backup_id = out.strip()
    uninterrupted = image_bytes(repo, backup_id)
    with lamina.open(crash / "db", create=False) as copy:
        [pin] = pins.load(copy.path)
        assert pin.pin_id == backup_id and pin.expires_ns > time.time_ns()
    resumed_id, parts = resume_in(crash / "db", crash / "repo")
    assert resumed_id == backup_id
    assert image_bytes(crash / "repo", resumed_id) == uninterrupted
    assert parts.get("parts_replaced", 0) == 0
    if point.startswith("backup.upload_part_stored:5") or point == "backup.before_publish":
        assert parts["parts_skipped"] >= 5  # only the rest was stored again
    assert Repository.open(crash / "repo").verify(resumed_id).ok


@pytest.mark.parametrize("seed", [3, 4])
def test_killed_backup_resumes_while_writers_go_on(setup: tuple[Path, Path], tmp_path: Path,
                                                  seed: int) -> None:
    """SIGKILL at a seed-chosen chunk; then a lot is written (every key rewritten several
    times, the archive table optimized): the pinned pages are not reused, so the resumed
    image equals a resume of an untouched copy that stores every part again, and it
    restores exactly the state of the validity point."""
    db, repo = setup
    at_vp = content(db)
    n = random.Random(seed).randrange(2, 6)
    proc = start_child(db, repo, f"backup.image_chunk_written:{n}", action="kill")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    twin = tmp_path / "twin"
    shutil.copytree(db.parent, twin, symlinks=True)
    shutil.rmtree(twin / "repo" / L.UPLOADS_DIR)  # the twin stores every part again
    with lamina.open(db) as live:
        for round_ in range(4):
            populate(live, 100 + round_, n=900)
        live.archive("ev").optimize()
        assert live.check().ok
    first, parts = resume_in(db, repo)
    assert parts["parts_replaced"] == 0
    second, twin_parts = resume_in(twin / "db", twin / "repo")
    assert first == second and twin_parts["parts_skipped"] == 0
    assert image_bytes(repo, first) == image_bytes(twin / "repo", second)
    out = tmp_path / "restored"
    Repository.open(repo).restore(out, id=first)
    assert content(out) == at_vp
    with lamina.open(db) as live:  # the writers' later state is untouched
        assert live.check().ok


def _grown(db: Database, seed: int) -> int:
    """Pages the btree file grew by while one batch rewrote the same keys."""
    before = db.store.current_meta().total_pages
    rng = random.Random(seed)
    with db.write() as txn:
        table = txn.table("t")
        for key in sorted(k for k, _v in table.items())[:300]:
            table.put(key, rng.randbytes(2000))
    return db.store.current_meta().total_pages - before


def test_abandon_releases_the_pin_and_its_pages(setup: tuple[Path, Path]) -> None:
    db_path, repo_path = setup
    proc = start_child(db_path, repo_path, "backup.pinned", action="kill")
    proc.communicate(timeout=120)
    with lamina.open(db_path, create=False) as db:
        [pin] = pins.load(db_path)
        assert db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() == pin.txnid
        growth = [_grown(db, seed) for seed in range(1, 9)]
        # Pinned: once the pages freed before the VP are used up, no page freed since may
        # be reused, so every batch grows the file.
        assert growth[-1] > 0 and growth[-2] > 0, growth
        abandoned = Repository.open(repo_path).abandon(db)
        assert abandoned is not None and abandoned.pin_id == pin.pin_id
        assert not db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() is None
        # Released: the pages the pinned batches freed are reused.
        assert _grown(db, 20) == 0 and _grown(db, 21) == 0
        assert Repository.open(repo_path).abandon(db) is None
        with pytest.raises(NotFoundError, match="no interrupted backup"):
            Repository.open(repo_path).backup(db, resume=True)
    assert not list((repo_path / L.UPLOADS_DIR).iterdir())


def test_pin_survives_every_process_and_is_seeded_again(setup: tuple[Path, Path]) -> None:
    """The pin lives in the database, not in a process: with every process gone the lock
    file is reset by the next opener, which mirrors the pin again."""
    db_path, repo_path = setup
    proc = start_child(db_path, repo_path, "backup.upload_part_stored:2", action="kill")
    proc.communicate(timeout=120)
    [pin] = pins.load(db_path)
    with lamina.open(db_path, create=False) as db:
        assert db.lockfile.initialized_here
        assert db.lockfile.live_pins() == [(pin.txnid, pin.expires_ns)]
        stat = db.stat()
    [shown] = stat["pins"]
    assert shown["pin_id"] == pin.pin_id and shown["state"] == "active"
    assert shown["where"] == str(repo_path) and "resume" not in shown


def test_lease_expiry_releases_the_pin(setup: tuple[Path, Path]) -> None:
    db_path, repo_path = setup
    proc = start_child(db_path, repo_path, "backup.pinned", action="kill", lease=0.5)
    proc.communicate(timeout=120)
    [pin] = pins.load(db_path)
    wait_for(pin.expired, "the lease's end on the wall clock")
    with lamina.open(db_path, create=False) as db:
        assert not db.lockfile.live_pins() and db.lockfile.oldest_reader_txnid() is None
        assert db.stat()["pins"][0]["state"] == "expired"
        with pytest.raises(PinExpiredError, match="expired") as info:
            Repository.open(repo_path).backup(db, resume=True)
        assert info.value.exit_code == 3
        # A new backup replaces the expired pin and removes its upload.
        result = Repository.open(repo_path).backup(db)
    assert not pins.load(db_path)
    assert [p.name for p in (repo_path / L.UPLOADS_DIR).iterdir()] == []
    assert Repository.open(repo_path).verify(str(result.backup_id)).ok


def test_cli_resume_stat_abandon_and_expiry(setup: tuple[Path, Path]) -> None:
    db, repo = setup
    proc = cli.start("backup", str(db), "--repo", str(repo), "--resume-lease", "30m",
                     env={**os.environ, "LAMINA_FAILPOINT": "backup.pinned"})
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    shown = cli.run_ok("stat", str(db)).stdout
    assert "interrupted backup" in shown and "resumable until" in shown
    [pin] = json.loads(cli.run_ok("stat", str(db), "--json").stdout)["pins"]
    assert 1700 < pin["expires_in_s"] <= 1800 and pin["state"] == "active"
    done = cli.run("backup", str(db), "--repo", str(repo), "--resume", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed"] and summary["backup_id"] == pin["pin_id"]
    assert json.loads(cli.run_ok("stat", str(db), "--json").stdout)["pins"] == []
    again = cli.run("backup", str(db), "--repo", str(repo), "--resume")
    assert again.returncode == 3 and len(again.stderr.strip().splitlines()) == 1
    assert "no interrupted backup" in again.stderr
    nothing = cli.run_ok("backup", str(db), "--repo", str(repo), "--abandon")
    assert "no interrupted backup" in nothing.stdout
    # An expired pin: one line, exit 3, and a hint.
    proc = cli.start("backup", str(db), "--repo", str(repo), "--resume-lease", "0.2s",
                     env={**os.environ, "LAMINA_FAILPOINT": "backup.pinned"})
    proc.communicate(timeout=120)
    [record] = pins.load(db)
    wait_for(record.expired, "the lease's end on the wall clock")
    expired = cli.run("backup", str(db), "--repo", str(repo), "--resume")
    assert expired.returncode == 3
    line = expired.stderr.strip()
    assert len(line.splitlines()) == 1 and "expired" in line and "lamina backup DB" in line
    gone = cli.run_ok("backup", str(db), "--repo", str(repo), "--abandon", "--json")
    assert json.loads(gone.stdout)["abandoned"]["pin_id"] == record.pin_id
    bad = cli.run("backup", str(db), "--repo", str(repo), "--resume-lease", "soon")
    assert bad.returncode == 2


def test_resume_refused_when_the_base_was_pruned(setup: tuple[Path, Path]) -> None:
    db, repo = setup
    proc = start_child(db, repo, "backup.pinned", action="kill")
    proc.communicate(timeout=120)
    [pin] = pins.load(db)
    base = pin.resume["base"]
    assert base is not None
    (repo / L.image_key(base)).unlink()
    with lamina.open(db, create=False) as live, \
            pytest.raises(ChainError, match="no longer in the repository"):
        Repository.open(repo).backup(live, resume=True)


def test_published_image_only_releases_the_pin(setup: tuple[Path, Path]) -> None:
    """Killed after publishing, before releasing: resuming just releases the pin."""
    db, repo = setup
    proc = start_child(db, repo, "backup.after_publish", action="kill")
    proc.communicate(timeout=120)
    [pin] = pins.load(db)
    before = image_bytes(repo, pin.pin_id)
    backup_id, parts = resume_in(db, repo)
    assert backup_id == pin.pin_id and parts["parts_stored"] == 0
    assert image_bytes(repo, backup_id) == before
    assert str(read_info(repo / L.image_key(backup_id)).header.image_id) == pin.pin_id


def test_a_failed_backup_keeps_its_pin_and_resumes(setup: tuple[Path, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception mid-upload (a lost connection, a full disk) is an interruption too."""
    db_path, repo_path = setup
    at_vp = content(db_path)
    real = LocalUpload.put_part
    calls = []

    def flaky(self: LocalUpload, number: int, data: bytes) -> object:
        calls.append(number)
        if len(calls) == 3:
            raise StorageError("connection lost (test)")
        return real(self, number, data)

    monkeypatch.setattr(LocalUpload, "put_part", flaky)
    with lamina.open(db_path, create=False) as db:
        with pytest.raises(StorageError, match="connection lost"):
            Repository.open(repo_path).backup(db, part_size=PART)
        monkeypatch.undo()
        [pin] = pins.load(db_path)
        result = Repository.open(repo_path).backup(db, resume=True)
    assert str(result.backup_id) == pin.pin_id
    assert result.parts["parts_skipped"] == 2 and result.parts["parts_replaced"] == 0
    out = repo_path.parent / "restored"
    Repository.open(repo_path).restore(out, id=pin.pin_id)
    assert content(out) == at_vp


def test_resume_and_abandon_refuse_while_the_backup_runs(setup: tuple[Path, Path]) -> None:
    db_path, repo_path = setup
    proc = start_child(db_path, repo_path, "backup.upload_part_stored:2")
    try:
        wait_stopped(proc)
        with lamina.open(db_path, create=False) as db:
            repo = Repository.open(repo_path)
            with pytest.raises(LockedError, match=f"process {proc.pid}"):
                repo.backup(db, resume=True)
            with pytest.raises(LockedError, match="still running"):
                repo.abandon(db)
    finally:
        kill(proc)
    resume_in(db_path, repo_path)


def test_a_running_backup_keeps_its_pin_alive(setup: tuple[Path, Path]) -> None:
    """The lease is renewed as parts are stored, once a quarter of it has passed."""
    from lamina.online.pinning import keep_alive
    db_path, repo_path = setup
    proc = start_child(db_path, repo_path, "backup.pinned", action="kill", lease=30)
    proc.communicate(timeout=120)
    [pin] = pins.load(db_path)
    lease_ns = 200_000_000
    with lamina.open(db_path, create=False) as db:
        renew = keep_alive(db, pin.pin_id, lease_ns)
        renew()  # too early: unchanged
        assert pins.load(db_path)[0].expires_ns == pin.expires_ns
        start = time.monotonic_ns()
        wait_for(lambda: time.monotonic_ns() - start >= lease_ns // 4,
                 "a quarter of the lease to pass")
        renew()
        [renewed] = pins.load(db_path)
        assert renewed.pin_id == pin.pin_id and renewed.expires_ns != pin.expires_ns
        assert renewed.expires_ns > time.time_ns()
        assert db.lockfile.live_pins() == [(renewed.txnid, renewed.expires_ns)]
        keep_alive(db, "no-such-pin", 1)()  # a pin that is not there: left alone
        assert pins.load(db_path) == [renewed]
