"""The repository lock: many readers/backups or one prune, across processes, threads and
machines, made of lease objects (:mod:`lamina.repository.lease`) in the storage itself, so
it works the same on a local directory and on an object store.

Objects under ``locks/``:

* ``locks/exclusive`` — the lease of the one ``prune`` (or other exclusive holder);
* ``locks/shared-<owner>`` — one lease per ``backup``, ``restore``, ``verify``, ``list``;
* ``locks/index`` — exclusive, held briefly to publish an image and update the index
  together, and to load (and maybe rebuild) the index, so readers never see one without
  the other while every writer is alive.

Shared vs exclusive, by writing first and reading second (every read sees every write
that completed before it: S3 and local files are strongly consistent):

* shared: create ``locks/shared-<owner>``, then read ``locks/exclusive``; if a live one
  is there, delete ours, wait, start over;
* exclusive: take the ``locks/exclusive`` lease (one winner), then wait until no live
  shared lease is listed (stale ones are deleted, by compare-and-swap).

Whichever of a shared and an exclusive taker writes second sees the other's lease, so
they never both proceed. Waiting polls with a growing back-off until the timeout, then
raises LockedError (exit 8) naming the holder. A killed holder blocks no one past its
lease's expiry (at once on its own host: its pid is gone).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from lamina.backup.kernel import CancelToken, is_cancelled
from lamina.errors import CancelledError, LockedError
from lamina.repository.layout import LOCKS_DIR
from lamina.repository.lease import Lease, read_lease
from lamina.repository.storage import Storage

EXCLUSIVE_KEY = f"{LOCKS_DIR}/exclusive"
SHARED_PREFIX = f"{LOCKS_DIR}/shared-"
INDEX_KEY = f"{LOCKS_DIR}/index"


class RepositoryLock:
    """The locks of one repository (see the module doc); ``name`` names it in messages,
    ``timeout`` bounds every wait (None: forever), ``ttl`` is the lease lifetime (None:
    the default). Thread-safe: every acquisition has its own lease."""

    def __init__(self, storage: Storage, name: str, timeout: float | None,
                 ttl: float | None = None) -> None:
        self.storage = storage
        self.name = name
        self.timeout = timeout
        self.ttl = ttl

    def _deadline(self) -> float | None:
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _left(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    @contextlib.contextmanager
    def repository(self, *, exclusive: bool, operation: str,
                   cancel: CancelToken = None) -> Iterator[Lease]:
        """Hold the repository lock (shared, or exclusive for prune) for the block;
        ``operation`` names the holder in others' messages and the waiter in the
        LockedError message. Yields the lease (``lost`` tells a stalled holder it was
        taken over). Raises LockedError, StorageError, CancelledError (``cancel`` set
        while waiting: nothing of the waiter is left behind)."""
        lease = self._exclusive(operation, cancel) if exclusive else \
            self._shared(operation, cancel)
        try:
            yield lease
        finally:
            lease.release()

    @staticmethod
    def _check_cancel(cancel: CancelToken, operation: str) -> None:
        if is_cancelled(cancel):
            raise CancelledError(f"{operation} cancelled while waiting for the repository "
                                 "lock")

    def _shared(self, operation: str, cancel: CancelToken) -> Lease:
        deadline = self._deadline()
        delay = 0.005
        while True:
            lease = Lease(self.storage, "", operation, ttl=self.ttl)
            lease.key = SHARED_PREFIX + lease.owner
            if not lease.try_acquire():  # pragma: no cover - a fresh key is always free
                raise LockedError(f"cannot create lease {lease.key} in {self.name}")
            current = read_lease(self.storage, EXCLUSIVE_KEY)
            holder = None if current is None else current[0]
            if current is None or holder is None or holder.stale(time.time_ns()):
                return lease
            lease.release()
            self._check_cancel(cancel, operation)
            left = self._left(deadline)
            if left is not None and left <= 0:
                raise LockedError(f"repository {self.name} is locked by "
                                  f"{holder.describe()}, so {operation} cannot start; "
                                  f"gave up after {self.timeout:g}s")
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, 0.2)

    def _exclusive(self, operation: str, cancel: CancelToken) -> Lease:
        deadline = self._deadline()
        lease = Lease(self.storage, EXCLUSIVE_KEY, operation, ttl=self.ttl)
        lease.acquire(self._left(deadline), f"repository {self.name}",
                      f", so {operation} cannot start",
                      cancel=lambda: self._check_cancel(cancel, operation))
        try:
            delay = 0.005
            while True:
                live = self._live_shared()
                if not live:
                    return lease
                self._check_cancel(cancel, operation)
                left = self._left(deadline)
                if left is not None and left <= 0:
                    raise LockedError(f"repository {self.name} is in use by "
                                      f"{live[0]} (a backup, restore, verify or list), so "
                                      f"{operation} cannot start; gave up after "
                                      f"{self.timeout:g}s")
                time.sleep(delay if left is None else min(delay, left))
                delay = min(delay * 2, 0.2)
        except BaseException:
            lease.release()
            raise

    def _live_shared(self) -> list[str]:
        """Descriptions of the live shared leases; stale ones are removed."""
        live: list[str] = []
        now = time.time_ns()
        for stat in self.storage.list(SHARED_PREFIX):
            current = read_lease(self.storage, stat.key)
            if current is None:
                continue
            holder, token = current
            if holder is None or holder.stale(now):
                self.storage.delete_if(stat.key, token)
                continue
            live.append(holder.describe())
        return live

    @contextlib.contextmanager
    def index(self) -> Iterator[Lease]:
        """Hold the index lock (exclusive, briefly) for the block. Raises LockedError,
        StorageError."""
        lease = Lease(self.storage, INDEX_KEY, "index update", ttl=self.ttl)
        lease.acquire(self.timeout, f"index of repository {self.name}")
        try:
            yield lease
        finally:
            lease.release()
