"""Leases: locks made of objects, for storages without a file system (and for local ones).

A lease is a small JSON object (docs/format.md, "Repository lease objects") created with
a conditional write (:meth:`~lamina.repository.storage.Storage.create_if_absent`:
``If-None-Match: *`` on S3, a hard link locally), so of any number of racing creators
exactly one holds it. It names its holder (``owner`` — a random id per acquisition —,
``host``, ``pid``, ``operation``) and its ``expires_ns`` (wall clock). While held, a
background thread renews it every ``ttl / 3`` seconds by compare-and-swap on its version
(:meth:`~lamina.repository.storage.Storage.replace_if`); a holder whose renewal finds the
lease changed (taken over after it stalled past the expiry), finds it expired before it
could renew it (it stalled: a waiter may have acted on the expiry — a shared holder does
not take an expired exclusive lease over, it ignores it), or whose renewals fail until the
lease has expired (the store unreachable), marks it ``lost`` (:attr:`Lease.lost_event`):
the operation holding it stops at its next cancellation check (:meth:`Lease.cancel_token`)
with LockedError (:meth:`Lease.lost_error`), and :meth:`Lease.confirm` proves the lease
held, by a renewal, right before anything is published under it.

A lease is *stale* when its expiry has passed, when its holder's process is gone (same
host, pid not alive, or alive with another start time — pid reuse), or when it cannot be
parsed (a leftover of an older format, garbage: no process id, an expiry beyond twice
:data:`MAX_TTL` from now). A stale lease is taken over by a compare-and-swap
on the version read: two waiters that both see it stale cannot both win (the second
swap finds a new version). A waiter keeps trying, with a growing back-off, until its
timeout (LockedError naming the holder). No one waits forever after a holder is killed:
at most until the lease expires (``ttl``), at once on the holder's own host.

Clocks: expiry compares the reader's wall clock with the writer's; hosts sharing a
repository must keep their clocks within a fraction of ``ttl`` (NTP).

Concurrency: one :class:`Lease` object per holder; its renewal thread is its own.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lamina.errors import LaminaError, LockedError, NotFoundError, StorageError
from lamina.repository.storage import Storage

LEASE_MAGIC = "LAMINA-LEASE"
LEASE_VERSION = 1
#: Default lease lifetime, seconds (``LAMINA_LEASE_TTL`` overrides it, e.g. in tests).
DEFAULT_TTL = 30.0
#: Largest lease object read (a sane bound before parsing).
MAX_LEASE_SIZE = 4096
#: Longest lease lifetime, seconds (``LAMINA_LEASE_TTL`` is capped to it): a lease
#: expiring more than twice this beyond the reader's clock is garbage (stale), not a
#: holder that locks the repository until some far year.
MAX_TTL = 24 * 3600.0
#: Process ids a lease may name (Linux's pid_max is at most 2**22).
MAX_PID = 2**31 - 1


def default_ttl() -> float:
    """``LAMINA_LEASE_TTL`` seconds if set (0.5..:data:`MAX_TTL`), else
    :data:`DEFAULT_TTL`."""
    raw = os.environ.get("LAMINA_LEASE_TTL", "")
    try:
        return min(MAX_TTL, max(0.5, float(raw))) if raw else DEFAULT_TTL
    except ValueError:
        return DEFAULT_TTL


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


#: This process's host, as leases name it: the host name and its pid namespace (two
#: containers may share a name; their pids are not comparable).
_HOST = f"{socket.gethostname()}/{_pid_namespace()}" if _pid_namespace() else \
    socket.gethostname()
_BOOT = _boot_id()


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """A parsed lease object."""

    owner: str
    host: str
    boot: str
    pid: int
    started: int | None
    operation: str
    acquired_ns: int
    expires_ns: int

    def encode(self) -> bytes:
        """The lease object's bytes (JSON, one line)."""
        return json.dumps({"magic": LEASE_MAGIC, "version": LEASE_VERSION,
                           "owner": self.owner, "host": self.host, "boot": self.boot,
                           "pid": self.pid, "pid_started": self.started,
                           "operation": self.operation, "acquired_ns": self.acquired_ns,
                           "expires_ns": self.expires_ns},
                          sort_keys=True, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> LeaseInfo | None:
        """Parse lease bytes; None when they are not a lease this build reads."""
        try:
            obj: Any = json.loads(data.decode()) if len(data) <= MAX_LEASE_SIZE else None
            if not isinstance(obj, dict) or obj.get("magic") != LEASE_MAGIC \
                    or obj.get("version") != LEASE_VERSION:
                return None
            started = obj.get("pid_started")
            info = cls(str(obj["owner"]), str(obj["host"]), str(obj.get("boot", "")),
                       int(obj["pid"]), None if started is None else int(started),
                       str(obj["operation"]), int(obj["acquired_ns"]), int(obj["expires_ns"]))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError):
            return None
        if not 0 < info.pid <= MAX_PID:
            return None  # no process (0, -1 would name groups, a huge one no C long)
        return info

    def stale(self, now_ns: int) -> bool:
        """True when expired (or expiring more than twice :data:`MAX_TTL` after ``now_ns``:
        no holder writes that), or when its holder is a dead process of this host."""
        if now_ns > self.expires_ns or self.expires_ns - now_ns > int(2 * MAX_TTL * 1e9):
            return True
        if self.host != _HOST or not self.boot or not _BOOT:
            return False  # another machine (or pid namespace): only the expiry tells
        if self.boot != _BOOT:
            return True  # this machine rebooted since: its holder is gone
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        started = _start_time(self.pid)
        return started is not None and self.started is not None and started != self.started

    def describe(self) -> str:
        """Who holds it, for messages: operation, host, pid, until when."""
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_ns / 1e9))
        return f"{self.operation} (pid {self.pid} on {self.host}, lease until {until})"


def read_lease(storage: Storage, key: str) -> tuple[LeaseInfo | None, str] | None:
    """The lease at ``key`` and its version token; None when there is none. A lease that
    does not parse is returned as (None, token): stale. Raises StorageError."""
    try:
        data, token = storage.read_versioned(key, limit=MAX_LEASE_SIZE)
    except NotFoundError:
        return None
    return LeaseInfo.decode(data), token


class Lease:
    """One lease at ``key`` (see the module doc): :meth:`try_acquire` / :meth:`acquire`,
    then :meth:`release`. While held it is renewed in the background."""

    def __init__(self, storage: Storage, key: str, operation: str, *,
                 ttl: float | None = None) -> None:
        self.storage = storage
        self.key = key
        self.operation = operation
        self.ttl = default_ttl() if ttl is None else min(ttl, MAX_TTL)
        self.owner = uuid.uuid4().hex
        self._token: str | None = None
        self._info: LeaseInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        #: Set (by the renewal thread) when the lease is lost: a renewal found it taken
        #: over (the holder stalled past its expiry), or renewals failed until it expired.
        self.lost_event = threading.Event()
        #: Why it was lost (for messages), once it was.
        self.lost_reason = ""
        self.holder: LeaseInfo | None = None

    @property
    def lost(self) -> bool:
        """True once the lease was lost (see :attr:`lost_event`)."""
        return self.lost_event.is_set()

    def _lose(self, reason: str) -> None:
        self.lost_reason = self.lost_reason or reason
        self.lost_event.set()

    def cancel_token(self, cancel: Callable[[], bool] | threading.Event | None = None
                     ) -> Callable[[], bool]:
        """A cancel token (for operations that take one) that asks to stop once this
        lease is lost, or when ``cancel`` (an Event or a callable) does."""
        def token() -> bool:
            if self.lost_event.is_set():
                return True
            if cancel is None:
                return False
            return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())
        return token

    def lost_error(self, operation: str) -> LockedError:
        """The one-line error of an operation stopped because this lease was lost."""
        return LockedError(f"{operation} stopped, nothing published: its lease {self.key} on "
                           f"{self.storage.url} {self.lost_reason or 'was lost'}")

    def confirm(self, operation: str) -> None:
        """Prove, now, that the lease is still held (a renewal by compare-and-swap), before
        something is published under it. Raises LockedError (lost: taken over, or expired
        before it could be renewed), StorageError (the store failed the renewal while the
        lease is still unexpired: the store is failing, the lease is not lost — the
        operation stops with the storage's error, exit 9, and publishes nothing)."""
        with self._mutex:
            if self._token is not None and not self.lost and self._expired():
                self._lose(self._expired_reason())
            if self._token is not None and not self.lost:
                try:
                    if self._renew_once():
                        return
                    self._lose(self._taken_over())
                except StorageError:
                    if not self._expired():
                        raise
                    self._lose(self._expired_reason())
                except LaminaError as exc:
                    self._lose(f"could not be renewed ({exc})")
            elif not self.lost:
                self._lose("is not held")
        raise self.lost_error(operation)

    def _renew_once(self) -> bool:
        """One renewal by compare-and-swap (the caller holds the mutex): True when the
        lease is ours again, with a later expiry; False when it was taken over. Raises
        LaminaError (the store failed: nothing known)."""
        assert self._token is not None
        info = self._new_info()
        if self.storage.replace_if(self.key, self._token, info.encode()):
            got = read_lease(self.storage, self.key)
            if got is not None and got[0] is not None and got[0].owner == self.owner:
                self._info, self._token = info, got[1]
                return True
        return False

    def _expired(self) -> bool:
        return self._info is not None and time.time_ns() >= self._info.expires_ns

    def _expired_reason(self) -> str:
        return ("expired before it was renewed (this process stalled past it, so another "
                "may have acted on its expiry)")

    def _taken_over(self) -> str:
        try:
            current = read_lease(self.storage, self.key)
        except LaminaError:
            current = None
        if current is None or current[0] is None:
            return "was taken over (this process stalled past its expiry)"
        return (f"was taken over by {current[0].describe()} (this process stalled past its "
                "expiry)")

    def _new_info(self) -> LeaseInfo:
        now = time.time_ns()
        return LeaseInfo(self.owner, _HOST, _BOOT, os.getpid(), _start_time(os.getpid()),
                         self.operation, now if self._info is None else self._info.acquired_ns,
                         now + int(self.ttl * 1e9))

    @property
    def held(self) -> bool:
        """True between a successful acquire and :meth:`release`."""
        return self._token is not None

    def try_acquire(self) -> bool:
        """One attempt: create the lease, or take over a stale one. Sets ``holder`` to
        the live holder when it fails. Raises StorageError."""
        if self._token is not None:
            raise RuntimeError(f"lease {self.key} is held by this object already")
        info = self._new_info()
        data = info.encode()
        if self.storage.create_if_absent(self.key, data):
            return self._won(info, data)
        current = read_lease(self.storage, self.key)
        if current is None:
            return False  # released meanwhile: the next attempt creates it
        holder, token = current
        if holder is not None and not holder.stale(time.time_ns()):
            self.holder = holder
            return False
        if self.storage.replace_if(self.key, token, data):
            return self._won(info, data)
        return False

    def _won(self, info: LeaseInfo, data: bytes) -> bool:
        got = read_lease(self.storage, self.key)
        if got is None or got[0] is None or got[0].owner != self.owner:
            return False  # replaced between our write and this read (never on a sane store)
        self._info, self._token = info, got[1]
        self.lost_event.clear()
        self.lost_reason = ""
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"lamina-lease-{self.key}")
        self._thread.start()
        return True

    def acquire(self, timeout: float | None, what: str, busy: str = "",
                cancel: Callable[[], None] | None = None) -> None:
        """Try until held or ``timeout`` seconds passed (None: forever, 0: once); between
        attempts ``cancel()`` may raise to stop waiting. Raises LockedError naming the
        holder and ``what``/``busy``, StorageError, and what ``cancel`` raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while not self.try_acquire():
            if cancel is not None:
                cancel()
            if deadline is not None and time.monotonic() >= deadline:
                by = "" if self.holder is None else f" by {self.holder.describe()}"
                raise LockedError(f"{what} is locked{by}{busy}; gave up after {timeout:g}s")
            pause = delay if deadline is None else max(0.0, min(delay, deadline -
                                                               time.monotonic()))
            self._stop.wait(pause)
            delay = min(delay * 2, 0.2)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._mutex:
                if self._token is None:
                    return
                if self._expired():  # others may have taken it, or ignored it, meanwhile
                    self._lose(self._expired_reason())
                    return
                try:
                    if self._renew_once():
                        continue
                    self._lose(self._taken_over())
                    return
                except LaminaError as exc:
                    # The store is failing: try again at the next beat, unless the lease
                    # has expired meanwhile (another process may take it over now).
                    if self._expired():
                        self._lose(f"could not be renewed before it expired ({exc})")
                        return
                    continue

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours. Idempotent; never
        raises (a lease left behind expires)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._mutex:
            token, self._token = self._token, None
        if token is not None:
            try:
                self.storage.delete_if(self.key, token)
            except LaminaError:
                pass
