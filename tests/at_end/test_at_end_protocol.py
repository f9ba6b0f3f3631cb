"""The kernel's initial-transfer phase driven by the real "at end" drivers of both engines.

A spy wraps each real driver (it only records the calls and what they returned, the work is
the driver's own) while :func:`lamina.backup.kernel.run_backup` takes the backup: the at-end
drivers must fill buffers before ``lock()`` (the initial transfer), say READY exactly once,
before the VP, and send only what changed after it. Then protocol misuse is refused.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

import lamina
from lamina import online
from lamina.backup.kernel import run_backup
from lamina.core.driver import (
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
    VpFacts,
)
from lamina.database import Database
from lamina.engines.archive.at_end import ArchiveAtEndDriver
from lamina.engines.btree.at_end import BtreeAtEndDriver
from lamina.errors import CancelledError, UsageError
from lamina.online.at_end import at_end_groups
from lamina.online.plan import plan_groups
from lamina.online.root import root_hash_function


class Spy(BackupDriver):
    """Delegates every call to the real driver and records (call, result, bytes)."""

    def __init__(self, real: BackupDriver, calls: list[tuple[str, str, Result, int]],
                 name: str) -> None:
        self.real, self.calls, self.name = real, calls, name
        self.kind = real.kind

    def _log(self, call: str, result: Result, nbytes: int = 0) -> Result:
        self.calls.append((self.name, call, result, nbytes))
        self.error = self.real.error
        return result

    def begin(self, buf_size: int) -> Result:
        return self._log("begin", self.real.begin(buf_size))

    def get_data(self, buffer: Buffer) -> Result:
        result = self.real.get_data(buffer)
        return self._log("get_data", result, len(buffer.data))

    def prelock(self) -> Result:
        return self._log("prelock", self.real.prelock())

    def lock(self) -> Result:
        return self._log("lock", self.real.lock())

    def unlock(self) -> Result:
        return self._log("unlock", self.real.unlock())

    def cancel(self) -> Result:
        return self._log("cancel", self.real.cancel())

    def end(self) -> Result:
        return self._log("end", self.real.end())

    def init_size(self) -> int | None:
        return self.real.init_size()

    def size(self) -> int | None:
        return self.real.size()

    def vp_info(self) -> VpFacts:
        return self.real.vp_info()


class SpyEngine(BackupEngine):
    """Hands out the real engine's drivers, wrapped in a :class:`Spy`."""

    def __init__(self, real: BackupEngine, calls: list[tuple[str, str, Result, int]]) -> None:
        self.real, self.calls = real, calls
        self.name, self.version = real.name, real.version

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        return Spy(self.real.get_backup(tables, flags), self.calls, self.name)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:  # pragma: no cover - unused
        return self.real.get_restore(version, tables, flags)


def _filled(db: Database) -> None:
    db.create_table("t", engine="btree")
    db.create_table("a", engine="archive")
    with db.write() as txn:
        t = txn.table("t")
        for i in range(2000):
            t.put(b"k%05d" % i, b"v" * 200)
    rng = random.Random(5)
    db.append_many("a", [rng.randbytes(100) for _ in range(3000)])  # incompressible


def test_initial_transfer_is_done_by_the_real_at_end_drivers(tmp_path: Path) -> None:
    calls: list[tuple[str, str, Result, int]] = []
    with lamina.open(tmp_path / "db") as db:
        _filled(db)
        groups = [DriverGroup(SpyEngine(g.engine, calls), g.tables, g.flags)
                  for g in at_end_groups(plan_groups(db, None))]
        result = run_backup(groups, tmp_path / "img", commit_blocker=db.lockfile,
                            commit_seq=db.lockfile.commit_seq, database_id=db.identity.db_id,
                            buf_size=4096, root_hash=root_hash_function())
        assert db.lockfile.live_slots() == []
    assert {d.kind for d in result.catalog.drivers} == {DriverKind.AT_END}
    for name in ("btree", "archive"):
        mine = [(call, res, n) for who, call, res, n in calls if who == name]
        order = [call for call, _res, _n in mine]
        lock = order.index("lock")
        before = mine[:lock]
        after = mine[lock:]
        readies = [i for i, (call, res, _n) in enumerate(mine) if res is Result.READY
                   and call == "get_data"]
        assert len(readies) == 1 and readies[0] < order.index("prelock") < lock
        sent_before = sum(n for call, _r, n in before if call == "get_data")
        sent_after = sum(n for call, _r, n in after if call == "get_data")
        # Nothing was written during the backup: the bulk went before the VP, and after
        # it only the final section's header, meta and trailer.
        assert sent_before > 100_000, (name, sent_before)
        assert 0 < sent_after < 2_000, (name, sent_after)
        assert [c for c, _r, _n in after][-2:] == ["get_data", "end"]
        assert after[-2][1] is Result.DONE
    restored = online.restore(tmp_path / "img", tmp_path / "restored")
    assert restored.to_json()["vp_commit_seq"] == result.vp.commit_seq
    with lamina.open(tmp_path / "restored", create=False, readonly=True) as r:
        assert len(list(r.scan("a"))) == 3000
        with r.read() as txn:
            assert len(dict(txn.table("t").items())) == 2000


@pytest.mark.parametrize("engine", ["btree", "archive"])
def test_lock_before_the_initial_transfer_ended_is_refused(tmp_path: Path,
                                                           engine: str) -> None:
    with lamina.open(tmp_path / "db") as db:
        _filled(db)
        driver: BackupDriver
        if engine == "btree":
            driver = BtreeAtEndDriver(db.store, [])
        else:
            spec = _spec(db, "a")
            driver = ArchiveAtEndDriver(db.path, db.lockfile, [spec])
        assert driver.kind is DriverKind.AT_END
        assert driver.begin(4096) is Result.OK
        buf = Buffer(4096)
        assert driver.get_data(buf) is Result.OK and buf.data  # initial transfer under way
        if engine == "btree":
            with pytest.raises(UsageError, match="initial transfer"):
                driver.lock()
        else:
            assert driver.lock() is Result.ERROR
            assert isinstance(driver.error, UsageError)
        assert driver.cancel() is Result.OK
        assert db.lockfile.live_slots() == []


def _spec(db: Database, name: str) -> TableSpec:
    for t in db.tables():
        if t.name == name:
            return TableSpec(t.name, t.engine, t.table_id)
    raise AssertionError(name)


@pytest.mark.parametrize("layer", [False, True])
def test_cancel_during_the_initial_transfer_leaves_nothing(tmp_path: Path,
                                                           layer: bool) -> None:
    with lamina.open(tmp_path / "db") as db:
        _filled(db)
        base = None
        if layer:
            base = tmp_path / "base"
            online.backup(db, base, vp="end")
            with db.write() as txn:
                txn.table("t").put(b"new", b"x" * 500)
        cancel = threading.Event()
        seqs: list[int] = []

        def progress(done: int, total: int | None) -> None:
            seqs.append(db.lockfile.commit_seq())
            cancel.set()  # at the first chunk: in the initial transfer, before the VP

        with pytest.raises(CancelledError):
            online.backup(db, tmp_path / "img", vp="end", buf_size=1024, cancel=cancel,
                          progress=progress, base=base)
        assert len(seqs) == 1
        assert not (tmp_path / "img").exists()
        assert db.lockfile.live_slots() == []  # S0's pin was released
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".img")] == []
