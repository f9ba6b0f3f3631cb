"""The backup kernel's protocol: call order, the commit blocker, polling, failures."""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from backup_fakes import (
    DB_ID,
    MemRestoreEngine,
    Rig,
    Script,
    ScriptedDriver,
    ScriptFacts,
    expected_by_table,
    leftover_files,
    tables,
    two_driver_rig,
)

from lamina.backup import (
    Buffer,
    DriverGroup,
    DriverKind,
    DriverProtocolError,
    ImageReader,
    Result,
    TableSpec,
    read_info,
    run_backup,
    run_restore,
    verify_image,
)
from lamina.core.lockfile import LockFile
from lamina.errors import (
    AlreadyExistsError,
    InvalidNameError,
    LockedError,
    StorageError,
    UsageError,
)
from support.waiting import wait_for

HELD_OK = {"acquire", "lock", "commit_seq", "unlock"}


def driver_events(rig: Rig) -> list[tuple[str, str, bool]]:
    return [e for e in rig.log if e[0] not in ("blocker", "kernel")]


def assert_blocker_discipline(rig: Rig) -> None:
    """The blocker is held only around lock / commit seq / unlock, in that order."""
    held = [m for _w, m, h in rig.log if h]
    assert set(held) <= HELD_OK, held
    names = [e.name for e in rig.engines]
    acquires = [i for i, e in enumerate(rig.log) if e[:2] == ("blocker", "acquire")]
    releases = [i for i, e in enumerate(rig.log) if e[:2] == ("blocker", "release")]
    assert len(acquires) == len(releases) <= 1
    if acquires:
        inside = [(w, m) for w, m, _h in rig.log[acquires[0] + 1: releases[0]]]
        full = ([(n, "lock") for n in names] + [("kernel", "commit_seq")]
                + [(n, "unlock") for n in names])
        assert inside == full[:len(inside)]  # complete, or cut short by a failure
    assert not rig.blocker.held


def test_protocol_order_and_blocker(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=1)
    result = rig.run(tmp_path / "img")
    # per driver: the documented order
    at_begin = rig.calls("native")
    assert at_begin[0] == "get_backup" and at_begin[1] == "begin"
    i_lock = at_begin.index("lock")
    assert set(at_begin[2:i_lock]) == {"prelock"}
    assert at_begin[i_lock + 1] == "unlock"
    assert set(at_begin[i_lock + 2:-2]) == {"get_data"} and at_begin[-2:] == ["vp_info", "end"]
    at_end = rig.calls("snapshot")
    first_prelock = at_end.index("prelock")
    assert at_end[:2] == ["get_backup", "begin"] and first_prelock > 2
    assert set(at_end[2:first_prelock]) == {"get_data"}  # initial transfer before prelock
    assert at_end.count("prelock") == 4  # three "not yet" answers, then READY
    assert at_end[-2:] == ["vp_info", "end"] and "cancel" not in at_end + at_begin
    # globally: every begin before anything else; every prelock READY before any lock
    events = driver_events(rig)
    methods = [m for _w, m, _h in events]
    last_begin = max(i for i, m in enumerate(methods) if m == "begin")
    assert all(m in ("get_backup", "begin") for m in methods[:last_begin + 1])
    last_prelock = max(i for i, m in enumerate(methods) if m == "prelock")
    assert last_prelock < methods.index("lock")
    assert_blocker_discipline(rig)
    # the VP and what the blocker cost
    assert result.vp.commit_seq == 41
    assert [dict(d) for d in result.vp.drivers] == [{"facts": 1}, {"facts": 1}]
    assert 0 < result.blocker_held_ns < result.elapsed_ns
    assert result.manifest.blocker_held_ns == result.blocker_held_ns
    assert read_info(tmp_path / "img").manifest == result.manifest
    # the "at end" driver's initial blocks precede every block of the "at begin" driver
    with open(tmp_path / "img", "rb") as f:
        reader = ImageReader(f)
        native_streams = {t.stream for t in reader.catalog.tables_of(0)} | {0}
        order = [c.stream in native_streams for c in reader.chunks() if c.data]
    initial = rig.engines[1].driver.initial_left  # type: ignore[union-attr]
    assert initial == 0 and order.index(True) >= 1
    assert not any(order[: order.index(True)])
    restored = MemRestoreEngine("native"), MemRestoreEngine("snapshot")
    run_restore(tmp_path / "img", {e.name: e for e in restored}, tmp_path)
    got = {**restored[0].by_table(), **restored[1].by_table()}
    assert got == expected_by_table(rig.specs)


def test_lock_waits_for_every_driver_ready(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("a", tables("a", 1, 1), Script(streams={1: b"x" * 50}))
    rig.add("b", tables("b", 1, 2), Script(streams={1: b"y" * 50}, prelock_waits=6))
    rig.add("c", tables("c", 1, 3), Script(streams={1: b"z" * 50}, prelock_waits=2,
                                           prelock_wait=Result.BUSY,
                                           kind=DriverKind.AT_END))
    rig.run(tmp_path / "img")
    methods = [(w, m) for w, m, _h in driver_events(rig)]
    first_lock = methods.index(("a", "lock"))
    for name, waits in (("a", 0), ("b", 6), ("c", 2)):
        prelocks = [i for i, e in enumerate(methods) if e == (name, "prelock")]
        assert len(prelocks) == waits + 1
        assert max(prelocks) < first_lock
    assert_blocker_discipline(rig)


def test_processing_and_busy_are_polled(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=2, processing_every=2, busy_every=3)
    rig.run(tmp_path / "img", buf_size=17)
    verify_image(tmp_path / "img")
    restored = MemRestoreEngine("native"), MemRestoreEngine("snapshot")
    run_restore(tmp_path / "img", {e.name: e for e in restored}, tmp_path)
    assert {**restored[0].by_table(), **restored[1].by_table()} == expected_by_table(rig.specs)


def test_busy_driver_does_not_stall_round_robin(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("busy", tables("a", 1, 1), Script(streams={1: b"a" * 100}, busy_first=8))
    rig.add("fast", tables("b", 1, 2), Script(streams={1: b"b" * 2000}))
    rig.run(tmp_path / "img", buf_size=50)
    log = driver_events(rig)
    unlock = max(i for i, e in enumerate(log) if e[1] == "unlock")
    after = [w for w, m, _h in log[unlock + 1:] if m == "get_data"]
    # both drivers pending: strictly alternating calls, the busy one never hogs the kernel
    first_done = min(len(after) - after[::-1].index(n) for n in ("busy", "fast"))
    head = after[:first_done - 1]
    assert len(head) >= 8  # eight BUSY answers, each followed by a call to the other driver
    assert all(x != y for x, y in itertools.pairwise(head))


def test_all_busy_backs_off(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("busy", tables("a", 1, 1), Script(streams={1: b"a" * 10}, busy_first=7))
    start = time.monotonic()
    rig.run(tmp_path / "img")
    elapsed = time.monotonic() - start
    # back-off doubles from 0.2 ms, capped at 10 ms: seven all-busy rounds sleep
    # 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 + 10 = 22.6 ms
    assert 0.0225 <= elapsed < 5


PHASES = ["begin", "initial", "prelock", "lock", "unlock", "get_data", "end"]


# An "at begin" driver (native) is never asked for data before the VP: no "initial" phase.
FAILURES = [(who, phase) for who in ("native", "snapshot") for phase in PHASES
            if (who, phase) != ("native", "initial")]


@pytest.mark.parametrize("mode", ["error", "raise", "error-bare"])
@pytest.mark.parametrize(("who", "phase"), FAILURES)
def test_failure_in_each_phase(tmp_path: Path, phase: str, mode: str, who: str) -> None:
    rig = two_driver_rig(seed=3)
    script = rig.specs[[e.name for e in rig.engines].index(who)][2]
    script.fail[phase] = mode
    expected = DriverProtocolError if mode == "error-bare" else StorageError
    with pytest.raises(expected):
        rig.run(tmp_path / "img")
    assert leftover_files(tmp_path) == []
    assert_blocker_discipline(rig)
    for engine in rig.engines:
        calls = rig.calls(engine.name)
        if "end" in calls and engine.name != who:
            # end() returned OK before another driver's end() failed: it is finished, and
            # cancel() is for drivers that have not ended
            assert phase == "end" and calls[-1] == "end"
        elif "begin" in calls:
            assert calls.count("cancel") == 1 and calls[-1] == "cancel", (engine.name, calls)
        else:
            assert "cancel" not in calls
    # a driver that failed begin() is still cancelled; the next one was never begun
    if phase == "begin" and who == "native":
        assert rig.calls("snapshot") == ["get_backup"]


class _Bad(ScriptedDriver):
    """A driver that breaks the contract in one configurable way."""

    how = ""

    def lock(self) -> Result:
        result = super().lock()
        return Result.BUSY if self.how == "lock-busy" else result

    def get_data(self, buffer: Buffer) -> Result:
        result = super().get_data(buffer)
        if not self.vp_taken:
            return result
        if self.how == "stream" and buffer.data:
            buffer.stream = 7
        elif self.how == "oversize" and buffer.data:
            buffer.data = bytes(1000)
        elif self.how == "processing-with-data" and buffer.data:
            return Result.PROCESSING
        elif self.how == "ready-after-vp":
            return Result.READY
        elif self.how == "after-last" and result is Result.DONE:
            buffer.stream, buffer.data = 1, b"more"
            return Result.OK
        elif self.how == "not-a-result":
            return "ok"  # type: ignore[return-value]
        return result

    def vp_info(self) -> Any:
        if self.how == "vp-info":
            return ScriptFacts({"when": object()})  # typed, but not JSON-serializable
        if self.how == "vp-info-untyped":
            return {"facts": 1}  # a mapping, not VpFacts
        return super().vp_info()


@pytest.mark.parametrize("how", ["lock-busy", "stream", "oversize", "processing-with-data",
                                 "ready-after-vp", "after-last", "not-a-result", "vp-info",
                                 "vp-info-untyped"])
def test_protocol_violations_are_bugs(tmp_path: Path, how: str) -> None:
    bad = type("Bad", (_Bad,), {"how": how})
    rig = Rig()
    rig.add("good", tables("g", 1, 1), Script(streams={1: b"g" * 100}))
    rig.add("bad", tables("b", 1, 2), Script(streams={1: b"b" * 100}), driver_cls=bad)
    with pytest.raises(DriverProtocolError):
        rig.run(tmp_path / "img")
    assert leftover_files(tmp_path) == []
    assert rig.calls("good")[-1] == "cancel" and rig.calls("bad")[-1] == "cancel"
    assert not rig.blocker.held


def test_real_commit_blocker_holds_off_commits(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    lf = LockFile.open(db, lambda f: f.set_commit_seq(7))
    published = threading.Event()
    seen_during_vp: list[bool] = []

    def commit() -> None:
        with lf.publishing_commit():
            published.set()

    writer = threading.Thread(target=commit)

    def waiting_at_the_gate() -> bool:
        """The writer thread waits in the commit gate (its innermost frame is the wait of
        ``acquire_shared``), i.e. it really tried to commit during the VP."""
        frame = sys._current_frames().get(writer.ident or -1)
        names = []
        while frame is not None:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        return names[:1] == ["wait"] and "acquire_shared" in names

    def hook(method: str) -> None:
        if method == "lock":
            writer.start()
            # The writer is then blocked inside the commit gate (seen in its stack), or it
            # published through the blocker (a failure the assertion below reports).
            wait_for(lambda: waiting_at_the_gate() or published.is_set(),
                     "the writer to try to commit")
            # Hold the VP a known time (not a synchronization): the result must account it.
            time.sleep(0.05)
        elif method == "unlock":
            seen_during_vp.append(published.is_set())

    try:
        rig = Rig()
        rig.add("a", tables("a", 1, 1), Script(streams={1: b"a" * 10}, hook=hook))
        rig.blocker.inner = lf  # the real lock, plus the fake's logging
        result = run_backup(rig.groups, tmp_path / "img", commit_blocker=rig.blocker,
                            commit_seq=lf.commit_seq, database_id=DB_ID)
        writer.join(60)
        assert seen_during_vp == [False] and published.is_set()
        assert result.vp.commit_seq == 7
        assert result.blocker_held_ns >= 50_000_000
    finally:
        lf.close()


class _TimeoutBlocker:
    def commits_blocked(self, timeout: float | None = None
                        ) -> contextlib.AbstractContextManager[None]:
        raise LockedError("commit blocker busy")


def test_blocker_timeout_cancels_everything(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=4)
    with pytest.raises(LockedError):
        run_backup(rig.groups, tmp_path / "img", commit_blocker=_TimeoutBlocker(),
                   commit_seq=lambda: 1, database_id=DB_ID)
    assert leftover_files(tmp_path) == []
    assert rig.calls("native")[-1] == "cancel" and rig.calls("snapshot")[-1] == "cancel"
    assert "lock" not in rig.calls("native")


def test_prelock_timeout(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("slow", tables("a", 1, 1), Script(prelock_waits=10**9))
    with pytest.raises(LockedError, match="not ready"):
        rig.run(tmp_path / "img", prelock_timeout=0.05)
    assert rig.calls("slow")[-1] == "cancel" and leftover_files(tmp_path) == []


def test_progress_reports_bytes(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=5)
    seen: list[tuple[int, int | None]] = []
    result = rig.run(tmp_path / "img", progress=lambda d, e: seen.append((d, e)))
    done = [d for d, _e in seen]
    assert done == sorted(done) and done[-1] == result.raw_bytes > 0
    total = sum(len(b) for _n, _t, s in rig.specs for b in s.streams.values())
    assert seen[-1][1] == total


def test_invalid_requests_touch_nothing(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("a", tables("a", 1, 1), Script())
    for bad, error in (([("../x", 5)], InvalidNameError), ([("/abs", 5)], InvalidNameError),
                       ([("a0", 9)], UsageError), ([("q", 1)], UsageError)):
        other = Rig()
        groups = [*rig.groups, DriverGroup(rig.engines[0], [TableSpec(n, "btree", i)
                                                            for n, i in bad])]
        with pytest.raises(error):
            run_backup(groups, tmp_path / "img", commit_blocker=other.blocker,
                       commit_seq=lambda: 0, database_id=DB_ID)
    with pytest.raises(UsageError):
        run_backup([], tmp_path / "img",
                   commit_blocker=rig.blocker, commit_seq=lambda: 0, database_id=DB_ID)
    with pytest.raises(UsageError):
        rig.run(tmp_path / "img", buf_size=0)
    with pytest.raises(UsageError):
        rig.run(tmp_path / "img", codec="lz4")
    assert rig.log == [] and leftover_files(tmp_path) == []
    (tmp_path / "img").write_bytes(b"precious")
    with pytest.raises(AlreadyExistsError):
        rig.run(tmp_path / "img")
    assert (tmp_path / "img").read_bytes() == b"precious"
    assert leftover_files(tmp_path) == ["img"]
    rig.run(tmp_path / "img", overwrite=True)
    verify_image(tmp_path / "img")


def test_kernel_closes_streams_without_last(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=6, set_last=False, done_with_data=True)
    rig.run(tmp_path / "img", buf_size=33)
    with open(tmp_path / "img", "rb") as f:
        reader = ImageReader(f)
        lasts = [c.stream for c in reader.chunks() if c.last]
    assert len(lasts) == len(set(lasts)) > 0
    restored = MemRestoreEngine("native"), MemRestoreEngine("snapshot")
    run_restore(tmp_path / "img", {e.name: e for e in restored}, tmp_path)
    assert {**restored[0].by_table(), **restored[1].by_table()} == expected_by_table(rig.specs)


class TableLockDriver(ScriptedDriver):
    """Like the default driver: prelock() starts taking a table lock in a thread and answers
    OK until it is held; the lock is kept until end() or cancel()."""

    table_lock = threading.Lock()

    def prelock(self) -> Result:
        self._enter("prelock")
        if not hasattr(self, "got"):
            self.got = threading.Event()

            def take() -> None:
                self.table_lock.acquire()
                self.got.set()

            self.taker = threading.Thread(target=take)
            self.taker.start()
        return Result.READY if self.got.is_set() else Result.OK

    def lock(self) -> Result:
        assert self.got.is_set()  # never asked to freeze before its table lock is held
        return super().lock()

    def _release(self) -> None:
        if hasattr(self, "taker"):
            self.taker.join()
            self.table_lock.release()

    def end(self) -> Result:
        self._release()
        return super().end()

    def cancel(self) -> Result:
        self._release()
        return super().cancel()


@pytest.mark.parametrize("fail", [False, True])
def test_blocking_default_style_driver_fits(tmp_path: Path, fail: bool) -> None:
    rig = Rig()
    rig.add("native", tables("n", 1, 1), Script(streams={1: b"n" * 300}))
    rig.add("default", tables("d", 1, 2), Script(streams={1: b"d" * 300},
                                                 fail={"get_data": "raise"} if fail else {}),
            driver_cls=TableLockDriver)
    TableLockDriver.table_lock.acquire()  # a writer holds the table for a while: ...

    def writer() -> None:
        # ... until the kernel has polled the driver 5 times (counted, not timed; 60 s is
        # a hang guard, after which the count assertion below fails).
        deadline = time.monotonic() + 60
        while rig.calls("default").count("prelock") < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        TableLockDriver.table_lock.release()

    releaser = threading.Thread(target=writer)
    releaser.start()
    try:
        if fail:
            with pytest.raises(StorageError):
                rig.run(tmp_path / "img")
        else:
            rig.run(tmp_path / "img")
    finally:
        releaser.join()
    calls = rig.calls("default")
    assert calls.count("prelock") > 3  # OK ("not yet") while the writer held the table
    assert calls.index("lock") > max(i for i, m in enumerate(calls) if m == "prelock")
    assert calls[-1] == ("cancel" if fail else "end")
    # the driver released its table lock on end() / cancel(): writers can go on
    assert TableLockDriver.table_lock.acquire(blocking=False)
    TableLockDriver.table_lock.release()
    assert_blocker_discipline(rig)
