"""Per-table backup locks: the default backup driver's lock that makes a table's writers wait.

``LOCK`` byte ``LOCK_TABLE_BACKUP_BASE + table_id`` (docs/format.md, "Lock file") is a
readers-writer lock across processes and threads:

* every *writer* of table T (a btree write transaction from its first change of T until it
  commits or aborts; an archive appender for the duration of one commit) holds it
  **shared**; the common case (no backup) costs one non-blocking ``fcntl`` call to take it
  and one to drop it;
* the *default backup driver* holds it **exclusively** from ``prelock()`` until T's rows are
  sent, so T's writers wait (up to their lock timeout, then LockedError) and T cannot change
  between the validity point and the end of its read. Writers of other tables are not
  affected (but note that btree writers are serialized anyway: while one waits for T,
  other btree writers wait for it, as behind any long btree transaction).

POSIX record locks do not exclude the threads of one process, and a process that holds a
shared lock and asks for an exclusive one *converts* it. So, like
:class:`lamina.core.lockfile.SharedExclusiveLock`, each lock pairs the ``fcntl`` lock with
in-process state: one process-wide shared count and exclusive flag per table.

Lock order (no cycles): btree writer lock -> table backup lock (shared) -> commit blocker.
The default driver takes only table backup locks (exclusively) and, later, the commit blocker.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
import weakref
from collections.abc import Iterator

from lamina.core import lockfile_format as LF
from lamina.core.lockfile import LockFile
from lamina.errors import LockedError

_POLL_MIN = 0.0002
_POLL_MAX = 0.01


def _try(fd: int, kind: int, offset: int) -> bool:
    try:
        fcntl.lockf(fd, kind | fcntl.LOCK_NB, 1, offset)
        return True
    except (BlockingIOError, PermissionError):
        return False


class TableBackupLock:
    """The backup lock of one table, shared by every thread of this process.

    Thread-safe. Obtain it with :func:`table_backup_lock` (one instance per lock file and
    table id, so in-process holders are counted together).
    """

    def __init__(self, lockfile: LockFile, table_id: int) -> None:
        self._lockfile = lockfile
        self.table_id = table_id
        self._offset = LF.LOCK_TABLE_BACKUP_BASE + table_id
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @property
    def _fd(self) -> int:
        # The lock file's one descriptor: closing another descriptor of LOCK would drop
        # every record lock this process holds, so we must share it.
        return self._lockfile._fd

    # ---------------------------------------------------------------- writers
    def acquire_shared(self, timeout: float | None, what: str = "") -> None:
        """Hold the lock shared (a writer of the table). Waits while a default backup driver
        holds it, up to ``timeout`` seconds (None: forever), then raises LockedError.

        Cheap when nobody backs the table up: one non-blocking ``fcntl`` call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_MIN
        with self._cond:
            while True:
                if not self._exclusive and (
                        self._shared or _try(self._fd, fcntl.LOCK_SH, self._offset)):
                    self._shared += 1
                    return
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    name = what or f"table id {self.table_id}"
                    raise LockedError(f"{name} is locked by a backup (default driver); "
                                      f"waited {timeout:g}s")
                wait = delay if left is None else min(delay, left)
                self._cond.wait(wait)  # woken early when an in-process exclusive ends
                delay = min(delay * 2, _POLL_MAX)

    def release_shared(self) -> None:
        """Drop one shared hold (the last one in this process drops the ``fcntl`` lock)."""
        with self._cond:
            self._shared -= 1
            if self._shared == 0:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset)
                self._cond.notify_all()

    @contextlib.contextmanager
    def shared(self, timeout: float | None, what: str = "") -> Iterator[None]:
        """Context manager form of :meth:`acquire_shared` / :meth:`release_shared`."""
        self.acquire_shared(timeout, what)
        try:
            yield
        finally:
            self.release_shared()

    # ---------------------------------------------------------------- default driver
    def try_exclusive(self) -> bool:
        """Try once, without waiting, to hold the lock exclusively; True if now held.

        False while any writer of the table (any thread, any process) holds it shared or
        another backup holds it exclusively.
        """
        with self._cond:
            if self._exclusive or self._shared:
                return False
            if not _try(self._fd, fcntl.LOCK_EX, self._offset):
                return False
            self._exclusive = True
            return True

    def release_exclusive(self) -> None:
        """Release an exclusive hold (idempotent: a no-op if not held)."""
        with self._cond:
            if not self._exclusive:
                return
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self._offset)
            self._exclusive = False
            self._cond.notify_all()

    @property
    def held_exclusive(self) -> bool:
        """True while this process holds the lock exclusively."""
        return self._exclusive


_registry: weakref.WeakKeyDictionary[LockFile, dict[int, TableBackupLock]] = \
    weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def table_backup_lock(lockfile: LockFile, table_id: int) -> TableBackupLock:
    """This process's :class:`TableBackupLock` of ``table_id`` in ``lockfile``."""
    with _registry_lock:
        locks = _registry.get(lockfile)
        if locks is None:
            locks = _registry[lockfile] = {}
        lock = locks.get(table_id)
        if lock is None:
            lock = locks[table_id] = TableBackupLock(lockfile, table_id)
        return lock


class HeldTableLocks:
    """The table backup locks one holder (a default driver's source) holds exclusively, by
    table id. Not thread-safe: one backup driver uses it from one thread."""

    def __init__(self, lockfile: LockFile) -> None:
        self._lockfile = lockfile
        self._held: dict[int, TableBackupLock] = {}

    def try_lock(self, table_id: int) -> bool:
        """One non-blocking try for ``table_id``'s lock; True if held (now or already)."""
        if table_id in self._held:
            return True
        lock = table_backup_lock(self._lockfile, table_id)
        if not lock.try_exclusive():
            return False
        self._held[table_id] = lock
        return True

    def holds(self, table_id: int) -> bool:
        """True while ``table_id``'s lock is held."""
        return table_id in self._held

    def unlock(self, table_id: int) -> None:
        """Release ``table_id``'s lock if held."""
        lock = self._held.pop(table_id, None)
        if lock is not None:
            lock.release_exclusive()

    def release_all(self) -> None:
        """Release every lock still held. Never raises."""
        held, self._held = self._held, {}
        for lock in held.values():
            try:
                lock.release_exclusive()
            except OSError:  # pragma: no cover - unlocking a held fcntl lock cannot fail
                pass


def probe_free(lockfile: LockFile, table_id: int) -> bool:
    """True if no process holds ``table_id``'s backup lock in any mode (for tests and
    diagnostics: takes and drops it exclusively; False if this process holds it)."""
    lock = table_backup_lock(lockfile, table_id)
    if lock.try_exclusive():
        lock.release_exclusive()
        return True
    return False
