"""Scripted backup/restore drivers, engines and a commit blocker for the kernel tests.

Every call a fake makes is appended to a shared event log as ``(who, method, blocker_held)``
so tests can assert the exact protocol order. Failures, PROCESSING/BUSY answers, slow
prelocks and cancellation requests are injected through :class:`Script`.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.backup import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    Buffer,
    DriverGroup,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
    run_backup,
)
from lamina.core.driver import FactReader, VpFacts
from lamina.errors import CorruptionError, StorageError

Event = tuple[str, str, bool]
DB_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class FakeBlocker:
    """A commit blocker that logs acquire/release and knows whether it is held."""

    def __init__(self, log: list[Event]) -> None:
        self.log = log
        self.held = False
        self.acquisitions = 0
        self.seq = 41
        #: A real blocker (e.g. a LockFile) to take as well, inside the logging.
        self.inner: Any = None
        #: When the kernel is given a real blocker directly: tells whether it is held.
        self.probe: Callable[[], bool] | None = None

    def is_held(self) -> bool:
        return self.held or (self.probe is not None and self.probe())

    @contextlib.contextmanager
    def commits_blocked(self, timeout: float | None = None) -> Iterator[None]:
        assert not self.held, "commit blocker taken twice"
        with contextlib.ExitStack() as stack:
            if self.inner is not None:
                stack.enter_context(self.inner.commits_blocked(timeout))
            with self._logged():
                yield

    @contextlib.contextmanager
    def _logged(self) -> Iterator[None]:
        self.log.append(("blocker", "acquire", True))
        self.held = True
        self.acquisitions += 1
        try:
            yield
        finally:
            self.held = False
            self.log.append(("blocker", "release", False))

    def commit_seq(self) -> int:
        self.log.append(("kernel", "commit_seq", self.held))
        return self.seq


@dataclass(frozen=True)
class ScriptFacts(VpFacts):
    """The VP facts of a scripted driver: an arbitrary JSON object, kept as given."""

    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def from_json(cls, data: object, where: str) -> ScriptFacts:
        return cls(dict(FactReader(data, where).data))


@dataclass
class Script:
    """How a scripted backup driver behaves."""

    kind: DriverKind = DriverKind.AT_BEGIN
    #: local stream -> bytes (stream 0 = common stream).
    streams: dict[int, bytes] = field(default_factory=dict)
    #: prelock() answers this many times with ``prelock_wait`` before READY.
    prelock_waits: int = 0
    prelock_wait: Result = Result.OK
    #: get_data answers PROCESSING / BUSY on every n-th call (0 = never).
    processing_every: int = 0
    busy_every: int = 0
    #: get_data answers BUSY this many times after the VP before sending anything.
    busy_first: int = 0
    #: phase -> "error" (ERROR with .error set), "error-bare" (ERROR, no .error) or "raise".
    #: phases: begin, initial (get_data before VP), prelock, lock, unlock, get_data, end.
    fail: dict[str, str] = field(default_factory=dict)
    #: Called with the method name at the start of every call (e.g. to set a cancel event).
    hook: Callable[[str], None] | None = None
    #: Fraction of the blocks an "at end" driver sends before the VP.
    initial_fraction: float = 0.5
    #: Set ``last`` on each stream's final block (else the kernel closes the streams).
    set_last: bool = True
    #: Deliver the final block together with DONE.
    done_with_data: bool = False
    #: The JSON form of the driver's VP facts (``vp_info()`` returns ``ScriptFacts(vp)``).
    vp: dict[str, Any] = field(default_factory=lambda: {"facts": 1})
    seed: int = 0


class ScriptedDriver(BackupDriver):
    """A backup driver that sends the scripted bytes and logs every call."""

    def __init__(self, name: str, tables: Sequence[TableSpec], flags: BackupFlags,
                 script: Script, log: list[Event], blocker: FakeBlocker) -> None:
        self.name = name
        self.tables = list(tables)
        self.flags = flags
        self.script = script
        self.kind = script.kind
        self.log = log
        self.blocker = blocker
        self.calls = 0
        self.prelock_calls = 0
        self.locked = False
        self.vp_taken = False
        self.queue: list[tuple[int, bytes, bool]] = []
        self.initial_left = 0

    def _enter(self, method: str) -> None:
        self.log.append((self.name, method, self.blocker.held))
        if self.script.hook is not None:
            self.script.hook(method)

    def _fail(self, phase: str) -> Result | None:
        mode = self.script.fail.get(phase)
        if mode is None:
            return None
        if mode == "raise":
            raise StorageError(f"{self.name}: injected failure in {phase}")
        if mode == "error":
            self.error = StorageError(f"{self.name}: injected ERROR in {phase}")
        return Result.ERROR

    def begin(self, buf_size: int) -> Result:
        self._enter("begin")
        rng = random.Random(self.script.seed)
        per_stream: list[list[tuple[int, bytes, bool]]] = []
        for stream, data in sorted(self.script.streams.items()):
            assert 0 <= stream <= len(self.tables)
            pieces = []
            pos = 0
            while pos < len(data):
                n = rng.randint(1, buf_size)
                pieces.append((stream, data[pos: pos + n], False))
                pos += n
            if pieces and self.script.set_last:
                pieces[-1] = (pieces[-1][0], pieces[-1][1], True)
            per_stream.append(pieces)
        while any(per_stream):  # interleave streams
            for pieces in per_stream:
                if pieces:
                    self.queue.append(pieces.pop(0))
        if self.kind == DriverKind.AT_END:
            self.initial_left = int(len(self.queue) * self.script.initial_fraction)
        return self._fail("begin") or Result.OK

    def get_data(self, buffer: Buffer) -> Result:
        before_vp = not self.vp_taken
        self._enter("get_data")
        assert not (before_vp and self.kind == DriverKind.AT_BEGIN), "at-begin get_data pre-VP"
        failed = self._fail("initial" if before_vp else "get_data")
        if failed:
            return failed
        self.calls += 1
        if not before_vp and self.script.busy_first > 0:
            self.script.busy_first -= 1
            return Result.BUSY
        if self.script.processing_every and self.calls % self.script.processing_every == 0:
            return Result.PROCESSING
        if self.script.busy_every and self.calls % self.script.busy_every == 0:
            return Result.BUSY
        if before_vp:
            if self.initial_left == 0:
                return Result.READY
            self.initial_left -= 1
        if not self.queue:
            return Result.DONE
        stream, data, last = self.queue.pop(0)
        buffer.stream, buffer.data, buffer.last = stream, data, last
        if not self.queue and not before_vp and self.script.done_with_data:
            return Result.DONE
        return Result.OK

    def prelock(self) -> Result:
        self._enter("prelock")
        failed = self._fail("prelock")
        if failed:
            return failed
        self.prelock_calls += 1
        if self.prelock_calls <= self.script.prelock_waits:
            return self.script.prelock_wait
        return Result.READY

    def lock(self) -> Result:
        self._enter("lock")
        assert self.blocker.is_held()
        self.locked = True
        return self._fail("lock") or Result.OK

    def unlock(self) -> Result:
        self._enter("unlock")
        assert self.blocker.is_held() and self.locked
        self.vp_taken = True
        return self._fail("unlock") or Result.OK

    def cancel(self) -> Result:
        self._enter("cancel")
        return Result.OK

    def end(self) -> Result:
        self._enter("end")
        return self._fail("end") or Result.OK

    def init_size(self) -> int | None:
        return sum(len(d) for d in self.script.streams.values()) // 2

    def size(self) -> int | None:
        return sum(len(d) for d in self.script.streams.values())

    def vp_info(self) -> VpFacts:
        self._enter("vp_info")
        return ScriptFacts(self.script.vp)


class ScriptedEngine(BackupEngine):
    """A backup engine handing out one :class:`ScriptedDriver`."""

    def __init__(self, name: str, script: Script, log: list[Event], blocker: FakeBlocker,
                 version: int = 1, driver_cls: type[ScriptedDriver] = ScriptedDriver) -> None:
        self.driver_cls = driver_cls
        self.name = name
        self.version = version
        self.script = script
        self.log = log
        self.blocker = blocker
        self.driver: ScriptedDriver | None = None

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        self.log.append((self.name, "get_backup", self.blocker.held))
        self.driver = self.driver_cls(self.name, tables, flags, self.script, self.log,
                                      self.blocker)
        return self.driver

    def decode_vp_facts(self, data: object, where: str) -> ScriptFacts:
        return ScriptFacts.from_json(data, where)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        raise NotImplementedError


class MemRestoreDriver(RestoreDriver):
    """Collects each local stream's bytes in memory (and writes a marker file)."""

    def __init__(self, name: str, tables: Sequence[TableSpec], flags: RestoreFlags,
                 log: list[Event], fail: dict[str, str], busy_every: int,
                 hook: Callable[[str], None] | None) -> None:
        self.name = name
        self.tables = list(tables)
        self.flags = flags
        self.log = log
        self.fail = fail
        self.busy_every = busy_every
        self.hook = hook
        self.received: dict[int, bytearray] = {}
        self.closed: set[int] = set()
        self.sends = 0

    def _enter(self, method: str) -> Result | None:
        self.log.append((self.name, method, False))
        if self.hook is not None:
            self.hook(method)
        mode = self.fail.get(method)
        if mode == "raise":
            raise StorageError(f"{self.name}: injected failure in {method}")
        if mode == "error":
            self.error = StorageError(f"{self.name}: injected ERROR in {method}")
            return Result.ERROR
        return None

    def begin(self) -> Result:
        failed = self._enter("begin")
        (self.flags.destination / f"{self.name}.restoring").write_bytes(b"x")
        return failed or Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        failed = self._enter("send_data")
        if failed:
            return failed
        self.sends += 1
        if self.busy_every and self.sends % self.busy_every == 0:
            return Result.BUSY
        if buffer.stream in self.closed:
            self.error = CorruptionError("data after last")
            return Result.ERROR
        assert 0 <= buffer.stream <= len(self.tables)
        self.received.setdefault(buffer.stream, bytearray()).extend(buffer.data)
        if buffer.last:
            self.closed.add(buffer.stream)
        return Result.OK

    def end(self) -> Result:
        failed = self._enter("end")
        assert isinstance(self.vp_facts, ScriptFacts)
        return failed or Result.OK

    def cancel(self) -> Result:
        self._enter("cancel")
        return Result.OK


class MemRestoreEngine(BackupEngine):
    """A backup engine whose restore drivers collect streams in memory."""

    def __init__(self, name: str, log: list[Event] | None = None, version: int = 1,
                 fail: dict[str, str] | None = None, busy_every: int = 0,
                 hook: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.version = version
        self.log = [] if log is None else log
        self.fail = fail or {}
        self.busy_every = busy_every
        self.hook = hook
        self.drivers: list[MemRestoreDriver] = []

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        raise NotImplementedError

    def decode_vp_facts(self, data: object, where: str) -> ScriptFacts:
        return ScriptFacts.from_json(data, where)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        self.log.append((self.name, "get_restore", False))
        driver = MemRestoreDriver(self.name, tables, flags, self.log, self.fail,
                                  self.busy_every, self.hook)
        self.drivers.append(driver)
        return driver

    def by_table(self) -> dict[str, bytes]:
        """Restored bytes per table name, plus ``"#common"`` for a non-empty stream 0."""
        out: dict[str, bytes] = {}
        for d in self.drivers:
            for stream, data in d.received.items():
                key = f"#common:{d.name}" if stream == 0 else d.tables[stream - 1].name
                out[key] = bytes(data)
        return out


def tables(prefix: str, n: int, first_id: int, engine: str = "btree") -> list[TableSpec]:
    """``n`` table specs named ``prefix0..`` with ids from ``first_id``."""
    return [TableSpec(f"{prefix}{i}", engine, first_id + i) for i in range(n)]


def random_streams(rng: random.Random, n_tables: int, max_len: int,
                   common: bool = True) -> dict[int, bytes]:
    """Random (partly compressible) bytes for the common stream and each table's stream."""
    out: dict[int, bytes] = {}
    for stream in range(0 if common else 1, n_tables + 1):
        n = rng.randint(0, max_len)
        if rng.random() < 0.5:
            out[stream] = rng.randbytes(n)
        else:
            out[stream] = bytes(rng.choice(b"abc") for _ in range(n))
    return out


def expected_by_table(specs: Sequence[tuple[str, Sequence[TableSpec], Script]]
                      ) -> dict[str, bytes]:
    """What a restore must give back: non-empty streams keyed like :meth:`by_table`."""
    out: dict[str, bytes] = {}
    for name, tbls, script in specs:
        for stream, data in script.streams.items():
            if not data:
                continue
            key = f"#common:{name}" if stream == 0 else tbls[stream - 1].name
            out[key] = data
    return out


@dataclass
class Rig:
    """A log, a blocker and scripted engines, ready to run a backup."""

    log: list[Event] = field(default_factory=list)
    engines: list[ScriptedEngine] = field(default_factory=list)
    groups: list[DriverGroup] = field(default_factory=list)
    specs: list[tuple[str, Sequence[TableSpec], Script]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blocker = FakeBlocker(self.log)

    def add(self, name: str, tbls: Sequence[TableSpec], script: Script, version: int = 1,
            driver_cls: type[ScriptedDriver] = ScriptedDriver) -> ScriptedEngine:
        engine = ScriptedEngine(name, script, self.log, self.blocker, version, driver_cls)
        self.engines.append(engine)
        self.groups.append(DriverGroup(engine, list(tbls)))
        self.specs.append((name, list(tbls), script))
        return engine

    def run(self, target: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buf_size", 64)
        return run_backup(self.groups, target, commit_blocker=self.blocker,
                          commit_seq=self.blocker.commit_seq, database_id=DB_ID, **kwargs)

    def calls(self, who: str) -> list[str]:
        """The methods called on driver ``who``, in order."""
        return [m for w, m, _ in self.log if w == who]


def two_driver_rig(seed: int = 0, **script_kw: Any) -> Rig:
    """An "at begin" driver with 2 tables and an "at end" driver with 3 tables."""
    rng = random.Random(seed)
    rig = Rig()
    rig.add("native", tables("t", 2, 1), Script(
        kind=DriverKind.AT_BEGIN, streams=random_streams(rng, 2, 600), seed=seed,
        **script_kw))
    rig.add("snapshot", tables("s", 3, 10), Script(
        kind=DriverKind.AT_END, streams=random_streams(rng, 3, 600), prelock_waits=3,
        seed=seed + 1, **script_kw))
    return rig


def leftover_files(directory: Path) -> list[str]:
    """Every entry in ``directory`` (to assert nothing was left behind)."""
    return sorted(p.name for p in directory.iterdir())
