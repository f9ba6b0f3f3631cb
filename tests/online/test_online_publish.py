"""Issue 10, items 1 and 3: how a restore publishes, and what killed restores and backups
leave behind.

Item 1: ``restore --force`` never replaces a database that a process has open (a writer, a
reader, a process that merely has it open): LockedError, exit 8, naming the holder's pid,
and the holder goes on undisturbed. With no holder the replacement is crash-safe: killed
(SIGKILL, at each publish failpoint) it leaves the old or the new database at DEST, whole,
once the next open or restore settled it. One publish routine serves single-image, chain and
repository restores.

Item 3: a restore's temporary directory (``.DEST.restore-PID-*``) never looks like a
database; a backup's temporary file is ``.IMG.tmp-PID-*``; the next restore or backup to
the same place removes the leftovers of dead owners and says so, and never a live owner's.

Every wait is on a pipe (a holder reports that it runs; a restore fed through stdin has
consumed what the test wrote) or on a process.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lamina
from lamina import online
from lamina.core import publish
from lamina.core.lockfile import claim_unused, release_claim
from lamina.errors import LockedError
from lamina.repository import Repository
from support import cli
from support.checked import is_complete_database
from support.rawstore import RawStore

HOLDER = Path(__file__).with_name("holder.py")
KIB = 1 << 10


@dataclass(frozen=True)
class Images:
    root: Path
    old: Path       # an image of a database whose key b"which" is b"old"
    new: Path       # ... b"new"; > 2 MiB, uncompressed
    full: Path      # a chain: full, then layer (key b"which" = b"layer")
    layer: Path
    repo: Path      # a repository holding one backup of the "new" database


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("publish")
    for which, keys in (("old", 50), ("new", 20_000)):
        with lamina.open(root / f"{which}.db") as db:
            db.create_table("t")
            with db.write() as txn:
                table = txn.table("t")
                table.put(b"which", which.encode())
                for i in range(keys):
                    table.put(b"k%08d" % i, os.urandom(100))
            db.backup(root / f"{which}.lamina", codec="none")
            if which == "new":
                db.backup(root / "full.lamina")
                db.put("t", b"which", b"layer")
                db.backup(root / "layer.lamina", base=root / "full.lamina")
                repo = Repository.init(root / "repo")
                repo.backup(db)
    assert (root / "new.lamina").stat().st_size > 2 * (1 << 20)
    return Images(root, root / "old.lamina", root / "new.lamina", root / "full.lamina",
                  root / "layer.lamina", root / "repo")


def which(dest: Path) -> str:
    """Which database is at ``dest`` (its key b"which"); it must pass the checker."""
    with lamina.open(dest, create=False, readonly=True) as db:
        assert db.check().ok
        with db.read() as txn:
            value = txn.table("t").get(b"which")
    assert value is not None
    return value.decode()


def siblings(dest: Path) -> list[str]:
    """The temporary names next to ``dest`` (``.DEST.*``)."""
    return sorted(p.name for p in dest.parent.glob(f".{dest.name}.*"))


def dead_pid() -> int:
    """The pid of a process that has ended and was reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture()
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    """Holder processes a test starts; each is told to stop (and reaped) at teardown."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            stop(proc)


def start_holder(holders: list[subprocess.Popen[str]], mode: str,
                 db: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``holder.py MODE DB`` and wait (on its stdout pipe) until it reports that it
    holds the database; returns the process and its first line."""
    proc = subprocess.Popen([sys.executable, str(HOLDER), mode, str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    holders.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _out, err = proc.communicate()
        pytest.fail(f"holder {mode} ended (exit {proc.returncode}): {err}")
    return proc, line.strip()


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Tell a holder to stop and wait for it; its remaining stdout and its stderr."""
    assert proc.stdin is not None
    try:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
    except BrokenPipeError:
        pass
    out, err = proc.communicate(timeout=60)
    return out, err


def assert_refused(proc: subprocess.CompletedProcess[str], holder: int) -> None:
    assert proc.returncode == 8, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("lamina: "), proc.stderr
    assert f"process {holder} " in proc.stderr, proc.stderr


# ====================================================================== item 1: holders
def test_restore_force_refuses_a_database_a_writer_is_writing(images: Images, tmp_path: Path,
                                                             holders: list) -> None:
    dest = tmp_path / "dest"
    cli.run_ok("restore", str(images.old), "--to", str(dest), "--no-progress")
    writer, line = start_holder(holders, "writer", dest)
    first = int(line.split()[1])
    proc = cli.run("restore", str(images.new), "--to", str(dest), "--force", "--no-progress")
    assert_refused(proc, writer.pid)
    assert siblings(dest) == [], "a refused restore leaves nothing behind"
    assert writer.stdout is not None
    n = first
    while n < first + 20:  # the writer goes on committing into the same database
        line = writer.stdout.readline()
        assert line.startswith("commit "), (line, writer.poll())
        n = int(line.split()[1])
    out, err = stop(writer)
    assert writer.returncode == 0, err
    last = int(out.split()[-1]) if out.split() else n
    assert which(dest) == "old"
    with lamina.open(dest, create=False, readonly=True) as db, db.read() as txn:
        assert len(list(txn.table("t").prefix(b"writer-"))) == last
    # No holder any more: the same restore replaces it.
    cli.run_ok("restore", str(images.new), "--to", str(dest), "--force", "--no-progress")
    assert which(dest) == "new" and siblings(dest) == []


@pytest.mark.parametrize("mode", ["reader", "open"])
def test_restore_force_refuses_a_database_a_reader_has_open(images: Images, tmp_path: Path,
                                                           holders: list, mode: str) -> None:
    dest = tmp_path / "dest"
    cli.run_ok("restore", str(images.old), "--to", str(dest), "--no-progress")
    identity = (dest / "LAMINA").read_bytes()
    reader, _line = start_holder(holders, mode, dest)
    proc = cli.run("restore", str(images.new), "--to", str(dest), "--force", "--no-progress")
    assert_refused(proc, reader.pid)
    assert (dest / "LAMINA").read_bytes() == identity and siblings(dest) == []
    _out, err = stop(reader)
    assert reader.returncode == 0, err  # its read transaction saw the old database whole
    cli.run_ok("restore", str(images.new), "--to", str(dest), "--force", "--no-progress")
    assert which(dest) == "new" and (dest / "LAMINA").read_bytes() != identity


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_chain_and_repository_restores_refuse_a_database_in_use(
        images: Images, tmp_path: Path, holders: list, kind: str,
        request: pytest.FixtureRequest) -> None:
    dest = tmp_path / "dest"
    where = str(images.repo) if kind == "local" else \
        RawStore(images.repo).copy_to(request.getfixturevalue("s3_url")).url
    cli.run_ok("restore", str(images.old), "--to", str(dest), "--no-progress")
    reader, _line = start_holder(holders, "open", dest)
    chain = cli.run("restore", str(images.full), str(images.layer), "--to", str(dest),
                    "--force", "--no-progress")
    assert_refused(chain, reader.pid)
    repo = cli.run("restore", "--repo", where, "--to", str(dest), "--force",
                   "--no-progress")
    assert_refused(repo, reader.pid)
    stop(reader)
    assert which(dest) == "old" and siblings(dest) == []
    cli.run_ok("restore", str(images.full), str(images.layer), "--to", str(dest), "--force",
               "--no-progress")
    assert which(dest) == "layer"
    cli.run_ok("restore", "--repo", where, "--to", str(dest), "--force",
               "--no-progress")
    assert which(dest) == "layer"


def test_a_database_open_in_this_process_is_not_replaced(images: Images,
                                                         tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    online.restore(images.old, dest)
    with lamina.open(dest, create=False) as db:
        with pytest.raises(LockedError, match="open in this process"):
            online.restore(images.new, dest, force=True)
        db.put("t", b"still", b"writable")  # its locks are intact
    assert which(dest) == "old" and siblings(dest) == []


def test_an_open_in_this_process_during_a_replacement_is_refused(images: Images,
                                                                  tmp_path: Path) -> None:
    """Record locks do not exclude the process that holds them: while this process holds
    a database for a replacement, its own opens of it fail instead of joining it."""
    dest = tmp_path / "dest"
    online.restore(images.old, dest)
    held = claim_unused(dest, "dest")
    try:
        with pytest.raises(LockedError, match="being replaced"):
            lamina.open(dest, create=False)
    finally:
        release_claim(held)
    assert which(dest) == "old"


def test_an_opener_waiting_during_a_replacement_opens_the_new_database(
        images: Images, tmp_path: Path, holders: list) -> None:
    """A process that starts opening DEST while a restore replaces it waits for the lock
    file the restore holds, then finds the lock file replaced and opens the new database
    (its identity, its data and its lock file), never a mix of the old and the new."""
    dest = tmp_path / "dest"
    online.restore(images.old, dest)
    new = tmp_path / "new"
    online.restore(images.new, new)
    new_incarnation = lamina.open(new, create=False, readonly=True)
    try:
        expected = str(new_incarnation.identity.incarnation)
    finally:
        new_incarnation.close()
    held = claim_unused(dest, "dest")  # what the publish holds while it replaces DEST
    try:
        opener = subprocess.Popen([sys.executable, str(HOLDER), "opener", str(dest)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        holders.append(opener)
        wait_until_waiting(opener, dest / "LOCK")
        os.rename(dest, tmp_path / "parked")
        os.rename(new, dest)
    finally:
        release_claim(held)
    out, err = opener.communicate(timeout=60)
    assert opener.returncode == 0, err
    assert out.split() == [expected, "new"]


def wait_until_waiting(proc: subprocess.Popen[str], lock: Path) -> None:
    """Wait (on the process, in 10 ms slices) until ``proc`` waits for a lock on ``lock``
    (a ``->`` line of ``/proc/locks``)."""
    st = lock.stat()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for _ in range(6000):
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "->" in fields and str(proc.pid) in fields and want in fields:
                    return
        try:
            proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"the opener ended first: {proc.communicate()}")
    pytest.fail("the opener never waited for the lock file")


# ====================================================================== item 1: crashes
OUTCOME = {"restore.publish_staged": "old", "restore.publish_parked": "old",
           "restore.publish_renamed": "new", "restore.publish_identity": "new"}


#: (failpoint, replace an old database?): a restore to a new DEST never parks anything.
CRASHES = [pytest.param(fp, replace, id=f"{fp.split('_')[-1]}-{'replace' if replace else 'new'}")
           for fp in sorted(OUTCOME) for replace in (True, False)
           if replace or fp != "restore.publish_parked"]


@pytest.mark.parametrize("settle", ["open", "restore"])
@pytest.mark.parametrize(("failpoint", "replace"), CRASHES)
def test_a_restore_killed_while_it_publishes_leaves_the_old_or_the_new(
        images: Images, tmp_path: Path, failpoint: str, replace: bool, settle: str) -> None:
    """Killed (SIGKILL) after each publish step: the next open (``lamina check DEST``) or
    the next restore settles DEST to the old or the new database, whole; the restore's own
    directory never looks like a database; the next restore removes every leftover and
    names each one."""
    dest = tmp_path / "dest"
    if replace:
        online.restore(images.old, dest)
    env = {**os.environ, "LAMINA_FAILPOINT": failpoint}
    killed = cli.start("restore", str(images.new), "--to", str(dest), "--force",
                       "--no-progress", env=env)
    _out, err = killed.communicate(timeout=120)
    assert killed.returncode == -9, err
    left = siblings(dest)
    assert all(f"-{killed.pid}-" in name for name in left), left
    assert left or (not replace and failpoint in ("restore.publish_renamed",
                                                 "restore.publish_identity"))
    for name in left:
        path = tmp_path / name
        if name.startswith(".dest.old-"):  # the old database, parked whole
            assert which(path) == "old"
            continue
        # The restore's own directory never looks like a database, proven or not.
        assert name.startswith(".dest.restore-"), name
        assert not is_complete_database(path) and not (path / "LAMINA").exists()
        proc = cli.run("check", str(path))
        assert proc.returncode == 5 and "temporary restore directory" in proc.stderr, \
            proc.stderr
    expected = OUTCOME[failpoint] if replace or OUTCOME[failpoint] == "new" else None
    if settle == "open":
        proc = cli.run("check", str(dest))  # the next open settles a half-done publish
        if expected is None:
            assert proc.returncode == 3 and not os.path.lexists(dest), proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
            assert which(dest) == expected
    proc = cli.run("restore", str(images.new), "--to", str(dest), "--force", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert which(dest) == "new" and siblings(dest) == []
    for name in left:
        if settle == "restore" or not name.startswith(".dest.old-") or expected != "old":
            assert name in proc.stderr, (name, proc.stderr)


# ====================================================================== item 3: leftovers
def test_a_restore_killed_midway_leaves_no_database_and_is_cleaned_up(
        images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = images.new.read_bytes()
    proc = subprocess.Popen([*cli.LAMINA, "restore", "-", "--to", str(dest), "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    # A pipe holds 64 KiB: once this write returns, the restore has read all but that, so
    # it is inside the restore, writing into its temporary directory.
    proc.stdin.write(data[: len(data) // 2])
    proc.stdin.flush()
    proc.kill()
    proc.wait()
    proc.stdin.close()
    left = siblings(dest)
    assert left == [name for name in left if name.startswith(f".dest.restore-{proc.pid}-")]
    assert len(left) == 1
    temp = tmp_path / left[0]
    assert (temp / "data.lamina").exists(), "killed midway: the data file was being written"
    assert not (temp / "LAMINA").exists() and not is_complete_database(temp)
    check = cli.run("check", str(temp))
    assert check.returncode == 5 and f"process {proc.pid}" in check.stderr, check.stderr
    done = cli.run("restore", str(images.new), "--to", str(dest), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"removed {temp}" in done.stderr and f"killed process {proc.pid}" in done.stderr
    assert which(dest) == "new" and siblings(dest) == []


def test_a_live_restore_keeps_its_temporary_directory(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    data = images.new.read_bytes()
    live = subprocess.Popen([*cli.LAMINA, "restore", "-", "--to", str(dest), "--no-progress"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert live.stdin is not None
    live.stdin.write(data[: len(data) // 2])  # returns once it is restoring (see above)
    live.stdin.flush()
    (temp,) = siblings(dest)
    assert temp.startswith(f".dest.restore-{live.pid}-")
    other = cli.run("restore", str(images.old), "--to", str(dest), "--no-progress")
    assert other.returncode == 0 and "removed" not in other.stderr, other.stderr
    assert siblings(dest) == [temp], "a live owner's temporary directory is never removed"
    live.stdin.close()  # the rest never comes: the live restore fails and cleans up itself
    assert live.wait(timeout=60) == 4
    assert siblings(dest) == [] and which(dest) == "old"


@pytest.fixture()
def source_db(tmp_path: Path) -> Path:
    db_path = tmp_path / "db"
    with lamina.open(db_path) as db:
        db.create_table("t")
        with db.write() as txn:
            table = txn.table("t")
            for i in range(5000):
                table.put(b"k%08d" % i, os.urandom(200))
    return db_path


def test_a_backup_killed_midway_is_cleaned_up_by_the_next(source_db: Path,
                                                          tmp_path: Path) -> None:
    image = tmp_path / "img"
    env = {**os.environ, "LAMINA_FAILPOINT": "backup.image_chunk_written:1"}
    killed = subprocess.Popen([*cli.LAMINA, "backup", str(source_db), str(image),
                               "--compress", "none", "--no-progress"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _out, err = killed.communicate(timeout=120)
    assert killed.returncode == -9, err
    (left,) = siblings(image)
    assert left.startswith(f".img.tmp-{killed.pid}-") and not image.exists()
    temp = tmp_path / left
    assert temp.stat().st_size > 0
    assert cli.run("verify", str(temp)).returncode != 0  # not an image
    done = cli.run("backup", str(source_db), str(image), "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    assert f"removed {temp}" in done.stderr and f"killed process {killed.pid}" in done.stderr
    assert json.loads(done.stdout)["cleaned"] == [line.removeprefix("lamina: ")
                                                  for line in done.stderr.splitlines()]
    assert siblings(image) == [] and cli.run("verify", str(image)).returncode == 0


def test_only_dead_owners_temporary_files_are_removed(source_db: Path, tmp_path: Path) -> None:
    """The ownership rule: removed only when the owner's lock is free *and* its pid is
    gone. A live pid (even with the lock free: it may be about to take it, or be a reused
    pid) or a held lock (even with the pid gone: a child inherited it) keeps the file."""
    image = tmp_path / "img"
    dead = dead_pid()
    names = {"live-locked": f".img.tmp-{os.getpid()}-aaaaaaaaaaaa",
             "live-unlocked": f".img.tmp-{os.getpid()}-bbbbbbbbbbbb",
             "dead-locked": f".img.tmp-{dead}-cccccccccccc",
             "dead-unlocked": f".img.tmp-{dead}-dddddddddddd",
             "no-pid": ".img.tmp-eeeeeeeeeeee"}
    locks = []
    for kind, name in names.items():
        (tmp_path / name).write_bytes(b"partial image")
        if kind.endswith("-locked"):
            fd = os.open(tmp_path / name, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
            locks.append(fd)
    try:
        done = cli.run("backup", str(source_db), str(image), "--no-progress")
        assert done.returncode == 0, done.stderr
    finally:
        for fd in locks:
            os.close(fd)
    assert done.stderr == f"lamina: removed {tmp_path / names['dead-unlocked']} (left " \
        f"behind by killed process {dead})\n"
    assert siblings(image) == sorted(n for k, n in names.items() if k != "dead-unlocked")
    for name in siblings(image):
        os.unlink(tmp_path / name)


def test_the_temporary_names_name_their_owner(tmp_path: Path) -> None:
    token = publish.new_token()
    path = publish.temp_path(tmp_path / "db", publish.RESTORE, token)
    assert path.name == f".db.restore-{token}" and token.startswith(f"{os.getpid()}-")
    parsed = publish.parse_temp("db", path.name)
    assert parsed == publish.TempName(publish.RESTORE, os.getpid(), token)
    assert publish.parse_any_temp(path) == parsed
    assert publish.parse_temp("db", ".db.restore-0123456789ab") == \
        publish.TempName(publish.RESTORE, None, "0123456789ab")
    for other in (".db.restore-xyz", ".dbx.restore-1-0123456789ab", "db", ".db.new-1-0123"):
        assert publish.parse_temp("db", other) is None
