"""The database's ``LOCK`` file: cross-process locks, reader slots and shared counters.

Concurrency model (docs/architecture.md, "Concurrency"):

* Every process that opens a database maps the lock file and holds a *shared* ``fcntl``
  lock on byte ``LOCK_ALIVE``. The first process to get it *exclusively* is alone, so it
  (re)initializes the file and runs the caller's ``init`` callback (which seeds the commit
  seq and the published btree meta from disk) before downgrading to shared.
* POSIX record locks belong to a process and vanish when it dies, or when it closes *any*
  descriptor of the file. So a process keeps exactly one :class:`LockFile` per lock file
  (a registry keyed by device and inode), shared by every ``Database`` handle in it.
* Record locks do not exclude threads of one process, so each lock here pairs the
  ``fcntl`` lock with an in-process lock.
* Reader slots: a reader (or a backup) owns a slot while it holds the slot's byte lock;
  it writes its pid and snapshot txnid there. A slot whose byte lock can be taken by
  someone else belongs to a dead process and is reclaimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.core import lockfile_format as F
from lamina.errors import LockedError, NotADatabaseError, VersionError, storage_error

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
#: Where the txnid sits in the published btree meta record (see LockFile.btree_txnid).
_BTREE_META_TXNID_AT = 16

# Shortest and longest sleep while polling a non-blocking lock.
_POLL_MIN = 0.0002
_POLL_MAX = 0.01
# How long an opener retries a lock file that other processes hold but nobody initialized.
_INIT_WAIT = 10.0


def _try_lock(fd: int, kind: int, offset: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, offset)
        return True
    except (BlockingIOError, PermissionError):
        return False


def _lock_with_timeout(fd: int, kind: int, offset: int, timeout: float | None, what: str) -> None:
    """Take an ``fcntl`` lock, polling until ``timeout`` seconds (None = wait forever)."""
    if timeout is None:
        fcntl.lockf(fd, kind, 1, offset)
        return
    if _try_lock(fd, kind, offset):
        return
    deadline = time.monotonic() + timeout
    delay = _POLL_MIN
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise LockedError(f"{what} is locked by another process (waited {timeout:g}s)")
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, _POLL_MAX)
        if _try_lock(fd, kind, offset):
            return


def _unlock(fd: int, offset: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)


def _map(fd: int, path: Path) -> mmap.mmap:
    try:
        return mmap.mmap(fd, F.FILE_SIZE)
    except OSError as exc:
        raise storage_error(exc, "map lock file", path) from exc


def _attach(fd: int, path: Path) -> tuple[mmap.mmap, bool]:
    """Take the alive lock on the open lock file ``fd`` and map the file.

    Returns the map and True when this process is alone (it holds the alive lock
    exclusively and must initialize the file), else False (it holds the lock shared and the
    file was initialized by a live process).

    Only a process that is alone changes the file's size or blocks: it reserves them
    (:func:`fileio.reserve`) *before* mapping, because a store into a mapped page with no
    block behind it kills the process with SIGBUS when the disk is full. That also repairs a
    short or sparse file (an older build's, or a creator's that crashed). A process that is
    not alone never extends, fills or resets the file: live processes use it, and whoever
    initialized it wrote every byte, so its blocks exist.
    """
    deadline: float | None = None
    delay = _POLL_MIN
    while True:
        if _try_lock(fd, fcntl.LOCK_EX, F.LOCK_ALIVE):
            # Alone: whatever the file holds is stale runtime state.
            try:
                fileio.reserve(fd, F.FILE_SIZE, path)
                return _map(fd, path), True
            except BaseException:
                _unlock(fd, F.LOCK_ALIVE)
                raise
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, F.LOCK_ALIVE)  # waits while someone initializes
        if os.fstat(fd).st_size >= F.FILE_SIZE:  # else a read of the map could fault too
            mm = _map(fd, path)
            if any(mm[: F.STATIC_SIZE]):  # initialized (or foreign: _validate says which)
                return mm, False
            mm.close()
        # Never initialized: its initializer failed (a full disk, a bad data file) and let go,
        # and other openers that waited with us hold the lock shared, as we do. Let go too,
        # then try again to be the one that initializes it (randomized, so we do not collide
        # with those openers in lockstep).
        _unlock(fd, F.LOCK_ALIVE)
        now = time.monotonic()
        if deadline is None:
            deadline = now + _INIT_WAIT
        elif now >= deadline:
            raise LockedError(f"{path} is in use by another process but was never initialized")
        time.sleep(random.uniform(0, delay))
        delay = min(delay * 2, _POLL_MAX)


def _same_file(path: Path, st: os.stat_result) -> bool:
    """True if ``path`` still names the file whose ``fstat`` is ``st``."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


# struct flock of Linux (x86-64, arm64, ...): l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("@hhqqi4x")


def lock_holder(fd: int, offset: int) -> int | None:
    """The pid of another process holding a lock on byte ``offset`` of ``fd``'s file that
    an exclusive lock would conflict with (``F_GETLK``); None if there is none, or the
    platform's ``struct flock`` is not known here."""
    if not sys.platform.startswith("linux"):
        return None
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
    try:
        reply = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    l_type, _whence, _start, _len, pid = _FLOCK.unpack(reply)
    return None if l_type == fcntl.F_UNLCK or pid <= 0 else int(pid)


#: Lock files this process holds through :func:`claim_unused`: (device, inode) -> descriptor.
_claimed: dict[tuple[int, int], int] = {}


def claim_unused(directory: str | Path, what: str) -> int:
    """Make sure no process has the database in ``directory`` open, and keep it that way.

    Opens (creating if needed) ``directory/LOCK`` and takes its alive byte exclusively:
    every process that has the database open holds it shared, and an opener waits for it
    (then, seeing the file replaced, starts again on the new one); an opener in this
    process gets LockedError meanwhile (record locks do not exclude our own process).
    Returns the descriptor; :func:`release_claim` lets openers in. Raises LockedError naming
    ``what`` and a holder's pid (the writer's if a writer is running) when another process
    has the database open, or when this process has (its own record locks would not
    conflict, and closing the descriptor would drop them); StorageError.
    """
    path = Path(directory) / F.FILE_NAME
    with LockFile._registry_lock:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and any(key[0] == os.getpid() and key[1:] == (st.st_dev, st.st_ino)
                                  for key in LockFile._registry):
            raise LockedError(f"{what} is open in this process (close it first)")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise storage_error(exc, "open lock file", path) from exc
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in _claimed:
                raise LockedError(f"{what} is being replaced by this process")
            if _try_lock(fd, fcntl.LOCK_EX, F.LOCK_ALIVE):
                _claimed[(st.st_dev, st.st_ino)] = fd
                return fd
        except BaseException:
            os.close(fd)
            raise
    try:
        writer = lock_holder(fd, F.LOCK_BTREE_WRITER)
        holder = writer if writer is not None else lock_holder(fd, F.LOCK_ALIVE)
        if holder is None:
            raise LockedError(f"{what} is in use by another process")
        doing = "is writing to it" if writer is not None else "has it open"
        raise LockedError(f"{what} is in use: process {holder} {doing}")
    except BaseException:
        os.close(fd)
        raise


def release_claim(fd: int) -> None:
    """Give up a :func:`claim_unused` (closing its descriptor lets openers in)."""
    with LockFile._registry_lock:
        for key, held in list(_claimed.items()):
            if held == fd:
                del _claimed[key]
        with contextlib.suppress(OSError):
            os.close(fd)


class ExclusiveLock:
    """An exclusive lock across processes *and* threads on one byte of the lock file."""

    def __init__(self, fd: int, offset: int, what: str) -> None:
        self._fd = fd
        self._offset = offset
        self._what = what
        self._thread_lock = threading.Lock()

    def acquire(self, timeout: float | None) -> None:
        """Block until held or ``timeout`` seconds pass; raises :class:`LockedError`."""
        start = time.monotonic()
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockedError(f"{self._what} is locked by another thread (waited {timeout:g}s)")
        try:
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            _lock_with_timeout(self._fd, fcntl.LOCK_EX, self._offset, left, self._what)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Release a held lock."""
        _unlock(self._fd, self._offset)
        self._thread_lock.release()

    @contextlib.contextmanager
    def held(self, timeout: float | None) -> Iterator[None]:
        """Context manager form of :meth:`acquire` / :meth:`release`."""
        self.acquire(timeout)
        try:
            yield
        finally:
            self.release()


class SharedExclusiveLock:
    """A readers-writer lock across processes and threads on one byte of the lock file.

    In-process shared holders are counted; the process holds the ``fcntl`` read lock while
    the count is positive. Exclusive holders exclude everyone, in this and other processes.
    """

    def __init__(self, fd: int, offset: int, what: str) -> None:
        self._fd = fd
        self._offset = offset
        self._what = what
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    def acquire_shared(self) -> None:
        """Block until a shared hold is granted (no timeout: exclusive holds are brief)."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            if self._shared == 0:
                fcntl.lockf(self._fd, fcntl.LOCK_SH, 1, self._offset)
            self._shared += 1

    def release_shared(self) -> None:
        """Release one shared hold."""
        with self._cond:
            self._shared -= 1
            if self._shared == 0:
                _unlock(self._fd, self._offset)
                self._cond.notify_all()

    def acquire_exclusive(self, timeout: float | None) -> None:
        """Block until exclusive (or ``timeout``); raises :class:`LockedError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._exclusive or self._shared:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LockedError(f"{self._what} is held by this process (waited {timeout:g}s)")
                self._cond.wait(left)
            self._exclusive = True
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            _lock_with_timeout(self._fd, fcntl.LOCK_EX, self._offset, left, self._what)
        except BaseException:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
            raise

    def release_exclusive(self) -> None:
        """Release the exclusive hold."""
        _unlock(self._fd, self._offset)
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()


class Slot:
    """A reader slot owned by this process: publish a snapshot txnid, clear it, release it.

    ``set(txnid)`` and ``clear()`` are plain memory writes (no system call).
    """

    def __init__(self, owner: LockFile, index: int) -> None:
        self.owner = owner
        self.index = index

    def set(self, txnid: int, kind: int = F.SLOT_READER) -> None:
        """Publish ``txnid`` (> 0) as the snapshot this slot's user reads."""
        self.owner._write_slot(self.index, os.getpid(), txnid, kind)

    def clear(self) -> None:
        """Stop pinning any snapshot (the slot stays owned)."""
        self.owner._write_slot(self.index, os.getpid(), 0, F.SLOT_READER)

    def release(self) -> None:
        """Clear the slot and return it to this process's pool."""
        self.clear()
        self.owner._release_slot(self)


class LockFile:
    """The mapped ``LOCK`` file of one database, one instance per process and file.

    Use :meth:`open`; call :meth:`close` once per :meth:`open`. Thread-safe.
    """

    _registry: dict[tuple[int, int, int], LockFile] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        # Counters that other processes read without a lock (the seqlock, the commit seq)
        # are read and written as single aligned 8-byte words: struct packs and unpacks
        # byte by byte, so a reader could see a mix of two values (it did: a torn seqlock
        # counter equal to an old even one let a reader accept a mixed meta record).
        self._bytes_view = memoryview(mm)
        self._words = self._bytes_view[: F.HEADER_SIZE].cast("Q")
        self._refs = 0
        self._key: tuple[int, int, int] = (0, 0, 0)
        self._slot_lock = threading.Lock()
        self._owned_slots: set[int] = set()
        self._free_slots: list[int] = []
        self._table_locks: dict[tuple[int, int], ExclusiveLock] = {}
        self.btree_writer = ExclusiveLock(fd, F.LOCK_BTREE_WRITER, f"database {path.parent}")
        self.commit_gate = SharedExclusiveLock(fd, F.LOCK_COMMIT_GATE, "commit gate")
        self.commit_blocker = SharedExclusiveLock(fd, F.LOCK_COMMIT_BLOCKER, "commit blocker")
        self.seq_mutex = ExclusiveLock(fd, F.LOCK_SEQ_MUTEX, "commit seq")
        self.history_lock = ExclusiveLock(fd, F.LOCK_HISTORY, "backup history")
        self.ddl_lock = ExclusiveLock(fd, F.LOCK_DDL, f"table catalog of {path.parent}")
        self.pins_lock = ExclusiveLock(fd, F.LOCK_PINS, f"backup pins of {path.parent}")
        #: True when this process (re)initialized the file: it was the only user.
        self.initialized_here = False

    # ---------------------------------------------------------------- open / close
    @classmethod
    def open(cls, directory: str | Path, init: Callable[[LockFile], None]) -> LockFile:
        """Open (creating if needed) ``directory/LOCK`` and return this process's instance.

        If no other process has the database open, the file is reset and ``init(lockfile)``
        runs while every other opener waits; it must seed :meth:`set_commit_seq` and
        :meth:`publish_btree_meta`. Raises NotADatabaseError / VersionError for a foreign or
        future lock file that is in use by other processes.
        """
        path = Path(directory) / F.FILE_NAME
        with cls._registry_lock:
            while True:
                # Look up by stat, never by opening: closing a second descriptor of the file
                # would drop every record lock this process holds on it.
                try:
                    st = os.stat(path)
                    existing = cls._registry.get((os.getpid(), st.st_dev, st.st_ino))
                except FileNotFoundError:
                    existing = None
                if existing is not None:
                    existing._refs += 1
                    return existing
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                                 0o644)
                except OSError as exc:
                    raise storage_error(exc, "open lock file", path) from exc
                try:
                    st = os.fstat(fd)
                    key = (os.getpid(), st.st_dev, st.st_ino)
                    if (st.st_dev, st.st_ino) in _claimed:
                        raise LockedError(f"{path.parent} is being replaced by a restore in "
                                          "this process")
                    mm, alone = _attach(fd, path)
                except BaseException:
                    os.close(fd)  # releases the alive lock too
                    raise
                if _same_file(path, st):
                    break
                # A restore replaced the database while we waited for the alive lock (it
                # holds it exclusively while it does, see claim_unused): this descriptor is
                # the replaced database's lock file. Start again on the new one.
                mm.close()
                os.close(fd)
            lf = cls(path, fd, mm)
            lf._key = key
            try:
                if alone:
                    lf._initialize(init)
                else:
                    lf._validate()
            except BaseException:
                lf._unmap()
                os.close(fd)
                raise
            lf._refs = 1
            cls._registry[key] = lf
            return lf

    def _initialize(self, init: Callable[[LockFile], None]) -> None:
        """Reset and seed the file; we hold the alive lock exclusively (we are alone)."""
        self._reset()
        try:
            init(self)
        except BaseException:
            # Unseeded: leave a zero header, so an opener that was waiting for us sees the
            # file as never initialized and initializes it itself instead of using it.
            self._mm[: F.STATIC_SIZE] = bytes(F.STATIC_SIZE)
            _unlock(self._fd, F.LOCK_ALIVE)
            raise
        self.initialized_here = True
        fcntl.lockf(self._fd, fcntl.LOCK_SH, 1, F.LOCK_ALIVE)  # atomic downgrade

    def _reset(self) -> None:
        mm = self._mm
        count = _U64.unpack_from(mm, F.OFF_INIT_COUNT)[0]  # read before the wipe below
        mm[: F.FILE_SIZE] = bytes(F.FILE_SIZE)
        static = F.STATIC_HEADER.pack(F.MAGIC, F.VERSION, F.HEADER_SIZE, F.SLOT_COUNT,
                                      F.SLOT_SIZE)
        mm[: F.STATIC_HEADER.size] = static
        F.STATIC_CHECKSUM.pack_into(mm, F.STATIC_HEADER.size, xxhash.xxh3_64_intdigest(static))
        _U64.pack_into(mm, F.OFF_INIT_COUNT, (count + 1) & 0xFFFF_FFFF_FFFF_FFFF)

    def _validate(self) -> None:
        magic, version, header_size, slots, slot_size = F.STATIC_HEADER.unpack_from(self._mm)
        if magic != F.MAGIC:
            raise NotADatabaseError(f"{self.path} is not a Lamina lock file (bad magic)")
        if version > F.VERSION:
            raise VersionError(f"{self.path} is lock file version {version}; "
                               f"this build knows up to {F.VERSION}")
        checksum = F.STATIC_CHECKSUM.unpack_from(self._mm, F.STATIC_HEADER.size)[0]
        static = bytes(self._mm[: F.STATIC_HEADER.size])
        if checksum != xxhash.xxh3_64_intdigest(static) or (header_size, slots, slot_size) != (
                F.HEADER_SIZE, F.SLOT_COUNT, F.SLOT_SIZE):
            raise NotADatabaseError(f"{self.path} has a damaged header")

    def close(self) -> None:
        """Drop one reference; the last one unmaps the file and releases every lock."""
        with LockFile._registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            LockFile._registry.pop(self._key, None)
        with self._slot_lock:
            for index in self._owned_slots:
                self._write_slot(index, 0, 0, 0)
            self._owned_slots.clear()
            self._free_slots.clear()
        self._unmap()
        os.close(self._fd)  # releases every fcntl lock this process held on the file

    def _unmap(self) -> None:
        """Release the word views, then unmap (an mmap with live views cannot close)."""
        self._words.release()
        self._bytes_view.release()
        self._mm.close()

    # ---------------------------------------------------------------- shared counters
    def set_commit_seq(self, seq: int) -> None:
        """Set the last handed-out commit seq (only during ``init`` or under ``seq_mutex``)."""
        self._words[F.OFF_COMMIT_SEQ // 8] = seq

    def commit_seq(self) -> int:
        """The last commit seq handed out (one aligned 8-byte memory read)."""
        return int(self._words[F.OFF_COMMIT_SEQ // 8])

    def next_commit_seq(self) -> int:
        """Hand out the next commit seq. Call only while holding the commit blocker shared,
        so a validity point (blocker exclusive) sees every seq handed out as published."""
        with self.seq_mutex.held(None):
            seq = self.commit_seq() + 1
            self.set_commit_seq(seq)
            return seq

    def publish_btree_meta(self, record: bytes) -> None:
        """Publish the last committed btree meta record (one writer at a time: under the
        btree writer lock and the commit blocker). A seqlock lets readers that take no lock
        see the old record or the new one, never a mix."""
        if len(record) > F.BTREE_META_MAX:
            raise ValueError("btree meta record too large for the lock file")
        words, at = self._words, F.OFF_BTREE_META_SEQ // 8
        seq = words[at]
        words[at] = seq | 1  # odd: being rewritten
        _U32.pack_into(self._mm, F.OFF_BTREE_META_LEN, len(record))
        self._mm[F.OFF_BTREE_META: F.OFF_BTREE_META + len(record)] = record
        words[at] = (seq | 1) + 1

    def btree_meta(self) -> bytes:
        """The last published btree meta record (memory reads only, no file I/O, no lock).

        Retries while a publish is under way (the seqlock is odd or moved); the writer holds
        it odd for a memcpy of a few hundred bytes, so this returns almost at once.
        """
        mm, words, at = self._mm, self._words, F.OFF_BTREE_META_SEQ // 8
        spins = 0
        while True:
            before = words[at]
            if not before & 1:
                n = _U32.unpack_from(mm, F.OFF_BTREE_META_LEN)[0]
                record = bytes(mm[F.OFF_BTREE_META: F.OFF_BTREE_META + min(n, F.BTREE_META_MAX)])
                if words[at] == before:
                    return record
            spins += 1
            if spins > 100:  # the publisher was preempted mid-copy: let it run
                time.sleep(0)

    def btree_txnid(self) -> int:
        """The txnid of the last published btree meta record, or 0 if none was published
        (a lock file that no btree store seeded). Memory reads only, like :meth:`btree_meta`.

        The record is the btree engine's (docs/format.md, "Meta pages"); this relies on one
        fact of it that every format version keeps: the txnid is the u64 at bytes 16..23.
        The record is not validated here. Other engines use the value as a harmless txnid for
        a reader slot of theirs (it pins what a reader starting now would pin) without
        importing the btree engine.
        """
        record = self.btree_meta()
        if len(record) < _BTREE_META_TXNID_AT + _U64.size:
            return 0
        return int(_U64.unpack_from(record, _BTREE_META_TXNID_AT)[0])

    def mark_btree_failed(self) -> None:
        """Record that the btree file's meta state is uncertain: no process may write until
        every process has closed the database (the next first opener resets this)."""
        _U64.pack_into(self._mm, F.OFF_BTREE_FAILED, 1)

    def set_btree_meta_unsynced(self, unsynced: bool) -> None:
        """Record whether the last published btree commit skipped its meta fsync."""
        _U64.pack_into(self._mm, F.OFF_BTREE_UNSYNCED, int(unsynced))

    def btree_meta_unsynced(self) -> bool:
        """True while the last btree commit's meta may not be durable (``sync=False``)."""
        return bool(_U64.unpack_from(self._mm, F.OFF_BTREE_UNSYNCED)[0])

    def btree_failed(self) -> bool:
        """True after :meth:`mark_btree_failed`, in any process."""
        return bool(_U64.unpack_from(self._mm, F.OFF_BTREE_FAILED)[0])

    # ---------------------------------------------------------------- commit blocker
    @contextlib.contextmanager
    def publishing_commit(self) -> Iterator[None]:
        """Hold the commit blocker shared while a commit publishes itself.

        Passing through the gate first means a waiting validity point is not starved by
        an endless stream of commits.
        """
        self.commit_gate.acquire_shared()
        try:
            self.commit_blocker.acquire_shared()
        finally:
            self.commit_gate.release_shared()
        try:
            yield
        finally:
            self.commit_blocker.release_shared()

    @contextlib.contextmanager
    def commits_blocked(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the commit blocker exclusively: no commit of any engine publishes meanwhile."""
        self.commit_gate.acquire_exclusive(timeout)
        try:
            self.commit_blocker.acquire_exclusive(timeout)
            try:
                yield
            finally:
                self.commit_blocker.release_exclusive()
        finally:
            self.commit_gate.release_exclusive()

    # ---------------------------------------------------------------- table locks
    def table_lock(self, base: int, table_id: int, what: str) -> ExclusiveLock:
        """The exclusive lock at ``base + table_id`` (table writer or default-driver lock)."""
        key = (base, table_id)
        with self._slot_lock:
            lock = self._table_locks.get(key)
            if lock is None:
                lock = ExclusiveLock(self._fd, base + table_id, what)
                self._table_locks[key] = lock
            return lock

    def table_writer_lock(self, table_id: int, name: str) -> ExclusiveLock:
        """The lock a writer of archive table ``table_id`` holds while it writes."""
        return self.table_lock(F.LOCK_TABLE_WRITER_BASE, table_id, f"table {name!r}")

    # ---------------------------------------------------------------- reader slots
    def _write_slot(self, index: int, pid: int, txnid: int, kind: int) -> None:
        F.SLOT.pack_into(self._mm, F.HEADER_SIZE + index * F.SLOT_SIZE, pid, txnid,
                         time.time_ns() if txnid else 0, kind)

    def _read_slot(self, index: int) -> tuple[int, int, int, int]:
        pid, txnid, ns, kind = F.SLOT.unpack_from(self._mm, F.HEADER_SIZE + index * F.SLOT_SIZE)
        return pid, txnid, ns, kind

    def acquire_slot(self) -> Slot:
        """Own a reader slot (from this process's pool, or claim a free or dead one).

        Raises LockedError when all slots are in use by live processes.
        """
        with self._slot_lock:
            if self._free_slots:
                return Slot(self, self._free_slots.pop())
            for index in range(F.SLOT_COUNT):
                if index in self._owned_slots:
                    continue
                if _try_lock(self._fd, fcntl.LOCK_EX, F.LOCK_SLOT_BASE + index):
                    self._owned_slots.add(index)
                    self._write_slot(index, os.getpid(), 0, F.SLOT_READER)
                    return Slot(self, index)
        raise LockedError(f"all {F.SLOT_COUNT} reader slots of {self.path.parent} are in use")

    def _release_slot(self, slot: Slot) -> None:
        with self._slot_lock:
            if slot.index in self._owned_slots:
                self._free_slots.append(slot.index)

    def live_slots(self) -> list[tuple[int, int, int, int]]:
        """(index, pid, txnid, kind) of every slot pinning a snapshot; reclaims dead ones."""
        result = []
        for index, (pid, txnid, _ns, kind) in enumerate(
                F.SLOT.iter_unpack(self._mm[F.HEADER_SIZE: F.FILE_SIZE])):
            if txnid == 0:
                continue
            # Held across the ownership check, the probe and the clear: record locks do not
            # exclude our own threads, so a slot another thread of this process claims in
            # between would otherwise be probed "free", wiped and unlocked under it.
            with self._slot_lock:
                if (index not in self._owned_slots
                        and _try_lock(self._fd, fcntl.LOCK_EX, F.LOCK_SLOT_BASE + index)):
                    # Nobody holds the slot's lock, yet it pins a txnid: its owner died.
                    self._write_slot(index, 0, 0, 0)
                    _unlock(self._fd, F.LOCK_SLOT_BASE + index)
                    continue
            result.append((index, pid, txnid, kind))
        return result

    def oldest_reader_txnid(self) -> int | None:
        """Smallest snapshot txnid pinned by any live reader in any process or by an
        unexpired durable backup pin (:meth:`live_pins`), or None."""
        txnids = [txnid for _i, _p, txnid, _k in self.live_slots()]
        txnids += [txnid for txnid, _expires in self.live_pins()]
        return min(txnids) if txnids else None

    # ---------------------------------------------------------------- durable pins
    def publish_pins(self, pins: list[tuple[int, int]]) -> None:
        """Mirror the durable backup pins, ``[(btree txnid > 0, expiry ns)]`` (at most
        ``PIN_ENTRIES``; the caller holds ``pins_lock``, or is initializing the file).

        A new entry's expiry is written before its txnid and a removed entry's txnid is
        cleared first, each an aligned 8-byte store, so a reader without a lock sees an
        entry whole or not at all. Callers add a pin only while a reader slot of theirs
        pins the same txnid, so a reader that misses a new entry loses nothing.
        """
        if len(pins) > F.PIN_ENTRIES:
            raise ValueError(f"at most {F.PIN_ENTRIES} durable pins fit the lock file")
        words = self._words
        base = F.OFF_PINS // 8
        for i in range(F.PIN_ENTRIES):
            txnid, expires = pins[i] if i < len(pins) else (0, 0)
            words[base + 2 * i] = 0
            if txnid:
                words[base + 2 * i + 1] = expires
                words[base + 2 * i] = txnid

    def live_pins(self, now_ns: int | None = None) -> list[tuple[int, int]]:
        """``[(txnid, expiry ns)]`` of every mirrored durable pin whose lease has not
        expired at ``now_ns`` (default: the wall clock). Memory reads only."""
        now = time.time_ns() if now_ns is None else now_ns
        words = self._words
        base = F.OFF_PINS // 8
        out = []
        for i in range(F.PIN_ENTRIES):
            txnid = int(words[base + 2 * i])
            expires = int(words[base + 2 * i + 1])
            if txnid and expires > now:
                out.append((txnid, expires))
        return out
