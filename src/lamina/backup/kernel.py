"""The backup kernel: drives every backup driver through the online-backup protocol and
writes what they send into one image.

Protocol (see :mod:`lamina.core.driver` for each call's contract)::

    get_backup -> begin -> initial transfer ("at end") -> prelock until READY
    -> [commit blocker] lock -> VP (commit seq, wall clock) -> unlock [release]
    -> final transfer, round-robin, until every driver is DONE -> vp_info (VP facts) -> end
    -> manifest + footer; the image is published (renamed into place) last.

On any failure, or when the cancel token fires (checked before every driver call), the
kernel calls ``cancel()`` on every driver whose ``begin()`` was called and has not ended,
releases the commit blocker (a ``with`` block), removes the temporary image file, and
re-raises (CancelledError for a cancellation). A file target therefore either appears
complete and valid, or not at all.

The kernel knows nothing about engines: it is given :class:`~lamina.core.driver.DriverGroup`
objects (a backup engine and its tables), a commit blocker and a commit seq source. Native,
consistent-snapshot and blocking default drivers all fit this shape: a default driver's
``prelock`` answers OK until its table locks are held, then READY.

Concurrency: :func:`run_backup` runs in the calling thread and shares no state between
calls; drivers are called one at a time.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lamina.backup import image_format
from lamina.backup.codec import check_level, parse_codec
from lamina.backup.image_writer import ImageTarget, ImageWriter
from lamina.core.driver import (
    BackupDriver,
    Buffer,
    DriverGroup,
    DriverKind,
    DriverProtocolError,
    Result,
    VpFacts,
)
from lamina.core.names import validate_table_name
from lamina.core.publish import Cleaned
from lamina.errors import CancelledError, LockedError, UsageError

log = logging.getLogger("lamina.backup")

#: A cancel request: an Event that gets set, or a callable returning True, or None.
CancelToken = threading.Event | Callable[[], bool] | None
#: ``progress(bytes_done, bytes_expected_or_None)``, called after every chunk.
ProgressCallback = Callable[[int, int | None], None]

# Back-off while every driver is BUSY or not yet prepared: short, growing, capped.
_BACKOFF_MIN = 0.0002
_BACKOFF_MAX = 0.01


#: ``root_hash(catalog, vp_facts)``: the database root hash at a VP (see :func:`run_backup`).
RootHashFunction = Callable[[image_format.ImageCatalog, Sequence[Mapping[str, Any]]], bytes]


class CommitBlocker(Protocol):
    """What the kernel needs from the database: :meth:`LockFile.commits_blocked
    <lamina.core.lockfile.LockFile.commits_blocked>` (exclusive, with a timeout that raises
    LockedError)."""

    def commits_blocked(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """Hold the commit blocker exclusively for the ``with`` block."""
        ...


@dataclass(frozen=True, slots=True)
class BaseImageRef:
    """The image a layer builds on: its id and its VP commit seq."""

    image_id: uuid.UUID
    vp_seq: int


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Everything that makes an image's bytes a function of its VP snapshot: the header's
    image id, creation time and writer version, the VP (commit seq, wall clock, commit
    blocker time) and each driver's :meth:`~lamina.core.driver.BackupDriver.pin_facts`
    (in catalog order). :func:`run_backup` reports it through ``on_vp`` and, given it as
    ``resume``, writes the same image again (drivers re-frozen by ``relock``)."""

    image_id: uuid.UUID
    created_ns: int
    lamina_version: str
    vp_seq: int
    vp_wall_ns: int
    blocker_held_ns: int
    driver_facts: tuple[dict[str, Any], ...]
    #: The drivers' names (backup engine names), in catalog order.
    drivers: tuple[str, ...] = ()
    #: A sealed image's (master key id, salt) (:attr:`ImageWriter.seal_facts
    #: <lamina.backup.image_writer.ImageWriter.seal_facts>`), None for a plain one. Not
    #: part of :meth:`to_json`: the caller records it beside the point (a durable pin's
    #: ``seal``) and puts it back before resuming.
    seal: tuple[bytes, bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (stored in a durable pin)."""
        return {"image_id": str(self.image_id), "created_ns": self.created_ns,
                "lamina_version": self.lamina_version, "vp_seq": self.vp_seq,
                "vp_wall_ns": self.vp_wall_ns, "blocker_held_ns": self.blocker_held_ns,
                "driver_facts": list(self.driver_facts), "drivers": list(self.drivers)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ResumePoint:
        """Parse :meth:`to_json`'s form; CorruptionError naming ``where`` if malformed."""
        from lamina.errors import CorruptionError
        try:
            facts = data["driver_facts"]
            names = data["drivers"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("mistyped drivers")
            ints = [data[k] for k in ("created_ns", "vp_seq", "vp_wall_ns", "blocker_held_ns")]
            if (not isinstance(facts, list) or not all(isinstance(f, dict) for f in facts)
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in ints)
                    or not isinstance(data["lamina_version"], str)):
                raise ValueError("mistyped field")
            return cls(uuid.UUID(data["image_id"]), ints[0], data["lamina_version"], ints[1],
                       ints[2], ints[3], tuple(facts), tuple(names))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptionError(f"resume point: {exc}", where=where) from None


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What a backup produced and what it cost the writers.

    ``blocker_held_ns`` is the time the commit blocker was held exclusively (lock, VP,
    unlock: the longest any commit could have been delayed by the backup), and
    ``blocker_wait_ns`` the time spent waiting to get it.
    """

    path: Path | None
    size: int
    header: image_format.ImageHeader
    catalog: image_format.ImageCatalog
    manifest: image_format.Manifest
    blocker_held_ns: int
    blocker_wait_ns: int
    raw_bytes: int
    elapsed_ns: int
    #: Temporary image files of killed backups to the same path that were removed first.
    cleaned: tuple[Cleaned, ...] = ()
    #: Wall clock (ns since the epoch) when the image was complete (published).
    completed_ns: int = 0

    @property
    def image_id(self) -> uuid.UUID:
        """The new image's id."""
        return self.header.image_id

    @property
    def vp(self) -> image_format.ValidityPoint:
        """The validity point recorded in the image."""
        return self.manifest.vp

    @property
    def vp_age_ns(self) -> int:
        """VP age at completion: how old the state the image holds already was when the
        image was complete (completion wall clock minus the VP's). An "at begin" backup's
        VP precedes all of its data transfer; an "at end" backup's comes after the bulk."""
        return max(0, self.completed_ns - self.manifest.vp.wall_ns)


def is_cancelled(token: CancelToken) -> bool:
    """True if ``token`` (Event, callable or None) asks to stop."""
    if token is None:
        return False
    if isinstance(token, threading.Event):
        return token.is_set()
    return bool(token())


def lamina_version() -> str:
    """This build's version string, recorded in image headers."""
    try:
        return importlib.metadata.version("lamina")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "unknown"


class Backoff:
    """Sleeps that grow from 0.2 ms to 10 ms while nothing progresses; reset on progress."""

    def __init__(self) -> None:
        self.delay = _BACKOFF_MIN

    def reset(self) -> None:
        """Progress was made: the next wait is short again."""
        self.delay = _BACKOFF_MIN

    def wait(self) -> None:
        """Sleep, then lengthen the next sleep."""
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, _BACKOFF_MAX)


class Throttle:
    """A token bucket bounding the rate (bytes/s) at which drivers hand data over.

    Tokens accrue at ``rate`` per second up to ``burst`` bytes and every buffer spends its
    length; a deficit is paid by sleeping before the next driver call. The bucket starts
    empty, so even a short backup never exceeds the rate (its first buffer is paid for).
    Only data transfers are throttled: ``lock()`` and the VP never wait for it.
    """

    def __init__(self, rate: float, burst: float | None = None,
                 cancel: CancelToken = None) -> None:
        if not rate > 0:
            raise UsageError(f"max rate must be positive, not {rate:g} bytes/s")
        self.rate = float(rate)
        # Idle time between buffers may be spent later, but only ~50 ms worth: a pause
        # must not turn into a burst far above the rate.
        self.burst = float(burst) if burst is not None else self.rate * 0.05
        self.cancel = cancel
        self._tokens = 0.0
        self._last: float | None = None
        #: Seconds spent sleeping to keep to the rate.
        self.slept = 0.0

    def spend(self, nbytes: int) -> None:
        """Account for ``nbytes`` handed over; sleep off any deficit (in slices of at most
        50 ms, raising CancelledError if the cancel token fires meanwhile)."""
        now = time.monotonic()
        if self._last is None:
            self._last = now
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= nbytes
        if self._tokens >= 0:
            return
        until = now + (-self._tokens) / self.rate
        while True:
            left = until - time.monotonic()
            if left <= 0:
                break
            if is_cancelled(self.cancel):
                raise CancelledError("backup cancelled")
            time.sleep(min(left, 0.05))
        self.slept += time.monotonic() - now
        self._tokens = 0.0
        self._last = time.monotonic()


class _DriverState:
    """One driver's bookkeeping in a run."""

    def __init__(self, index: int, group: DriverGroup, driver: BackupDriver,
                 local_to_global: list[int]) -> None:
        self.index = index
        self.group = group
        self.driver = driver
        self.name = group.engine.name
        self.local_to_global = local_to_global
        self.began = False
        self.ended = False
        self.cancelled = False

    @property
    def kind(self) -> DriverKind:
        return self.driver.kind


class _BackupRun:
    """State of one :func:`run_backup` call; its methods are the protocol's phases."""

    def __init__(self, groups: Sequence[DriverGroup], *, commit_blocker: CommitBlocker,
                 commit_seq: Callable[[], int], buf_size: int, cancel: CancelToken,
                 progress: ProgressCallback | None, blocker_timeout: float | None,
                 prelock_timeout: float | None, max_rate: float | None = None) -> None:
        self.groups = list(groups)
        self.throttle = None if max_rate is None else Throttle(max_rate, cancel=cancel)
        self.blocker = commit_blocker
        self.commit_seq = commit_seq
        self.buf_size = buf_size
        self.cancel_token = cancel
        self.progress = progress
        self.blocker_timeout = blocker_timeout
        self.prelock_timeout = prelock_timeout
        self.states: list[_DriverState] = []
        self.writer: ImageWriter | None = None
        self.after_vp = False
        self.done_bytes = 0

    # ------------------------------------------------------------------ plumbing
    def check_cancel(self) -> None:
        if is_cancelled(self.cancel_token):
            raise CancelledError("backup cancelled")

    def call(self, s: _DriverState, method: str, allowed: frozenset[Result],
             *args: Any) -> Result:
        """Call ``s.driver.method(*args)``; enforce the allowed results; raise on ERROR."""
        self.check_cancel()
        result = getattr(s.driver, method)(*args)
        if result is Result.ERROR:
            if s.driver.error is not None:
                raise s.driver.error
            raise DriverProtocolError(f"backup driver {s.name!r} returned ERROR from "
                                      f"{method}() without setting .error")
        if not isinstance(result, Result) or result not in allowed:
            raise DriverProtocolError(f"backup driver {s.name!r} returned {result!r} from "
                                      f"{method}(); allowed: "
                                      f"{', '.join(sorted(r.name for r in allowed))}")
        return result

    def get_data(self, s: _DriverState, allowed: frozenset[Result]) -> Result:
        buf = Buffer(self.buf_size)
        result = self.call(s, "get_data", allowed, buf)
        if result in (Result.PROCESSING, Result.BUSY):
            if buf.data or buf.last:
                raise DriverProtocolError(f"backup driver {s.name!r} filled a buffer but "
                                          f"returned {result.name}")
            return result
        self.take(s, buf)
        return result

    def take(self, s: _DriverState, buf: Buffer) -> None:
        """Write a buffer the driver filled as the next chunk of its stream."""
        assert self.writer is not None
        if not 0 <= buf.stream < len(s.local_to_global):
            raise DriverProtocolError(f"backup driver {s.name!r} wrote to stream "
                                      f"{buf.stream}; it has 0..{len(s.local_to_global) - 1}")
        if len(buf.data) > self.buf_size:
            raise DriverProtocolError(f"backup driver {s.name!r} put {len(buf.data)} bytes in "
                                      f"a {self.buf_size}-byte buffer")
        if not buf.data and not buf.last:
            return
        stream = s.local_to_global[buf.stream]
        if self.writer.stream_closed(stream):
            raise DriverProtocolError(f"backup driver {s.name!r} sent data on stream "
                                      f"{buf.stream} after its last block")
        self.writer.write_chunk(stream, buf.data, buf.last)
        self.done_bytes += len(buf.data)
        if self.throttle is not None:
            self.throttle.spend(len(buf.data))
        if self.progress is not None:
            self.progress(self.done_bytes, self.expected_bytes())

    def expected_bytes(self) -> int | None:
        """Sum of the drivers' estimates (``init_size`` before the VP, ``size`` after)."""
        total = 0
        for s in self.states:
            if self.after_vp:
                n = s.driver.size()
            else:
                n = s.driver.init_size() if s.kind == DriverKind.AT_END else 0
            if n is None:
                return None
            total += n
        return total

    def cancel_all(self) -> None:
        """``cancel()`` every begun, not yet ended driver, once; never raises."""
        for s in self.states:
            if not s.began or s.ended or s.cancelled:
                continue
            s.cancelled = True
            try:
                if s.driver.cancel() is not Result.OK:
                    log.warning("backup driver %r did not cancel cleanly", s.name)
            except Exception:
                log.exception("backup driver %r raised from cancel()", s.name)

    # ------------------------------------------------------------------ phases
    def begin_all(self) -> None:
        for s in self.states:
            self.check_cancel()
            s.began = True  # before the call: a failing begin() still gets cancel()
            self.call(s, "begin", _OK, self.buf_size)

    def poll(self, states: Sequence[_DriverState], allowed: frozenset[Result],
             finished: Result, on_finished: Callable[[_DriverState], None] | None = None,
             ) -> None:
        """Call get_data round-robin on ``states`` until each returned ``finished``; back off
        only while every driver answers BUSY."""
        pending = list(states)
        backoff = Backoff()
        while pending:
            progressed = False
            for s in list(pending):
                result = self.get_data(s, allowed)
                if result is finished:
                    pending.remove(s)
                    if on_finished is not None:
                        on_finished(s)
                if result is not Result.BUSY:
                    progressed = True
            if pending:
                if progressed:
                    backoff.reset()
                else:
                    backoff.wait()

    def initial_transfer(self) -> None:
        """Poll "at end" drivers' get_data until each says READY for the VP."""
        self.poll([s for s in self.states if s.kind == DriverKind.AT_END], _BEFORE_VP,
                  Result.READY)

    def prelock_all(self) -> None:
        """Poll prelock() until every driver answers READY (OK/BUSY = not yet)."""
        pending = list(self.states)
        backoff = Backoff()
        deadline = (None if self.prelock_timeout is None
                    else time.monotonic() + self.prelock_timeout)
        while True:
            for s in list(pending):
                if self.call(s, "prelock", _PRELOCK) is Result.READY:
                    pending.remove(s)
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise LockedError(f"backup drivers {[s.name for s in pending]} not ready for "
                                  f"the validity point after {self.prelock_timeout:g}s")
            self.check_cancel()
            backoff.wait()

    def validity_point(self) -> tuple[int, int, int, int]:
        """Take the blocker, lock() all, read the VP, unlock() all, release.

        Returns (vp_seq, vp_wall_ns, held_ns, wait_ns).
        """
        self.check_cancel()
        asked = time.perf_counter_ns()
        with self.blocker.commits_blocked(self.blocker_timeout):
            got = time.perf_counter_ns()
            for s in self.states:
                self.call(s, "lock", _OK)
            vp_seq = self.commit_seq()
            vp_wall_ns = time.time_ns()
            for s in self.states:
                self.call(s, "unlock", _OK)
        released = time.perf_counter_ns()
        self.after_vp = True
        return vp_seq, vp_wall_ns, released - got, got - asked

    def replay_point(self, point: ResumePoint) -> None:
        """A resumed backup's VP: ``relock`` every driver at the pinned facts (no commit
        blocker: the VP exists already and is kept by a durable pin)."""
        if len(point.driver_facts) != len(self.states):
            raise UsageError(f"the resume point has facts of {len(point.driver_facts)} "
                             f"drivers; this backup has {len(self.states)}")
        for s, facts in zip(self.states, point.driver_facts, strict=True):
            self.call(s, "relock", _OK, facts)
        self.after_vp = True

    def pin_facts(self) -> tuple[dict[str, Any], ...] | None:
        """Every driver's ``pin_facts()``; None if any driver cannot resume."""
        out = []
        for s in self.states:
            facts = s.driver.pin_facts()
            if facts is None:
                return None
            out.append(facts)
        return tuple(out)

    def final_transfer(self) -> None:
        """Poll get_data round-robin until every driver says DONE."""
        assert self.writer is not None
        self.poll(self.states, _AFTER_VP, Result.DONE, self.close_streams)

    def close_streams(self, s: _DriverState) -> None:
        """A DONE driver's streams are complete: mark any it left open with an empty last
        chunk, so every non-empty stream in the image ends with exactly one last chunk."""
        assert self.writer is not None
        for stream in s.local_to_global:
            if self.writer.stream_started(stream) and not self.writer.stream_closed(stream):
                self.writer.write_chunk(stream, b"", True)

    def collect_vp_facts(self) -> list[dict[str, Any]]:
        """Every driver's ``vp_info()``, in catalog order, in its JSON form (``to_json()``).
        Raises DriverProtocolError for a driver that returns something other than a
        :class:`~lamina.core.driver.VpFacts` or facts whose JSON form is not serializable."""
        out: list[dict[str, Any]] = []
        for s in self.states:
            self.check_cancel()
            facts = s.driver.vp_info()
            if not isinstance(facts, VpFacts):
                raise DriverProtocolError(f"backup driver {s.name!r}: vp_info() returned "
                                          f"{type(facts).__name__}, not VpFacts")
            try:
                data = facts.to_json()
                image_format.encode_vp_facts([data])
            except (TypeError, ValueError, AttributeError) as exc:
                raise DriverProtocolError(f"backup driver {s.name!r}: the VP facts from "
                                          f"vp_info() are not JSON-serializable: {exc}") from exc
            out.append(data)
        return out

    def end_all(self) -> None:
        for s in self.states:
            self.call(s, "end", _OK)
            s.ended = True


_OK = frozenset({Result.OK})
_BEFORE_VP = frozenset({Result.OK, Result.PROCESSING, Result.BUSY, Result.READY})
_AFTER_VP = frozenset({Result.OK, Result.PROCESSING, Result.BUSY, Result.DONE})
_PRELOCK = frozenset({Result.READY, Result.OK, Result.BUSY})


def _check_groups(groups: Sequence[DriverGroup], buf_size: int, base: BaseImageRef | None,
                  ) -> None:
    if not 1 <= buf_size <= image_format.MAX_CHUNK_SIZE:
        raise UsageError(f"buffer size must be 1..{image_format.MAX_CHUNK_SIZE} bytes, "
                         f"not {buf_size}")
    if (len(groups) > image_format.MAX_DRIVERS
            or sum(len(g.tables) for g in groups) > image_format.MAX_TABLES):
        raise UsageError("too many drivers or tables for one image")
    names: set[str] = set()
    ids: set[int] = set()
    if not groups:
        raise UsageError("a backup needs at least one driver")
    for g in groups:
        # A driver may have no tables: the btree driver always ships the file that holds
        # the catalog, even when only archive tables are chosen.
        if base is None and g.flags.layer:
            raise UsageError("a layer backup needs a base image")
        for t in g.tables:
            validate_table_name(t.name)
            if t.name in names or t.table_id in ids:
                raise UsageError(f"table {t.name!r} (id {t.table_id}) is listed twice")
            names.add(t.name)
            ids.add(t.table_id)


def _build_catalog(groups: Sequence[DriverGroup], drivers: Sequence[BackupDriver],
                   ) -> tuple[image_format.ImageCatalog, list[list[int]]]:
    """Streams: driver i's common stream is i; tables follow, in group order."""
    cat_drivers = []
    for i, (g, d) in enumerate(zip(groups, drivers, strict=True)):
        if not isinstance(d.kind, DriverKind):
            raise DriverProtocolError(f"backup driver {g.engine.name!r} has no valid kind")
        cat_drivers.append(image_format.CatalogDriver(g.engine.name, g.engine.version, d.kind, i))
    tables = []
    local_maps = []
    stream = len(groups)
    for i, g in enumerate(groups):
        local = [i]
        for t in g.tables:
            tables.append(image_format.CatalogTable(t.name, t.engine, t.table_id, stream, i))
            local.append(stream)
            stream += 1
        local_maps.append(local)
    return image_format.ImageCatalog(tuple(cat_drivers), tuple(tables)), local_maps


def run_backup(groups: Sequence[DriverGroup], target: ImageTarget, *,
               commit_blocker: CommitBlocker, commit_seq: Callable[[], int],
               database_id: uuid.UUID, codec: image_format.Codec | str = image_format.Codec.ZSTD,
               database_incarnation: uuid.UUID = image_format.ZERO_UUID,
               level: int | None = None, buf_size: int = image_format.DEFAULT_BUF_SIZE,
               base: BaseImageRef | None = None, cancel: CancelToken = None,
               progress: ProgressCallback | None = None,
               blocker_timeout: float | None = 30.0, prelock_timeout: float | None = None,
               overwrite: bool = False, image_id: uuid.UUID | None = None,
               max_rate: float | None = None,
               on_vp: Callable[[ResumePoint], None] | None = None,
               resume: ResumePoint | None = None,
               root_hash: RootHashFunction | None = None) -> BackupResult:
    """Back up every group's tables into one image at ``target`` (a path or a binary
    stream) and return what was written.

    ``root_hash(catalog, vp_facts)`` (the caller knows the engines; the kernel does not)
    computes the database root hash at the VP from the image catalog and every driver's
    VP facts (JSON form, catalog order), O(tables), no data read; it is recorded in the
    manifest (without it: :data:`~lamina.backup.image_format.NO_ROOT_HASH`).

    ``max_rate`` (bytes/s, None = unbounded) throttles the data the drivers hand over
    (:class:`Throttle`); the validity point is never delayed by it.

    ``commit_blocker`` is the database's (e.g. its ``LockFile``); ``commit_seq()`` returns
    the last published commit seq and is read while the blocker is held. ``base`` makes the
    image a layer on top of that image (the groups' flags tell drivers what to send).
    ``cancel`` is checked before every driver call. ``progress(done, expected)`` is called
    after every chunk.

    Raises UsageError/InvalidNameError (bad request, nothing started), AlreadyExistsError
    (target exists, not ``overwrite``), LockedError (blocker or prelock timeout),
    CancelledError, StorageError, any LaminaError a driver reports, DriverProtocolError (a
    driver bug). After any error no image file exists and every begun driver was cancelled.

    Resumable backups: ``on_vp(point)`` is called once right after the VP, while every
    driver still holds its snapshot, with the :class:`ResumePoint` that reproduces this
    image (not called when a driver cannot resume: ``pin_facts()`` None); the caller makes
    the VP durable there (an exception from it fails the backup). ``resume`` (a point an
    earlier run reported, whose snapshot the caller kept) writes that very image again:
    the same header, VP and driver output, hence the same bytes for the same groups, codec,
    level and buffer size (sealed: and the point's ``seal`` salt); UsageError if the point
    was written by another Lamina version or sealed under another key.
    """
    started = time.perf_counter_ns()
    codec = parse_codec(codec)
    check_level(codec, level)
    _check_groups(groups, buf_size, base)
    run = _BackupRun(groups, commit_blocker=commit_blocker, commit_seq=commit_seq,
                     buf_size=buf_size, cancel=cancel, progress=progress,
                     blocker_timeout=blocker_timeout, prelock_timeout=prelock_timeout,
                     max_rate=max_rate)
    run.check_cancel()
    # get_backup() holds no resources (driver contract), so a failure here needs no cancel.
    drivers = [g.engine.get_backup(list(g.tables), g.flags) for g in groups]
    catalog, local_maps = _build_catalog(groups, drivers)
    run.states = [_DriverState(i, g, d, local_maps[i])
                  for i, (g, d) in enumerate(zip(groups, drivers, strict=True))]
    if resume is not None:
        if resume.lamina_version != lamina_version():
            raise UsageError(f"the interrupted backup was written by Lamina "
                             f"{resume.lamina_version}, this is {lamina_version()}: it "
                             "cannot be resumed byte for byte (abandon it)")
        image_id = resume.image_id
    header = image_format.ImageHeader(
        image_id=image_id or uuid.uuid4(), database_id=database_id,
        created_ns=time.time_ns() if resume is None else resume.created_ns,
        lamina_version=lamina_version(),
        flags=image_format.HEADER_FLAG_LAYER if base is not None else 0,
        incarnation=database_incarnation)
    writer = ImageWriter(target, header, catalog, codec=codec, level=level,
                         overwrite=overwrite, reseal=None if resume is None else resume.seal)
    run.writer = writer
    try:
        run.begin_all()
        run.initial_transfer()
        if resume is None:
            run.prelock_all()
            vp_seq, vp_wall_ns, held_ns, wait_ns = run.validity_point()
            facts = run.pin_facts() if on_vp is not None else None
            if on_vp is not None and facts is not None:
                on_vp(ResumePoint(header.image_id, header.created_ns, header.lamina_version,
                                  vp_seq, vp_wall_ns, held_ns, facts,
                                  tuple(s.name for s in run.states), writer.seal_facts))
        else:
            run.replay_point(resume)
            vp_seq, vp_wall_ns = resume.vp_seq, resume.vp_wall_ns
            held_ns, wait_ns = resume.blocker_held_ns, 0
        run.final_transfer()
        vp_facts = run.collect_vp_facts()
        root = (image_format.NO_ROOT_HASH if root_hash is None
                else root_hash(catalog, vp_facts))
        run.end_all()
        run.check_cancel()
        summary = writer.finish(vp_seq=vp_seq, vp_wall_ns=vp_wall_ns, vp_facts=vp_facts,
                                root_hash=root,
                                base_image_id=None if base is None else base.image_id,
                                base_vp_seq=0 if base is None else base.vp_seq,
                                blocker_held_ns=held_ns)
        completed_ns = time.time_ns()
    except BaseException:
        run.cancel_all()
        writer.abort()
        raise
    return BackupResult(path=summary.path, size=summary.size, header=writer.header,
                        catalog=catalog,
                        manifest=summary.manifest, blocker_held_ns=held_ns,
                        blocker_wait_ns=wait_ns, raw_bytes=writer.raw_bytes,
                        elapsed_ns=time.perf_counter_ns() - started, cleaned=summary.cleaned,
                        completed_ns=completed_ns)
