"""The repository lock: many readers/backups or one prune, across processes and threads.

Each lock is a file under ``locks/`` locked with ``fcntl.flock``. A flock belongs to the
open file description, so it excludes other descriptors of the same process too (threads
need no extra lock) and closing some other descriptor of the file does not drop it (unlike
POSIX record locks). The kernel releases it when its holder dies, however it dies: a lock
held by a killed process never blocks anyone (no pid files, no stale-lock guessing).

Two locks:

* ``locks/repository`` — shared by ``backup``, ``restore``, ``verify`` and ``list`` for their
  whole run; exclusive for ``prune`` (which deletes images and clears staging files).
* ``locks/index`` — exclusive, held briefly to publish an image and update the index
  together, and to load (and maybe rebuild) the index, so readers never see one without
  the other while every writer is alive.

Waiting polls with a growing back-off until the timeout, then raises LockedError (exit 8).
The lock files hold no data (nothing to go stale).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lamina.core import fileio
from lamina.errors import LockedError, StorageError, storage_error

REPOSITORY_LOCK = "repository"
INDEX_LOCK = "index"


class FileLock:
    """One flock-ed lock file. Not reentrant: one ``FileLock`` object per holder."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def _open(self) -> int:
        fileio.mkdir(self.path.parent, parents=True, exist_ok=True)
        try:
            return fileio.open_fd(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as exc:  # the directory was removed meanwhile
            raise storage_error(exc, "open lock file", self.path) from exc

    def _close(self, fd: int) -> None:
        with contextlib.suppress(StorageError):  # a lock file holds no data
            fileio.close_fd(fd, self.path)

    def acquire(self, *, shared: bool, timeout: float | None, busy: str = "") -> None:
        """Take the lock, waiting up to ``timeout`` seconds (None: forever, 0: try once).

        ``busy`` explains in the LockedError message who may hold it. Raises LockedError on
        timeout, StorageError if the file cannot be opened or locked.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.what} lock is already held by this object")
        fd = self._open()
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                pass
            except OSError as exc:
                self._close(fd)
                raise storage_error(exc, "lock", self.path) from exc
            if deadline is not None and time.monotonic() >= deadline:
                self._close(fd)
                raise LockedError(f"{self.what} is locked by another process{busy}; "
                                  f"gave up after {timeout:g}s")
            time.sleep(delay if deadline is None else
                       max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 0.05)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._close(fd)

    @property
    def held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`."""
        return self._fd is not None


class RepositoryLock:
    """The two locks of one repository (see the module doc). ``lock_dir`` is local."""

    def __init__(self, lock_dir: Path, name: str, timeout: float | None) -> None:
        self.lock_dir = lock_dir
        self.name = name
        self.timeout = timeout

    @contextlib.contextmanager
    def repository(self, *, exclusive: bool, operation: str) -> Iterator[None]:
        """Hold the repository lock (shared, or exclusive for prune) for the block;
        ``operation`` names the waiter in the LockedError message."""
        lock = FileLock(self.lock_dir / REPOSITORY_LOCK, f"repository {self.name}")
        holders = "a backup, restore, verify or list" if exclusive else "a prune"
        lock.acquire(shared=not exclusive, timeout=self.timeout,
                     busy=f" ({holders}), so {operation} cannot start")
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def index(self) -> Iterator[None]:
        """Hold the index lock (exclusive, briefly) for the block."""
        lock = FileLock(self.lock_dir / INDEX_LOCK, f"index of repository {self.name}")
        lock.acquire(shared=False, timeout=self.timeout)
        try:
            yield
        finally:
            lock.release()
