"""A full disk while the ``LOCK`` file needs blocks: one line and exit 9, never SIGBUS.

The lock file is memory-mapped. Mapped while sparse (or shorter than the map), the first
store into a page with no block behind it kills the process with SIGBUS on a full disk.
These tests use a real full disk: a small tmpfs filled to the last page.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import lamina
from lamina.core import fileio
from lamina.core import lockfile as lockfile_module
from lamina.core import lockfile_format as F
from lamina.core.lockfile import LockFile
from lamina.errors import LockedError, StorageError
from support import cli

#: A host program that opens the database read-only, as an application embedding Lamina
#: would: it reports a Lamina error in one line and exits with the error's code.
HOST = textwrap.dedent("""
    import sys
    import lamina
    from lamina.errors import LaminaError
    try:
        with lamina.open(sys.argv[1], create=False, readonly=True) as db:
            print(db.get("t", b"k").decode())
    except LaminaError as exc:
        print(f"host: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
""")

SIGBUS_CODES = (-signal.SIGBUS, 128 + signal.SIGBUS)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 1 MiB tmpfs (unmounted at the end)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a real full disk: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it (remove it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = bytes(4096)
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    st = os.statvfs(disk)
    assert st.f_bavail == 0
    return filler


def make_database(db: Path) -> None:
    with lamina.open(db) as handle:
        handle.create_table("t")
        handle.put("t", b"k", b"value-of-k")


def damage_lock(db: Path, how: str) -> None:
    """Leave the LOCK file as a crashed or older creator could: missing, sparse, short."""
    lock = db / F.FILE_NAME
    if how == "missing":
        lock.unlink()
    elif how == "sparse":  # the size, no blocks: what ftruncate alone leaves
        os.truncate(lock, 0)
        os.truncate(lock, F.FILE_SIZE)
        assert os.stat(lock).st_blocks == 0
    elif how == "short":  # the start of the header, then the creator died
        os.truncate(lock, 100)
    else:
        raise AssertionError(how)


def one_line(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    err = proc.stderr
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert "Traceback" not in err
    return err


def assert_refused_for_the_lock_file(proc: subprocess.CompletedProcess[str], db: Path,
                                     prefix: str = "lamina: ") -> None:
    assert proc.returncode not in SIGBUS_CODES, "killed by SIGBUS"
    assert proc.returncode == 9, (proc.returncode, proc.stderr)
    line = one_line(proc, prefix)
    assert str(db / F.FILE_NAME) in line and "disk full" in line, line
    assert proc.stdout == ""


def run_host(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HOST, str(db)], capture_output=True,
                          text=True, timeout=120)


def lock_blocks_cover_the_file(db: Path) -> bool:
    st = os.stat(db / F.FILE_NAME)
    return st.st_size >= F.FILE_SIZE and st.st_blocks * 512 >= F.FILE_SIZE


@pytest.mark.parametrize("how", ["missing", "sparse", "short"])
def test_full_disk_while_the_lock_file_needs_blocks(small_disk: Path, how: str) -> None:
    db = small_disk / "db"
    make_database(db)
    damage_lock(db, how)
    files_before = {p.name: p.read_bytes() for p in db.iterdir() if p.name != F.FILE_NAME}
    filler = fill(small_disk)

    assert_refused_for_the_lock_file(cli.run("get", str(db), "t", "k"), db)
    assert_refused_for_the_lock_file(cli.run("create-table", str(db), "t2"), db)
    assert_refused_for_the_lock_file(run_host(db), db, prefix="host: ")
    # Nothing else was touched; and a lock file is never left mapped sparse.
    assert {p.name: p.read_bytes() for p in db.iterdir()
            if p.name != F.FILE_NAME} == files_before

    filler.unlink()
    proc = cli.run("get", str(db), "t", "k")
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "value-of-k", "")
    assert lock_blocks_cover_the_file(db)
    proc = run_host(db)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "value-of-k", "")
    assert cli.run("create-table", str(db), "t2").returncode == 0
    with lamina.open(db, create=False) as handle:
        assert handle.check().ok
        assert handle.get("t", b"k") == b"value-of-k"
        assert sorted(t.name for t in handle.tables()) == ["t", "t2"]


def test_openers_of_a_live_lock_file_need_no_space_and_change_nothing(
        small_disk: Path) -> None:
    """With the database open elsewhere, the lock file is reserved already: a full disk
    does not stop readers, and no opener re-initializes or extends the live file."""
    db = small_disk / "db"
    make_database(db)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, lamina
            db = lamina.open(sys.argv[1], create=False)
            print(db.lockfile.commit_seq(), flush=True)
            sys.stdin.readline()
            db.close()
        """), str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        seq = int(holder.stdout.readline())
        lock = db / F.FILE_NAME
        init_count = lock.read_bytes()[F.OFF_INIT_COUNT: F.OFF_INIT_COUNT + 8]
        filler = fill(small_disk)
        proc = cli.run("get", str(db), "t", "k")
        assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "value-of-k", "")
        proc = run_host(db)
        assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "value-of-k", "")
        with lamina.open(db, create=False, readonly=True) as handle:
            assert not handle.lockfile.initialized_here
            assert handle.lockfile.commit_seq() == seq
        data = lock.read_bytes()
        assert len(data) == F.FILE_SIZE
        assert data[F.OFF_INIT_COUNT: F.OFF_INIT_COUNT + 8] == init_count
        filler.unlink()
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0


def test_reserve_without_fallocate_writes_zeros(small_disk: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system has no fallocate, the range is filled with zeros: on a full
    disk that fails with a clear error too."""
    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    path = small_disk / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fileio.reserve(fd, 3 * 4096, path)
        st = os.fstat(fd)
        assert st.st_size == 3 * 4096 and st.st_blocks * 512 >= 3 * 4096
        os.ftruncate(fd, 0)
        filler = fill(small_disk)
        with pytest.raises(StorageError, match="disk full") as info:
            fileio.reserve(fd, 3 * 4096, path)
        assert str(path) in str(info.value)
        filler.unlink()
    finally:
        os.close(fd)


def _hold_alive_shared(directory: Path) -> subprocess.Popen[str]:
    """A process that holds the alive byte shared on a lock file nobody initialized (as an
    opener does that waited for an initializer which then failed)."""
    prog = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(directory / F.FILE_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, {F.LOCK_ALIVE})
        print("held", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", prog], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def _release(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.write("\n")
    child.stdin.flush()
    child.wait(timeout=30)


def test_a_waiter_initializes_a_lock_file_its_initializer_left_uninitialized(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An opener that gets the alive lock shared on a never-initialized (empty) file does not
    map or use it: it lets go and tries again until it can initialize the file itself."""
    child = _hold_alive_shared(tmp_path)
    retried = threading.Event()

    class Backoff:
        @staticmethod
        def uniform(_low: float, _high: float) -> float:
            retried.set()
            return 0.001

    monkeypatch.setattr(lockfile_module, "random", Backoff)
    opened: list[LockFile | BaseException] = []

    def opener() -> None:
        try:
            opened.append(LockFile.open(tmp_path, init=lambda lf: lf.set_commit_seq(5)))
        except BaseException as exc:  # pragma: no cover - reported below
            opened.append(exc)

    thread = threading.Thread(target=opener)
    thread.start()
    try:
        assert retried.wait(30)  # it found the file uninitialized and let go
        assert os.stat(tmp_path / F.FILE_NAME).st_size == 0  # ... without touching it
    finally:
        _release(child)
        thread.join(30)
    (lf,) = opened
    assert isinstance(lf, LockFile)
    try:
        assert lf.initialized_here and lf.commit_seq() == 5
        assert lock_blocks_cover_the_file(tmp_path)
    finally:
        lf.close()


def test_a_lock_file_held_but_never_initialized_is_refused_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockfile_module, "_INIT_WAIT", 0.05)
    child = _hold_alive_shared(tmp_path)
    try:
        with pytest.raises(LockedError, match="never initialized"):
            LockFile.open(tmp_path, init=lambda lf: lf.set_commit_seq(0))
        assert os.stat(tmp_path / F.FILE_NAME).st_size == 0
    finally:
        _release(child)


def test_a_failed_init_leaves_the_file_uninitialized(tmp_path: Path) -> None:
    """An initializer whose ``init`` fails zeroes the header, so openers that waited for it
    initialize the file themselves instead of using an unseeded one."""
    def failing(_lf: LockFile) -> None:
        raise StorageError("seed failed")

    with pytest.raises(StorageError, match="seed failed"):
        LockFile.open(tmp_path, init=failing)
    data = (tmp_path / F.FILE_NAME).read_bytes()
    assert data[: F.STATIC_SIZE] == bytes(F.STATIC_SIZE)
    lf = LockFile.open(tmp_path, init=lambda lf: lf.set_commit_seq(3))
    try:
        assert lf.initialized_here and lf.commit_seq() == 3
    finally:
        lf.close()


def test_every_initialization_is_counted(tmp_path: Path) -> None:
    for expected in (1, 2, 3):
        lf = LockFile.open(tmp_path, init=lambda lf: lf.set_commit_seq(0))
        lf.close()
        data = (tmp_path / F.FILE_NAME).read_bytes()
        assert int.from_bytes(data[F.OFF_INIT_COUNT: F.OFF_INIT_COUNT + 8], "little") == expected


def test_a_copied_database_without_its_lock_file_opens(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_database(src)
    dst = tmp_path / "copy"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(F.FILE_NAME))
    with lamina.open(dst, create=False, readonly=True) as handle:
        assert handle.get("t", b"k") == b"value-of-k"
    assert lock_blocks_cover_the_file(dst)
