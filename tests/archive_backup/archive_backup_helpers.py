"""Shared helpers of the archive native backup tests (also imported by the writer script,
so this module imports only ``lamina``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lamina
from lamina.backup import (
    BackupDriver,
    BackupEngine,
    BackupFlags,
    BackupResult,
    Buffer,
    DriverGroup,
    RestoreDriver,
    RestoreFlags,
    RestoreResult,
    Result,
    TableSpec,
    run_backup,
    run_restore,
)
from lamina.core.driver import VpFacts
from lamina.core.lockfile import LockFile
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.database import Database
from lamina.engines.archive import ArchiveTable
from lamina.engines.archive.backup import ArchiveBackupDriver
from lamina.engines.archive.engine import ArchiveBackupEngine
from lamina.engines.archive.restore_driver import ArchiveRestoreDriver


def row(table: str, row_id: int) -> bytes:
    """The deterministic content of row ``row_id`` of ``table`` (every 17th row holds a
    newline, so blocks use both payload layouts)."""
    tail = b"\nnl" if row_id % 17 == 0 else b""
    return f"{table}:{row_id}:".encode() + b"x" * (row_id * 7 % 61) + tail


def fill(db: Database, name: str, commits: int, per_commit: int) -> None:
    """Append ``commits`` commits of ``per_commit`` deterministic rows to ``name``."""
    t = db.archive(name)
    for _ in range(commits):
        first = t.count() + 1
        t.append_many([row(name, i) for i in range(first, first + per_commit)])


def archive_specs(db: Database) -> list[TableSpec]:
    """Every archive table of ``db`` as the kernel names it."""
    return [TableSpec(t.name, t.engine, t.table_id) for t in db.tables()
            if t.engine == "archive"]


def backup(db: Database, image: Path | Any, *, specs: Sequence[TableSpec] | None = None,
           engine: BackupEngine | None = None, **kw: Any) -> BackupResult:
    """Back up ``db``'s archive tables through the real kernel."""
    engine = engine or ArchiveBackupEngine(db.path, db.lockfile)
    return run_backup([DriverGroup(engine, list(specs or archive_specs(db)))], image,
                      commit_blocker=db.lockfile, commit_seq=db.lockfile.commit_seq,
                      database_id=db.identity.db_id, **kw)


def restore(image: Path, dest: Path | None, **kw: Any) -> RestoreResult:
    """Restore ``image`` into the new directory ``dest`` (None: verify only)."""
    if dest is not None:
        dest.mkdir(parents=True)
    return run_restore(image, {"archive": ArchiveBackupEngine(None, None)}, dest, **kw)


def restored_rows(dest: Path, spec: TableSpec) -> list[bytes]:
    """Open a restored table with ``ArchiveTable.open``, require a clean ``check()`` and
    continuous row ids, and return its rows."""
    lf = LockFile.open(dest, init=lambda lf: lf.set_commit_seq(0))
    try:
        t = ArchiveTable.open(dest, spec.name, spec.table_id, lf, readonly=True)
        try:
            report = t.check()
            assert report.ok, report.findings
            pairs = list(t.scan())
        finally:
            t.close()
    finally:
        lf.close()
    assert [i for i, _r in pairs] == list(range(1, len(pairs) + 1))
    return [r for _i, r in pairs]


def backup_slots(db: Database) -> list[tuple[int, int, int, int]]:
    """Live lock-file slots of kind "backup"."""
    return [s for s in db.lockfile.live_slots() if s[3] == SLOT_BACKUP]


def retained_files(directory: Path) -> list[str]:
    """Names of retained generation files (``T.ARM.g<N>``, ``T.ARZ.g<N>``) in a directory."""
    return sorted(p for p in os.listdir(directory) if ".ARM.g" in p or ".ARZ.g" in p)


def new_driver(db: Database, specs: Sequence[TableSpec] | None = None) -> ArchiveBackupDriver:
    """A backup driver for ``db``'s archive tables, made by the engine."""
    drv = ArchiveBackupEngine(db.path, db.lockfile).get_backup(
        list(specs or archive_specs(db)), BackupFlags())
    assert isinstance(drv, ArchiveBackupDriver)
    return drv


def drive_to_vp(db: Database, drv: ArchiveBackupDriver, buf_size: int = 1 << 20) -> None:
    """begin, prelock, and lock/unlock under the real commit blocker."""
    assert drv.begin(buf_size) is Result.OK, drv.error
    assert drv.prelock() is Result.READY
    with db.lockfile.commits_blocked(5.0):
        assert drv.lock() is Result.OK
        assert drv.unlock() is Result.OK


def collect(drv: ArchiveBackupDriver, buf_size: int) -> dict[int, list[Buffer]]:
    """Run get_data until DONE; the buffers of each local stream, in order."""
    out: dict[int, list[Buffer]] = {}
    while True:
        buf = Buffer(buf_size)
        result = drv.get_data(buf)
        assert result in (Result.OK, Result.DONE), (result, drv.error)
        assert len(buf.data) <= buf_size
        if buf.data or buf.last:
            out.setdefault(buf.stream, []).append(buf)
        if result is Result.DONE:
            return out


def table_streams(db: Database, buf_size: int = 1 << 20,
                  specs: Sequence[TableSpec] | None = None,
                  ) -> tuple[dict[int, bytes], Mapping[str, Any]]:
    """Drive a backup driver by hand; returns (local stream -> bytes, the JSON form of its
    vp_info(), as the image manifest stores it)."""
    drv = new_driver(db, specs)
    drive_to_vp(db, drv, buf_size)
    try:
        bufs = collect(drv, buf_size)
        info = drv.vp_info().to_json()
        assert drv.end() is Result.OK
    except BaseException:
        drv.cancel()
        raise
    return {s: b"".join(bytes(b.data) for b in bs) for s, bs in bufs.items()}, info


def restore_driver(dest: Path | None, specs: Sequence[TableSpec]) -> ArchiveRestoreDriver:
    """A begun restore driver made by the engine (``dest`` None: verify only)."""
    drv = ArchiveBackupEngine(None, None).get_restore(1, list(specs), RestoreFlags(dest))
    assert isinstance(drv, ArchiveRestoreDriver)
    assert drv.begin() is Result.OK
    return drv


def feed(drv: RestoreDriver, stream: int, data: bytes, piece: int = 1000, *,
         last: bool = True) -> Result:
    """Send ``data`` on ``stream`` in ``piece``-byte buffers; returns the first non-OK
    result (or OK)."""
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)] or [b""]
    for i, p in enumerate(pieces):
        result = drv.send_data(Buffer(len(p), stream, p, last and i == len(pieces) - 1))
        if result is not Result.OK:
            return result
    return Result.OK


class HookedDriver(BackupDriver):
    """Delegates to a real driver and runs ``hooks[method]()`` right after that method."""

    def __init__(self, inner: BackupDriver, hooks: Mapping[str, Callable[[], None]]) -> None:
        self.inner = inner
        self.hooks = hooks
        self.kind = inner.kind
        self.calls: list[str] = []

    def _call(self, name: str, *args: Any) -> Any:
        self.calls.append(name)
        result = getattr(self.inner, name)(*args)
        self.error = self.inner.error
        hook = self.hooks.get(name)
        if hook is not None:
            hook()
        return result

    def begin(self, buf_size: int) -> Result:
        return self._call("begin", buf_size)  # type: ignore[no-any-return]

    def get_data(self, buffer: Buffer) -> Result:
        return self._call("get_data", buffer)  # type: ignore[no-any-return]

    def prelock(self) -> Result:
        return self._call("prelock")  # type: ignore[no-any-return]

    def lock(self) -> Result:
        return self._call("lock")  # type: ignore[no-any-return]

    def unlock(self) -> Result:
        return self._call("unlock")  # type: ignore[no-any-return]

    def cancel(self) -> Result:
        return self._call("cancel")  # type: ignore[no-any-return]

    def end(self) -> Result:
        return self._call("end")  # type: ignore[no-any-return]

    def init_size(self) -> int | None:
        return self.inner.init_size()

    def size(self) -> int | None:
        return self.inner.size()

    def vp_info(self) -> VpFacts:
        return self.inner.vp_info()


class HookedEngine(BackupEngine):
    """An archive backup engine whose drivers run hooks after chosen calls."""

    name = "archive"
    version = 1

    def __init__(self, db: Database, hooks: Mapping[str, Callable[[], None]]) -> None:
        self.real = ArchiveBackupEngine(db.path, db.lockfile)
        self.hooks = hooks
        self.drivers: list[HookedDriver] = []

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        drv = HookedDriver(self.real.get_backup(tables, flags), self.hooks)
        self.drivers.append(drv)
        return drv

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        return self.real.get_restore(version, tables, flags)

    @property
    def inner(self) -> ArchiveBackupDriver:
        """The real driver of the (single) backup made."""
        drv = self.drivers[-1].inner
        assert isinstance(drv, ArchiveBackupDriver)
        return drv


def open_db(path: Path) -> Database:
    """A database without fsync (tests are about protocol, not power loss)."""
    return lamina.open(path, sync=False)
