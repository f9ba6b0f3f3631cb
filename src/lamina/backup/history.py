"""The backup history of a database (like MySQL's ``backup_history``): ``BACKUP_HISTORY``.

Every backup appends a record when it starts (state ``running``) and another when it ends
(``done``, ``error`` or ``cancelled``); the newest record of an id is its state. A backup
killed with SIGKILL never writes its end record, so it stays ``running`` on disk; readers
report it as ``killed`` once its process is gone (never as done).

File format (docs/format.md, "Backup history"): a 24-byte header (magic, version, checksum),
then records ``length u32, xxh3_64 u64, JSON payload``. A torn or damaged tail record (a
crash mid-append) is ignored; an intact record's fields this build does not know (a newer
writer's) are ignored, and the records after it are read all the same. Retention: when
the file holds more than :data:`COMPACT_AT` records it is rewritten atomically keeping the
newest :data:`KEEP` backups (each record as written), so it never grows without bound.
Appends and compaction hold the history lock (``LOCK`` byte 5), so concurrent backups in
several processes interleave safely.
"""

from __future__ import annotations

import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import xxhash

from lamina.core import fileio
from lamina.core.lockfile import LockFile
from lamina.errors import CorruptionError, NotADatabaseError, VersionError

FILE_NAME = "BACKUP_HISTORY"
MAGIC = b"LAMHIST\x00"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, xxh3_64 of the 16 bytes before
RECORD = struct.Struct("<IQ")     # payload length, xxh3_64 of the payload
MAX_RECORD = 1 << 20
#: Backups kept when the file is compacted, and the record count that triggers compaction.
KEEP = 1000
COMPACT_AT = 4 * KEEP
STATES = ("running", "done", "error", "cancelled")


@dataclass(frozen=True)
class HistoryEntry:
    """One backup: its id, timings (ns since the epoch), VP, outcome and size."""

    backup_id: str
    pid: int
    started_ns: int
    state: str = "running"
    kind: str = "full"
    target: str = ""
    vp_time_ns: int = 0
    vp_commit_seq: int = 0
    ended_ns: int = 0
    bytes: int = 0
    drivers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    blocker_held_ns: int = 0
    #: The id of the image a ``done`` backup wrote (the one ``backup``, ``info`` and
    #: ``list`` print); None before it is done, and in records of older builds.
    image_id: str | None = None

    def shown_state(self) -> str:
        """``running`` only while the backup's process lives; a dead one is ``killed``."""
        if self.state != "running":
            return self.state
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "killed"
        except PermissionError:
            return "running"
        return "running"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, with the state as shown."""
        out = asdict(self)
        out["state"] = self.shown_state()
        return out


def _header() -> bytes:
    head = struct.pack("<8sII", MAGIC, VERSION, 0)
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def _encode(entry: HistoryEntry) -> bytes:
    payload = json.dumps(asdict(entry), sort_keys=True).encode()
    return RECORD.pack(len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


_FIELDS = frozenset(f.name for f in fields(HistoryEntry))


def _decode(payload: bytes) -> HistoryEntry | None:
    """The entry of one intact record's payload, or None if this build cannot read it.
    Fields this build does not know (a newer writer's) are ignored."""
    try:
        record: Any = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("backup_id"), str) or \
            not isinstance(record.get("pid"), int) or \
            not isinstance(record.get("started_ns"), int):
        return None  # not an object, or a required field missing or mistyped
    try:
        return HistoryEntry(**{k: v for k, v in record.items() if k in _FIELDS})
    except TypeError:  # pragma: no cover - every other field has a default
        return None


def parse(data: bytes, path: object = FILE_NAME) -> list[HistoryEntry]:
    """Every intact record in file bytes ``data`` (a torn/damaged tail is dropped; an
    intact record with fields this build does not know is read without them, one it cannot
    read at all is skipped).

    Validates magic, then version, then the header checksum. Raises NotADatabaseError,
    VersionError, CorruptionError (damaged header) — nothing else.
    """
    return [entry for entry, _raw in _parse(data, path)[0]]


def _parse(data: bytes, path: object) -> tuple[list[tuple[HistoryEntry, bytes]], int]:
    """Records (each with its raw bytes, kept as written by compaction) and the length of
    the intact prefix of ``data``."""
    if len(data) < 8 or data[:8] != MAGIC:
        raise NotADatabaseError(f"{path} is not a Lamina backup history file")
    if len(data) < HEADER.size:
        raise CorruptionError("backup history header truncated", path=path)
    _magic, version, _reserved, checksum = HEADER.unpack_from(data)
    if version > VERSION:
        raise VersionError(f"{path} is backup history version {version}; "
                           f"this build knows up to {VERSION}")
    if checksum != xxhash.xxh3_64_intdigest(data[:16]):
        raise CorruptionError("backup history header checksum mismatch", path=path)
    entries: list[tuple[HistoryEntry, bytes]] = []
    offset = HEADER.size
    while offset + RECORD.size <= len(data):
        length, digest = RECORD.unpack_from(data, offset)
        start = offset + RECORD.size
        payload = data[start:start + length]
        if length > MAX_RECORD or len(payload) != length or \
                xxhash.xxh3_64_intdigest(payload) != digest:
            break  # a torn append: everything before it is intact
        # Intact, so part of the file whatever it holds: never a reason to stop reading (or
        # for the next append to truncate a newer writer's records).
        entry = _decode(payload)
        if entry is not None:
            entries.append((entry, data[offset:start + length]))
        offset = start + length
    return entries, offset


class BackupHistory:
    """The history file of the database in ``directory``; every method is process-safe."""

    def __init__(self, directory: Path, lockfile: LockFile, *, sync: bool = True) -> None:
        self.path = Path(directory) / FILE_NAME
        self._lockfile = lockfile
        self._sync = sync

    def _read_raw(self) -> tuple[list[tuple[HistoryEntry, bytes]], int]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        if not data:  # created, header never written (a crash right after creation)
            return [], 0
        return _parse(data, self.path)

    def records(self) -> list[HistoryEntry]:
        """Every record, oldest first (several per backup)."""
        with self._lockfile.history_lock.held(10.0):
            return [entry for entry, _raw in self._read_raw()[0]]

    def entries(self) -> list[HistoryEntry]:
        """The newest state of every backup, oldest backup first."""
        latest: dict[str, HistoryEntry] = {}
        for record in self.records():
            latest.pop(record.backup_id, None)  # keep insertion order by newest record
            latest[record.backup_id] = record
        return sorted(latest.values(), key=lambda e: e.started_ns)

    def append(self, entry: HistoryEntry) -> None:
        """Append one record durably (compacting first when the file is over its bound)."""
        with self._lockfile.history_lock.held(10.0):
            existing, end = self._read_raw()
            if len(existing) >= COMPACT_AT:
                self._compact(existing)
                existing, end = self._read_raw()
            fd = fileio.open_fd(self.path, os.O_WRONLY | os.O_CREAT)
            try:
                if end == 0:
                    fileio.pwrite(fd, _header(), 0, self.path)
                    end = HEADER.size
                fileio.truncate(fd, end, self.path)  # drop a torn tail before appending
                fileio.pwrite(fd, _encode(entry), end, self.path)
                if self._sync:
                    fileio.fsync(fd, self.path)
            finally:
                fileio.close_fd(fd, self.path)

    def _compact(self, records: list[tuple[HistoryEntry, bytes]]) -> None:
        # Each kept record is rewritten as it was written (with any field a newer writer
        # added that this build does not know).
        latest: dict[str, tuple[HistoryEntry, bytes]] = {}
        for record in records:
            latest[record[0].backup_id] = record
        kept = sorted(latest.values(), key=lambda r: r[0].started_ns)[-KEEP:]
        data = _header() + b"".join(raw for _entry, raw in kept)
        fileio.atomic_write_file(self.path, data, sync=self._sync)

    def start(self, kind: str, target: str) -> HistoryEntry:
        """Record a backup starting now in this process; returns the entry."""
        entry = HistoryEntry(str(uuid.uuid4()), os.getpid(), time.time_ns(), kind=kind,
                             target=target)
        self.append(entry)
        return entry

    def finish(self, entry: HistoryEntry, state: str, **fields: Any) -> HistoryEntry:
        """Record how ``entry`` ended (``done``/``error``/``cancelled``) with its facts
        (``HistoryEntry`` fields: a ``done`` backup's ``image_id``, its VP, bytes...)."""
        if state not in STATES[1:]:
            raise ValueError(f"bad final state {state!r}")
        final = replace(entry, state=state, ended_ns=time.time_ns(), **fields)
        self.append(final)
        return final

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self.entries())
