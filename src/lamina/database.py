"""The ``Database`` facade: one directory, its lock file, its btree store and archive tables.

This module ties the engines together; it sits above ``lamina.engines`` and below
``lamina.backup``. Concurrency: a ``Database`` may be shared by the threads of a process;
each transaction belongs to one thread. Any number of processes may open the same
directory; they coordinate through the ``LOCK`` file (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.core import fileio, lockfile_format, pins, publish
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE, CatalogEntry
from lamina.core.check import CheckReport, Finding
from lamina.core.identity import FILE_NAME as IDENTITY_FILE
from lamina.core.identity import Identity
from lamina.core.lockfile import LockFile
from lamina.core.names import validate_table_name
from lamina.core.root_hash import RootArchive, RootInputs, RootTable
from lamina.engines.archive import ArchiveTable
from lamina.engines.btree import BtreeStore, ReadTxn, WriteTxn
from lamina.errors import (
    AlreadyExistsError,
    ClosedError,
    DataError,
    LockedError,
    NotADatabaseError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    TableNotFoundError,
    UsageError,
    storage_error,
)

ENGINES = (ENGINE_BTREE, ENGINE_ARCHIVE)
#: Files a database creation may leave before its identity file exists.
_CREATION_FILES = {lockfile_format.FILE_NAME, BtreeStore.DATA_FILE_NAME,
                   BtreeStore.DATA_FILE_NAME + ".tmp", IDENTITY_FILE + ".tmp"}
#: How long DDL and open-time cleanup wait for another process's DDL.
DDL_TIMEOUT = 30.0
#: ``lamina.open``'s default bound on waits for the writer and table locks (seconds).
DEFAULT_LOCK_TIMEOUT = 5.0


def _close_dir(fd: int, path: Path) -> None:
    """Close a read-only directory descriptor (releasing any flock on it); nothing was
    written through it, so a close error loses nothing and is ignored."""
    with contextlib.suppress(StorageError):
        fileio.close_fd(fd, path)


class _ThreadWrites(threading.local):
    """Per thread: the write transaction it began on each database, by the id of the
    process's one ``LockFile`` of that database (shared by every handle). Weak references:
    an entry never keeps a transaction alive, and an ended or collected one means none."""

    def __init__(self) -> None:
        self.txns: dict[int, weakref.ref[WriteTxn]] = {}


_thread_writes = _ThreadWrites()


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table as the catalog knows it."""

    name: str
    engine: str
    table_id: int
    created_seq: int


class Database:
    """An open Lamina database. Use :func:`lamina.open`; close it (or use ``with``)."""

    def __init__(self, path: Path, *, create: bool, readonly: bool, page_size: int,
                 sync: bool, lock_timeout: float, staged: Identity | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self.sync = sync
        self.lock_timeout = lock_timeout
        self._closed = False
        self._archive_handles: dict[str, ArchiveTable] = {}
        self._handles_lock = threading.Lock()
        creating: int | None = None  # the creation lock's descriptor while we create
        try:
            if staged is not None:  # a restore proving a directory it has not published
                self.identity = staged
            else:
                self.identity, creating = self._ensure_directory(create)
            self.lockfile = LockFile.open(path, init=self._init_lockfile)
            try:
                if staged is None and creating is None:
                    # Read again now that we hold the lock file: a restore may have replaced
                    # the database while we waited for it (see core/publish.py).
                    self.identity = self._read_identity()
                self.store = BtreeStore.open(path, self.lockfile,
                                             create=create and not readonly, readonly=readonly,
                                             page_size=page_size, sync=sync)
                try:
                    if creating is not None:
                        # Last step of a creation: from here on the directory is a database.
                        self.identity.write(path, sync=sync)
                    if not readonly:
                        self._remove_orphan_files()
                except BaseException:
                    self.store.close()
                    raise
            except BaseException:
                self.lockfile.close()
                raise
        finally:
            if creating is not None:
                _close_dir(creating, path)  # releases the creation lock

    # ------------------------------------------------------------------ opening
    def _ensure_directory(self, create: bool) -> tuple[Identity, int | None]:
        """The database's identity; and, when this call is creating the database, the
        descriptor that holds the creation lock (an ``flock`` on the directory) until the
        identity file is written.

        Creators serialize on that lock, so a second process never mistakes a creation in
        progress for an interrupted one (and never deletes files the first one uses); it
        waits, then finds the identity file and opens the database the first one made.
        """
        path = self.path
        if not (path / IDENTITY_FILE).exists():
            # A restore killed while it replaced this database left it half done: settle
            # that first (put the old database back, or finish publishing the new one).
            publish.recover(path, timeout=max(self.lock_timeout, publish.PUBLISH_WAIT))
        if path.exists() and not path.is_dir():
            raise NotADatabaseError(f"{path} is not a directory, so not a Lamina database")
        if (path / IDENTITY_FILE).exists():
            return Identity.read(path), None
        if not create or self.readonly:  # a read-only open never creates
            if path.exists():
                temp = publish.parse_any_temp(path)
                if temp is not None:
                    owner = "" if temp.pid is None else f" of process {temp.pid}"
                    raise NotADatabaseError(f"{path} is the temporary {temp.kind} directory"
                                            f"{owner}, not a Lamina database")
                raise NotADatabaseError(f"{path} is not a Lamina database (no {IDENTITY_FILE})")
            raise NotFoundError(f"database {path} does not exist")
        fileio.mkdir(path, parents=True, exist_ok=True)
        try:
            fd = fileio.open_fd(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError as exc:  # removed again meanwhile
            raise storage_error(exc, "create database directory", path) from exc
        try:
            self._take_creation_lock(fd)
            # Another process may have created it meanwhile.
            existing = Identity.read(path) if (path / IDENTITY_FILE).exists() else None
            if existing is None:
                leftovers = set(fileio.listdir(path)) - _CREATION_FILES
                if leftovers:
                    raise NotADatabaseError(
                        f"{path} is a non-empty directory that is not a Lamina database")
                # Files of an interrupted creation (its creator died: the lock was free).
                for name in _CREATION_FILES:
                    fileio.unlink(path / name, missing_ok=True)
                return Identity.new(), fd
        except BaseException:
            _close_dir(fd, path)
            raise
        _close_dir(fd, path)
        return existing, None

    def _read_identity(self) -> Identity:
        try:
            return Identity.read(self.path)
        except FileNotFoundError:
            raise NotADatabaseError(f"{self.path} is not a Lamina database (no "
                                    f"{IDENTITY_FILE})") from None

    def _take_creation_lock(self, fd: int) -> None:
        deadline = time.monotonic() + max(self.lock_timeout, DDL_TIMEOUT)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockedError(f"{self.path} is being created by another process") \
                        from None
                time.sleep(0.01)

    def _init_lockfile(self, lockfile: LockFile) -> None:
        """Seed the shared commit seq and btree meta: we are the only process here."""
        seq, meta = 0, b""
        data_file = self.path / BtreeStore.DATA_FILE_NAME
        if data_file.exists():
            if not self.readonly:
                # The lock file's "last meta unsynced" flag starts cleared: make it true (a
                # sync=False process may have left a meta in the page cache only).
                fd = fileio.open_fd(data_file, os.O_RDONLY)
                try:
                    fileio.fdatasync(fd, data_file)
                finally:
                    fileio.close_fd(fd, data_file)
            seq, meta = BtreeStore.read_committed_meta(self.path)
        for arm in self.path.glob("*.ARM"):
            try:
                seq = max(seq, ArchiveTable.read_last_commit_seq(self.path, arm.name[:-4]))
            except Exception:
                continue
        try:  # from disk: a restore may have replaced the database since we read it
            identity = Identity.read(self.path)
        except FileNotFoundError:  # being created, or a restore's staged directory
            identity = self.identity
        if identity.restored_vp_seq > seq:
            seq = identity.restored_vp_seq
        lockfile.set_commit_seq(seq)
        lockfile.publish_btree_meta(meta)
        pins.seed(lockfile, self.path)  # interrupted backups' durable pins hold pages

    def _remove_orphan_files(self) -> None:
        """Delete archive files whose table name the catalog does not know (a create or a
        drop cut by a crash; both hold the DDL lock, so none is in progress now).

        The catalog is the truth: files of a table it lists are never deleted here, even if
        they cannot be read (a newer format, a transient I/O error, damage) — opening or
        checking that table reports it instead.
        """
        try:
            # Housekeeping only: if DDL or a backup (which blocks DDL) holds the lock, skip
            # it rather than make this open wait; a later writable open does it.
            self.lockfile.ddl_lock.acquire(0)
        except LockedError:
            return
        try:
            with self.store.begin_read() as txn:
                owned = {e.name for e in txn.catalog() if e.engine == ENGINE_ARCHIVE}
            names = {p.name[:-4] for pattern in ("*.ARM", "*.ARZ") for p in self.path.glob(pattern)}
            for name in sorted(names - owned):
                ArchiveTable.remove_files(self.path, name)
        finally:
            self.lockfile.ddl_lock.release()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every handle; idempotent. Open transactions must have ended."""
        if self._closed:
            return
        self._closed = True
        with self._handles_lock:
            for handle in self._archive_handles.values():
                handle.close()
            self._archive_handles.clear()
        self.store.close()
        self.lockfile.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"database {self.path} is closed")

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    # ------------------------------------------------------------------ transactions
    def read(self) -> ReadTxn:
        """Begin a read transaction: a stable snapshot of every btree table and the catalog.

        Never blocks on writers; pins its snapshot (a reader slot) until closed.
        """
        self._check_open()
        return self.store.begin_read()

    def write(self, timeout: float | None = None) -> WriteTxn:
        """Begin the write transaction (one at a time across processes).

        Waits up to ``timeout`` (default: the database's ``lock_timeout``) for the writer
        lock, then raises :class:`~lamina.errors.LockedError`. Commits on normal exit of a
        ``with`` block, aborts on an exception.

        A thread that already has the write transaction of this database open (through
        any handle) gets :class:`~lamina.errors.UsageError` at once instead of waiting for
        itself: write transactions do not nest, so use the open one. Other threads wait.
        """
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only")
        mine = _thread_writes.txns
        held = mine.get(id(self.lockfile))
        if held is not None:
            txn = held()
            if txn is not None and not txn.closed:
                raise UsageError(
                    f"this thread already holds the write transaction of {self.path}; write "
                    "transactions do not nest: use the open one (txn.table(name)), or commit "
                    "it first (db.put/delete/create_table/drop_table each begin their own)")
        wait = self.lock_timeout if timeout is None else timeout
        txn = self.store.begin_write(wait)
        # The same bound applies to a table a default backup driver holds (LockedError).
        txn.table_lock_timeout = wait
        if len(mine) >= 16:  # forget the ended ones (databases written to earlier)
            for lockfile_id, ref in list(mine.items()):
                old = ref()
                if old is None or old.closed:
                    del mine[lockfile_id]
        mine[id(self.lockfile)] = weakref.ref(txn)
        return txn

    # ------------------------------------------------------------------ catalog
    def tables(self) -> list[TableInfo]:
        """Every table, sorted by name."""
        self._check_open()
        with self.store.begin_read() as txn:
            return [TableInfo(e.name, e.engine, e.table_id, e.created_seq)
                    for e in sorted(txn.catalog(), key=lambda e: e.name)]

    def table_info(self, name: str) -> TableInfo:
        """The catalog entry of ``name``; raises TableNotFoundError."""
        self._check_open()
        with self.store.begin_read() as txn:
            entry = txn.catalog_get(name)
        if entry is None:
            raise TableNotFoundError(f"no table {name!r} in {self.path}")
        return TableInfo(entry.name, entry.engine, entry.table_id, entry.created_seq)

    def create_table(self, name: str, engine: str = ENGINE_BTREE, *, codec: str = "zstd",
                     level: int | None = None, block_target: int | None = None) -> TableInfo:
        """Create a table, crash-atomically: after a crash it exists whole or not at all.

        Raises InvalidNameError, AlreadyExistsError, UsageError (unknown engine).
        """
        self._check_open()
        validate_table_name(name)
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if self.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only")
        with self.lockfile.ddl_lock.held(DDL_TIMEOUT), self.write() as txn:
            if txn.catalog_get(name) is not None:
                raise AlreadyExistsError(f"table {name!r} already exists in {self.path}")
            entry: CatalogEntry = txn.create_table(name, engine)
            if engine == ENGINE_ARCHIVE:
                kwargs: dict[str, Any] = {"codec": codec, "level": level, "sync": self.sync}
                if block_target is not None:
                    kwargs["block_target"] = block_target
                ArchiveTable.create(self.path, name, entry.table_id, **kwargs)
                from lamina.core.failpoints import failpoint
                failpoint("catalog.after_files_created")
        return self.table_info(name)

    def drop_table(self, name: str) -> None:
        """Drop a table and its data, crash-atomically. Raises TableNotFoundError, LockedError
        (an archive table's writer is busy)."""
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"database {self.path} is open read-only")
        info = self.table_info(name)
        with self.lockfile.ddl_lock.held(DDL_TIMEOUT):
            writer_lock = None
            if info.engine == ENGINE_ARCHIVE:
                writer_lock = self.lockfile.table_writer_lock(info.table_id, name)
                writer_lock.acquire(self.lock_timeout)
            try:
                with self.write() as txn:
                    txn.drop_table(name)
                from lamina.core.failpoints import failpoint
                failpoint("catalog.after_commit_before_unlink")
                if info.engine == ENGINE_ARCHIVE:
                    with self._handles_lock:
                        handle = self._archive_handles.pop(name, None)
                    if handle is not None:
                        handle.close()
                    ArchiveTable.remove_files(self.path, name)
            finally:
                if writer_lock is not None:
                    writer_lock.release()

    # ------------------------------------------------------------------ archive tables
    def archive(self, name: str) -> ArchiveTable:
        """The handle of archive table ``name`` (cached per database handle).

        Raises TableNotFoundError, or UsageError if ``name`` is a btree table.
        """
        info = self.table_info(name)
        if info.engine != ENGINE_ARCHIVE:
            raise UsageError(f"table {name!r} is a {info.engine} table, not an archive table")
        with self._handles_lock:
            handle = self._archive_handles.get(name)
            if handle is not None and getattr(handle, "table_id", info.table_id) != info.table_id:
                handle.close()  # dropped and re-created by another process
                handle = None
            if handle is None:
                handle = ArchiveTable.open(self.path, name, info.table_id, self.lockfile,
                                           readonly=self.readonly, sync=self.sync)
                handle.lock_timeout = self.lock_timeout  # its writers wait as the database's
                self._archive_handles[name] = handle
            return handle

    # ------------------------------------------------------------------ conveniences
    def get(self, table: str, key: bytes, default: bytes | None = None) -> bytes | None:
        """One-shot read of ``key`` in btree table ``table``."""
        with self.read() as txn:
            return txn.table(table).get(key, default)

    def put(self, table: str, key: bytes, value: bytes) -> int:
        """One-shot write; returns the commit seq."""
        with self.write() as txn:
            txn.table(table).put(key, value)
            return txn.commit()

    def delete(self, table: str, key: bytes) -> bool:
        """One-shot delete; returns whether the key existed."""
        with self.write() as txn:
            found = txn.table(table).delete(key)
            txn.commit()
            return found

    def append(self, table: str, row: bytes) -> int:
        """Append one row to archive table ``table`` in its own commit; returns its row id.

        Waits up to the database's ``lock_timeout`` for the table's writer (LockedError).
        """
        return self.append_many(table, (row,))[0]

    def append_many(self, table: str, rows: Iterable[bytes]) -> list[int]:
        """Append rows to archive table ``table`` in one commit; returns their row ids.

        Waits up to the database's ``lock_timeout`` for the table's writer (LockedError).
        """
        with self.archive(table).writer(self.lock_timeout) as w:
            w.backup_lock_timeout = self.lock_timeout
            return w.append_many(rows)

    def scan(self, table: str, start: int = 1) -> Iterator[tuple[int, bytes]]:
        """Committed rows of archive table ``table`` from row id ``start``."""
        return self.archive(table).scan(start)

    # ------------------------------------------------------------------ backup
    def backup(self, target: Any, *, tables: Sequence[str] | None = None, codec: str = "zstd",
               level: int | None = None, progress: Callable[[int, int | None], None] | None = None,
               cancel: Any = None, driver: str | dict[str, str] | None = None,
               max_rate: float | None = None, lock_timeout: float | None = 30.0,
               base: str | os.PathLike[str] | None = None, vp: str = "begin") -> Any:
        """Take a consistent online backup into ``target`` (a path or a binary stream).

        Writers in any process go on; see :func:`lamina.online.backup` for the
        contract. Returns a ``BackupResult`` (image id, validity point, sizes, the time the
        commit blocker was held). ``progress(done_bytes, total_or_None)`` is called as data
        is written; setting ``cancel`` (a ``threading.Event``) stops it with no image left.
        ``driver`` forces drivers ("native", "snapshot", "default", or per table
        ``{"t1": "default"}``; DriverChoiceError if an engine cannot use it); ``max_rate``
        bounds the read rate in MB/s; ``lock_timeout`` bounds the default driver's table
        locking (LockedError). ``base`` (an earlier image of this database) makes it an
        incremental *layer* holding only what changed since the base's validity point
        (ChainError if the base is from another database or newer than this one). ``vp``
        is where the validity point lies: "begin" (default) or "end" (the bulk is copied
        first, the VP taken after it: the image is the database as of the end of the
        backup; native drivers only).
        """
        # lamina.online sits above this module (it builds on Database); importing it here,
        # when called, is the one documented upward import (tests/test_layers.py).
        from lamina import online

        return online.backup(self, target, tables=tables, codec=codec, level=level,
                             progress=progress, cancel=cancel, driver=driver,
                             max_rate=max_rate, lock_timeout=lock_timeout, base=base,
                             vp=vp)

    def replicate(self, repo: Any, **options: Any) -> Any:
        """A replicator of this database into ``repo`` (a ``lamina.repository.Repository``)
        for programs that embed continuous replication: ``db.replicate(repo).run()``
        blocks until its ``stop()``; ``step()`` takes one point. ``options`` are those of
        ``lamina.repository.replicate.replicate``. The repository builds it
        (``repo.replicator(db, ...)``): this module never imports the repository layer."""
        return repo.replicator(self, **options)

    # ------------------------------------------------------------------ check / stat
    def check(self, progress: Callable[[str], None] | None = None) -> CheckReport:
        """Run the checker over the btree file and every archive table (read-only).

        Returns the report; damage is reported as findings, never raised (a catalogued
        archive table whose files are missing is a finding too). ``progress(phase)`` is
        called as each phase starts ("checking the btree file", "checking archive table T").
        Safe beside writers in any process: it checks one snapshot.
        """
        self._check_open()
        if progress is not None:
            progress("checking the btree file")
        report = self.store.check()
        try:
            tables = self.tables()
        except DataError as exc:  # the store check has already located the damage
            report.findings.append(Finding(None, "catalog", f"cannot list tables: {exc}"))
            return report
        for info in tables:
            if info.engine != ENGINE_ARCHIVE:
                continue
            if progress is not None:
                progress(f"checking archive table {info.name}")
            try:
                table_report = self.archive(info.name).check()
            except (DataError, NotFoundError) as exc:
                report.findings.append(Finding(info.name, "archive files", str(exc)))
                continue
            report.extend(table_report, prefix=f"archive.{info.name}.")
        return report

    def root_inputs(self, timeout: float | None = 30.0) -> RootInputs:
        """What the database root hash covers, as of one cut of the commit history: the
        catalog, the btree Merkle root and every archive table's (generation, rows,
        committed length, chain head). Read while the commit blocker is held exclusively
        (as a backup's validity point does: commits wait a moment; metadata only, one
        ``.ARM`` read per archive table, no data read). Raises LockedError (the blocker not
        obtained in ``timeout``), CorruptionError & co. (a damaged meta), StorageError."""
        self._check_open()
        for _attempt in range(10):
            # Opened outside the blocker: opening a writable table may run its recovery.
            handles = {t.name: self.archive(t.name) for t in self.tables()
                       if t.engine == ENGINE_ARCHIVE}
            with self.lockfile.commits_blocked(timeout):
                with self.store.begin_read() as txn:
                    entries = txn.catalog()
                    btree_root = txn.root_hash
                names = {e.name for e in entries if e.engine == ENGINE_ARCHIVE}
                if names != set(handles):
                    continue  # a table was created or dropped meanwhile: look again
                archive = []
                for name, handle in handles.items():
                    snap = handle.files.snapshot()
                    try:
                        m = snap.meta
                    finally:
                        snap.data.release()
                    archive.append(RootArchive(name, m.generation, m.row_count, m.data_length,
                                               m.chain_head))
            return RootInputs(tuple(RootTable(e.name, e.engine, e.table_id) for e in entries),
                              btree_root, tuple(archive))
        raise LockedError(f"database {self.path}: tables kept being created or dropped while "
                          "its root hash was read")

    def root_hash(self, timeout: float | None = 30.0) -> bytes:
        """The database root hash now (32 bytes; docs/format.md, "Root hash"): what a
        backup's validity point taken now would record. See :meth:`root_inputs` (raises
        the same)."""
        return self.root_inputs(timeout).digest()

    def stat(self) -> dict[str, Any]:
        """Database-wide statistics: identity, commit seq, root hash (hex), btree store,
        each table, and the durable pins of interrupted backups (``pins``: see
        :mod:`lamina.core.pins`; a damaged pin file is reported as ``pins_error``)."""
        self._check_open()
        ident = self.identity
        result: dict[str, Any] = {
            "path": str(self.path),
            "db_id": str(ident.db_id),
            "created_ns": ident.created_ns,
            "commit_seq": self.lockfile.commit_seq(),
            "root_hash": self.root_hash().hex(),
            "btree": self.store.stat(),
            "archive": {},
        }
        if ident.restored_from is not None:
            result["restored_from"] = {"image_id": str(ident.restored_from),
                                       "vp_seq": ident.restored_vp_seq,
                                       "vp_time_ns": ident.restored_vp_time_ns}
        for info in self.tables():
            if info.engine == ENGINE_ARCHIVE:
                result["archive"][info.name] = self.archive(info.name).stat()
        try:
            result["pins"] = [p.describe() for p in pins.load(self.path)]
        except DataError as exc:
            result["pins"], result["pins_error"] = [], str(exc)
        return result


def open(path: str | os.PathLike[str], create: bool = True, readonly: bool = False, *,
         page_size: int = 4096, sync: bool = True,
         lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Database:
    """Open (by default creating) the database in directory ``path``.

    ``page_size`` (a power of two, 1 KiB..64 KiB) applies only when the database is created.
    ``sync=False`` skips fsync on commit: a power loss may lose the last commits but never
    corrupts. ``lock_timeout`` bounds waits for the writer and table locks.
    ``readonly=True`` never creates: a missing ``path`` raises NotFoundError whatever
    ``create`` says. Raises NotFoundError (missing, and ``create=False`` or read-only),
    NotADatabaseError, VersionError, CorruptionError, StorageError.
    """
    return Database(Path(path), create=create, readonly=readonly, page_size=page_size,
                    sync=sync, lock_timeout=lock_timeout)


def open_staged(path: str | os.PathLike[str], identity: Identity) -> Database:
    """Open, writable, the database a restore built in directory ``path`` and has not
    published yet: its identity is ``identity`` (in memory; staged on disk only as
    ``LAMINA.pending``), not a ``LAMINA`` file, so the directory never looks like a
    database to anyone else. For restores proving what they built (see
    :mod:`lamina.core.publish`); raises what :func:`open` raises."""
    return Database(Path(path), create=False, readonly=False, page_size=4096, sync=True,
                    lock_timeout=DEFAULT_LOCK_TIMEOUT, staged=identity)
