"""Continuous replication: a point (a layer) in the repository whenever the database
committed since the last one, level compaction in the repository, fulls on schedule,
retention, as :mod:`lamina.repository.levels` describes; what ``lamina replicate`` runs.

One :meth:`Replicator.step` (the loop calls it every ``interval``):

1. read the database's commit seq (shared memory, no I/O); equal to the newest point's VP
   seq and nothing left to compact: nothing to do (an idle database costs nothing but
   this read);
2. otherwise take a point first (the RPO never waits for compaction): a layer on the
   newest point (:meth:`Repository.backup(base=...)
   <lamina.repository.repository.Repository.backup>`), or a full from the database when
   there is none (or when one is due and ``full_from="database"``), and publish it;
3. compact what closed: every point that became the last of a closed bucket is rewritten
   in place as a layer on its anchor
   (:func:`~lamina.repository.levels.plan_compaction`,
   :meth:`~lamina.repository.repository.Repository.merge_layers`, under the repository's
   exclusive lock: a restore meanwhile waits, it never sees a half-replaced image), oldest
   first, within about one ``interval`` of work per step (the rest in the next steps);
4. a due full with ``full_from="repository"`` (the default): the new point is merged with
   its chain into a synthetic full under its own id
   (:meth:`~lamina.repository.repository.Repository.merge_to_full`), streamed from the
   repository back to it, so the database is never read whole again;
5. retention (at most every ``compact_every``): delete what
   :func:`~lamina.repository.levels.plan_retention` does not keep
   (:meth:`~lamina.repository.repository.Repository.forget`, which refuses to break a
   chain).

Only the Repository's public API is used, so this runs on any storage the repository runs
on. Crash safety comes from the repository: an image is published or replaced whole or not
at all, the index is derived from the images, and every decision (newest point, what to
compact onto what) is read back from the repository, so a replicator killed at any moment
and started again takes no duplicate point (the newest point's VP seq equals the commit
seq), loses none, and compacts what the killed one left uncompacted (its first step plans
compaction whatever the commit seq).

Failures (a LaminaError from a step) are counted, logged and retried with exponential
backoff (``interval`` doubling up to ``max_backoff``): the lag grows visibly in the status
instead of the process dying. Damaged data met by a merge (a corrupt image in a chain) is
not a failed step: it is reported, that merge is not tried again by this process, and when
the damage is in the newest point's chain the next point is a full from the database (no
new point is built on a chain that does not restore). A layer no merge can read (an "at
end" backup taken by hand into the repository) makes its point a synthetic full instead.
:meth:`run` holds the replicator lock of the database and repository
(:mod:`lamina.repository.replicate_lock`): a second replicator of them is refused. Status
and events: :class:`ReplicationStatus`, written atomically to ``status_file`` after every
step, and an ``on_event`` callback (the CLI's log lines). Not thread-safe: one thread
runs a replicator; :meth:`stop` may be called from any thread or a signal handler.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lamina.database import Database
from lamina.errors import (
    CancelledError,
    DataError,
    LaminaError,
    UnsupportedError,
    UsageError,
)
from lamina.repository.index import ImageRecord, Index
from lamina.repository.levels import (
    LevelPolicy,
    choose_base,
    full_due,
    plan_compaction,
    plan_retention,
)
from lamina.repository.replicate_lock import replicator_lock
from lamina.repository.timespec import iso_ns

#: Where a due full is made: merged in the repository, or read from the database.
FULL_FROM = ("repository", "database")


@dataclass(frozen=True, slots=True)
class ReplicateOptions:
    """How a replicator runs (durations in seconds; ``policy`` holds levels, fulls and
    retention)."""

    interval: float = 1.0
    policy: LevelPolicy = field(default_factory=LevelPolicy)
    full_from: str = "repository"
    compact_every: float = 10.0
    max_backoff: float = 60.0
    codec: str = "zstd"

    def __post_init__(self) -> None:
        if not self.interval > 0 or not self.max_backoff > 0 or self.compact_every < 0:
            raise UsageError("the interval and the backoff must be positive durations")
        if self.full_from not in FULL_FROM:
            raise UsageError(f"full_from must be one of {', '.join(FULL_FROM)}")


@dataclass(slots=True)
class ReplicationStatus:
    """What a replicator has done (the status file's JSON; times in ns since the epoch).

    ``lag_seconds``: how long the oldest commit not in any point has waited (0 when every
    commit is in a point); ``lag_commits``: commits not in a point yet. ``bytes_sent``: image
    bytes of the points taken, ``bytes_read``: the raw stream bytes those read from the
    database. ``compactions``: points rewritten onto their anchors by level compaction,
    ``merged_bytes`` the bytes those rewrites stored; ``retention_runs``,
    ``points_deleted``: retention's work.
    """

    pid: int
    database: str
    repository: str
    state: str = "starting"
    started_ns: int = 0
    updated_ns: int = 0
    commit_seq: int = 0
    last_vp_seq: int | None = None
    last_vp_time_ns: int | None = None
    last_vp_time: str | None = None
    last_point_id: str | None = None
    lag_commits: int = 0
    lag_seconds: float = 0.0
    points: int = 0
    layers_sent: int = 0
    fulls_sent: int = 0
    fulls_merged: int = 0
    bytes_sent: int = 0
    bytes_read: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    retry_in_seconds: float | None = None
    compactions: int = 0
    merged_bytes: int = 0
    retention_runs: int = 0
    points_deleted: int = 0

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON-ready dict."""
        return asdict(self)


def write_status(path: Path, status: ReplicationStatus) -> None:
    """Write ``status`` to ``path`` atomically (a temporary file renamed over it), so a
    reader sees the old status or the new one, whole. Raises OSError."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = json.dumps(status.to_json(), sort_keys=True).encode() + b"\n"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


Event = dict[str, Any]


class ReplicaRepository(Protocol):
    """What a replicator uses of :class:`~lamina.repository.repository.Repository` (its
    public API only; declared here so that this module does not import the repository
    module, which builds replicators)."""

    @property
    def storage(self) -> Any:
        """The repository's storage (its ``url`` names it in the status)."""
        ...

    @property
    def config(self) -> Any:
        """The repository's config (its ``repository_id`` names the replicator lock)."""
        ...

    def list(self) -> tuple[builtins.list[Any], str | None]:
        """Every backup entry, and why the index was rebuilt."""
        ...

    def backup(self, db: Database, full: bool = False, *, codec: str = "zstd",
               progress: Any = None, cancel: Any = None, base: str | None = None) -> Any:
        """A backup into the repository (a RepoBackupResult)."""
        ...

    def merge_to_full(self, backup_id: str, *, cancel: Any = None) -> ImageRecord:
        """Replace a layer by a synthetic full of its chain."""
        ...

    def merge_layers(self, backup_id: str, onto: str, *, cancel: Any = None) -> ImageRecord:
        """Rewrite a layer in place as a layer on ``onto``, an image of its chain."""
        ...

    def forget(self, backup_ids: Any) -> builtins.list[Any]:
        """Delete backups nothing else needs."""
        ...


class Replicator:
    """Replicates ``db`` into ``repo`` (see the module doc).

    ``clock`` gives wall time in ns (injected by tests; the VP times come from the database
    side and are compared with it). ``on_event`` receives one dict per event (``event``:
    ``start``, ``point``, ``full``, ``compact``, ``merge``, ``retention``, ``error``,
    ``stop``).
    ``metrics`` (a :class:`~lamina.repository.replication_metrics.ReplicationMetrics`)
    is updated after every step.
    """

    def __init__(self, db: Database, repo: ReplicaRepository,
                 options: ReplicateOptions | None = None, *,
                 status_file: str | os.PathLike[str] | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 metrics: Any = None) -> None:
        self.db = db
        self.repo = repo
        self.options = options or ReplicateOptions()
        self.status_file = None if status_file is None else Path(status_file)
        self.on_event = on_event
        self.clock = clock
        self.metrics = metrics
        self._stop = threading.Event()
        self._pending_since: int | None = None
        self._last_retention: int | None = None
        self._known_vp_seq: int | None = None
        #: Compaction may be left to do (at start, after a failure or a partial pass): the
        #: next step reads the repository even if the database is idle.
        self._compaction_pending = True
        #: Merges that failed on damaged data in the repository (not retried by this
        #: process), and why the next point must be a full from the database (None: it
        #: need not): a chain with a damaged image restores nothing, so no point is built
        #: on it again.
        self._damaged: set[tuple[uuid.UUID, uuid.UUID]] = set()
        self._heal: str | None = None
        now = clock()
        self.status = ReplicationStatus(os.getpid(), str(db.path), repo.storage.url,
                                        started_ns=now, updated_ns=now)

    # ---------------------------------------------------------------- state
    def _usable(self, record: ImageRecord) -> bool:
        ident = self.db.identity
        return (record.database_id == ident.db_id
                and ident.shares_history_with(record.incarnation, record.vp_seq))

    def _index(self) -> Index:
        entries, _ = self.repo.list()
        return Index([e.record for e in entries])

    def _current(self, record: ImageRecord) -> bool:
        """A point of this database's current history (not beyond its commit seq)."""
        return self._usable(record) and record.vp_seq <= self.db.lockfile.commit_seq()

    def _newest_point(self, index: Index) -> ImageRecord | None:
        return choose_base(index, self._current)

    def _emit(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"event": event, "time": iso_ns(self.clock()), **fields})

    def _publish_status(self) -> None:
        s = self.status
        now = self.clock()
        s.updated_ns = now
        s.lag_commits = max(0, s.commit_seq - (s.last_vp_seq or 0))
        s.lag_seconds = 0.0 if self._pending_since is None \
            else max(0.0, (now - self._pending_since) / 1e9)
        if self.status_file is not None:
            with contextlib.suppress(OSError):  # a status file problem never stops replication
                write_status(self.status_file, s)
        if self.metrics is not None:
            self.metrics.update(s, now)

    # ---------------------------------------------------------------- one step
    def step(self) -> bool:
        """Take a point if the database committed since the newest one, then compact what
        closed, then run retention when due. Returns True if a point was taken. Raises
        LaminaError (the caller retries) and CancelledError (:meth:`stop` during a backup
        or a merge: nothing of it was published).

        While the database is idle and nothing is left to compact, a step reads its commit
        seq and nothing else (the newest point's seq is remembered; the repository is read
        again after a failure), except the retention pass every ``compact_every``, which
        reads the index."""
        now = self.clock()
        seq = self.db.lockfile.commit_seq()
        self.status.commit_seq = seq
        took = False
        if self._known_vp_seq is None or seq != self._known_vp_seq \
                or self._compaction_pending:
            try:
                index = self._index()
                newest = self._newest_point(index)
                if newest is not None:
                    self._note_point(newest)
                due: str | None = None
                if newest is None or newest.vp_seq < seq:
                    if self._pending_since is None:
                        self._pending_since = now
                    self.status.state = "replicating"
                    due = self._take(index, newest, now)
                    took = True
                else:
                    self._known_vp_seq = newest.vp_seq
                    self._pending_since = None
                self._compact()
                if due is not None:  # merged in the repository: the database is not read
                    try:
                        self._merge_to_full(due)
                    except DataError as exc:
                        self._damage(exc, "merging the chain into a full")
            except BaseException:
                self._known_vp_seq = None
                self._compaction_pending = True
                raise
        self.status.state = "idle"
        self._maybe_retain(now)
        self._publish_status()
        return took

    def _note_point(self, record: ImageRecord) -> None:
        s = self.status
        s.last_vp_seq = record.vp_seq
        s.last_vp_time_ns = record.vp_wall_ns
        s.last_vp_time = iso_ns(record.vp_wall_ns)
        s.last_point_id = str(record.backup_id)

    def _take(self, index: Index, base: ImageRecord | None, now: int) -> str | None:
        """Take and publish a point on ``base`` (the newest point); returns why a full is
        due when it is to be merged in the repository after compaction (else None)."""
        policy = self.options.policy
        due = full_due(index, base, now, policy) if self._heal is None else self._heal
        if due is not None and (base is None or self.options.full_from == "database"
                                or self._heal is not None):
            result = self.repo.backup(self.db, full=True, codec=self.options.codec,
                                      cancel=self._stop)
            self._after_backup(result, "full", due)
            self._heal = None
            return None
        assert base is not None
        result = self.repo.backup(self.db, base=str(base.backup_id), codec=self.options.codec,
                                  cancel=self._stop)
        self._after_backup(result, "point", None)
        return due

    def _merge_to_full(self, due: str) -> None:
        point = str(self.status.last_point_id)
        self.repo.merge_to_full(point, cancel=self._stop)
        self.status.fulls_merged += 1
        self._emit("merge", id=point, reason=due)

    def _compact(self) -> None:
        """Rewrite the points that closed onto their anchors (oldest first), for about one
        interval of work; what is left is done by the next steps (the repository says
        what it is: nothing is remembered but that some is left)."""
        self._compaction_pending = True
        plan = plan_compaction(self._index(), self._current, self.options.policy)
        started = time.monotonic()
        for backup_id, onto in plan:
            if (backup_id, onto) in self._damaged:
                continue
            if self._stop.is_set():
                return
            if time.monotonic() - started >= self.options.interval \
                    and self.db.lockfile.commit_seq() != self._known_vp_seq:
                return  # the next point first: the RPO does not wait for compaction
            try:
                self._merge_one(backup_id, onto)
            except DataError as exc:
                # The plan came from an index read before the merge's lock: if the
                # repository changed meanwhile (a prune made the point a full, deleted its
                # anchor), the merge is no longer planned and nothing is damaged; the
                # next step plans again.
                index = self._index()
                if (backup_id, onto) not in plan_compaction(index, self._current,
                                                            self.options.policy):
                    return
                self._damaged.add((backup_id, onto))
                # A full is taken only if new points would build on the damage.
                newest = self._newest_point(index)
                on_it = newest is not None and backup_id in {
                    r.backup_id for r in index.chain_or_none(newest) or []}
                self._damage(exc, f"compacting {backup_id} onto {onto}", heal=on_it)
        self._compaction_pending = False

    def _merge_one(self, backup_id: uuid.UUID, onto: uuid.UUID) -> None:
        """One compaction rewrite. Raises what merge_layers and merge_to_full raise."""
        try:
            record = self.repo.merge_layers(str(backup_id), str(onto), cancel=self._stop)
        except UnsupportedError:
            # The segment holds a layer merge_layers cannot read (a backup taken by hand
            # with --vp end): the point becomes a synthetic full of its chain instead, so
            # no chain from it on holds that layer again and compaction goes on (else
            # every step would fail on it and back off forever).
            record = self.repo.merge_to_full(str(backup_id), cancel=self._stop)
            self.status.fulls_merged += 1
            self._emit("merge", id=str(backup_id),
                       reason="its segment holds a layer that cannot be merged")
        else:
            self._emit("compact", id=str(backup_id), onto=str(onto), vp_seq=record.vp_seq,
                       bytes=record.size)
        self.status.compactions += 1
        self.status.merged_bytes += record.size

    def _damage(self, exc: DataError, doing: str, *, heal: bool = True) -> None:
        """A merge found damaged data in the repository (a corrupt image of a chain):
        counted and reported like a failed step, but the loop goes on at its interval (the
        RPO does not back off) and, with ``heal`` (the damage is in the newest point's
        chain), the next point is a full from the database, so that new points restore
        whatever the damaged chain does. The damaged image is left as
        it is: retention, which sees the index (not the chunks), deletes it once no kept
        point's window holds it, like any other image."""
        s = self.status
        s.errors += 1
        s.last_error = f"{type(exc).__name__}: {exc}"
        if self.metrics is not None:
            self.metrics.error()
        if heal:
            self._heal = f"damaged data in the repository while {doing}"
        self._emit("error", error=type(exc).__name__, message=f"{doing}: {exc}",
                   exit=exc.exit_code, retry_in_seconds=None)

    def _after_backup(self, result: Any, event: str, why: str | None) -> None:
        s = self.status
        s.points += 1
        s.bytes_sent += result.result.size
        s.bytes_read += result.result.raw_bytes
        if result.kind == "full":
            s.fulls_sent += 1
        else:
            s.layers_sent += 1
        vp = result.result.vp
        s.last_vp_seq, s.last_vp_time_ns = vp.commit_seq, vp.wall_ns
        s.last_vp_time = iso_ns(vp.wall_ns)
        s.last_point_id = str(result.backup_id)
        # Commits after the VP wait for the next point: the lag counts from the VP.
        seq = self.db.lockfile.commit_seq()
        s.commit_seq = seq
        self._pending_since = vp.wall_ns if seq > vp.commit_seq else None
        self._known_vp_seq = vp.commit_seq
        self._emit(event, id=str(result.backup_id), kind=result.kind,
                   base=None if result.base_id is None else str(result.base_id),
                   vp_seq=vp.commit_seq, vp_time=iso_ns(vp.wall_ns), bytes=result.result.size,
                   **({} if why is None else {"reason": why}))

    def _maybe_retain(self, now: int) -> None:
        every = int(self.options.compact_every * 1e9)
        if self._last_retention is not None and now - self._last_retention < every:
            return
        self._last_retention = now
        index = self._index()
        plan = plan_retention(index, self.db.identity.db_id, now, self.options.policy)
        self.status.retention_runs += 1
        if plan.refused is not None or not plan.delete:
            return
        deleted = self.repo.forget(plan.delete)
        self.status.points_deleted += len(deleted)
        self._emit("retention", deleted=len(deleted), kept=len(plan.needed))

    # ---------------------------------------------------------------- the loop
    def stop(self) -> None:
        """Ask :meth:`run` to end: a backup under way is cancelled (nothing of it is
        published), and no new step starts. Safe from any thread or a signal handler."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def run(self, *, wait: Callable[[float], bool] | None = None) -> None:
        """Step every ``interval`` until :meth:`stop`; failures are retried with backoff
        (see the module doc). ``wait(seconds)`` returns True to end the loop (default: the
        stop event's wait). Holds the replicator lock of this database and repository
        while it runs (:mod:`lamina.repository.replicate_lock`): LockedError at once when
        another replicator of them runs. Returns normally after a stop; raises nothing else
        that is a LaminaError (a failing step is retried)."""
        with replicator_lock(self.db.path, self.repo.config.repository_id):
            self._run(wait)

    def _run(self, wait: Callable[[float], bool] | None) -> None:
        waiter = wait or self._stop.wait
        self._emit("start", database=str(self.db.path), repository=self.repo.storage.url,
                   interval=self.options.interval)
        self._publish_status()
        delay = self.options.interval
        while not self._stop.is_set():
            try:
                self.step()
                self.status.consecutive_errors = 0
                self.status.retry_in_seconds = None
                delay = self.options.interval
            except CancelledError:
                if self._stop.is_set():
                    break
                raise
            except LaminaError as exc:
                s = self.status
                s.errors += 1
                s.consecutive_errors += 1
                s.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self.options.interval * 2 ** s.consecutive_errors,
                            self.options.max_backoff)
                s.retry_in_seconds = delay
                s.state = "retrying"
                if self.metrics is not None:
                    self.metrics.error()
                self._emit("error", error=type(exc).__name__, message=str(exc),
                           exit=exc.exit_code, retry_in_seconds=delay)
                self._publish_status()
            if waiter(delay):
                break
        self.status.state = "stopped"
        self.status.retry_in_seconds = None
        self._publish_status()
        self._emit("stop", points=self.status.points)


def replicate(db: Database, repo: ReplicaRepository, **options: Any) -> Replicator:
    """A :class:`Replicator` of ``db`` into ``repo``; keyword arguments are
    :class:`ReplicateOptions` fields, plus ``status_file``, ``on_event``, ``clock`` and
    ``metrics`` for the replicator itself. Call ``run()`` (it blocks) or ``step()``."""
    own = {k: options.pop(k) for k in ("status_file", "on_event", "clock", "metrics")
           if k in options}
    return Replicator(db, repo, ReplicateOptions(**options), **own)


__all__ = ["FULL_FROM", "ReplicaRepository", "ReplicateOptions", "ReplicationStatus",
           "Replicator", "replicate", "write_status"]
