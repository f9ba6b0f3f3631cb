"""The files of one open archive table: where they are, the open ``.ARM``, and the data file
of the current generation.

:class:`TableFiles` is what every part of the engine that touches an open table works on:
:class:`~lamina.engines.archive.table.ArchiveTable` (reads), the
:class:`~lamina.engines.archive.writer.Appender` (commits), :mod:`recovery`, :mod:`optimize`
and :mod:`check`. It owns

* the paths: ``NAME.ARM``, ``NAME.ARZ`` and ``NAME.ARZ.new`` (an optimize in progress);
* the open meta file (:class:`~lamina.engines.archive.meta.ArmFile`);
* the current generation's :class:`~lamina.engines.archive.datafile.DataFile`, shared by
  every thread: :meth:`TableFiles.acquire_current` hands out a reference to the file now at
  ``NAME.ARZ`` (reopening it when an optimize replaced it), :meth:`TableFiles.install` makes
  a new generation current, and :meth:`TableFiles.snapshot` pairs the committed meta with
  the data file of its generation.

A replaced generation is only *retired*: its descriptor (which keeps the replaced inode
alive) is closed once the last reference is released.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lamina.core import fileio
from lamina.core.lockfile import ExclusiveLock, LockFile
from lamina.engines.archive.datafile import DataFile, meta_from_header
from lamina.engines.archive.fallback import ArmFallback, detect, save_damaged, slot_bytes
from lamina.engines.archive.format import arm_path, arz_new_path, arz_path
from lamina.engines.archive.meta import ArmFile, Meta, MetaRead
from lamina.errors import ClosedError, CorruptionError

log = logging.getLogger(__name__)

#: How often :meth:`TableFiles.snapshot` retries while publishes race its two reads.
_SNAPSHOT_ATTEMPTS = 20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A committed state and the data file holding it (a reference the caller releases)."""

    meta: Meta
    data: DataFile


class TableFiles:
    """The files of one open archive table (see the module doc).

    Thread-safe: any number of threads may read through one instance. Writes to the files
    (meta slots, blocks, a new generation) happen only under the table writer lock
    (:meth:`writer_lock`), which serializes writers across threads and processes. Every
    method raises :class:`ClosedError` after :meth:`close` (scans still running keep their
    data file open).
    """

    def __init__(self, directory: Path, name: str, table_id: int, lockfile: LockFile,
                 arm: ArmFile, *, readonly: bool, sync: bool) -> None:
        self.directory = Path(directory)
        self.name = name
        self.table_id = table_id
        self.lockfile = lockfile
        self.readonly = readonly
        self.sync = sync
        #: ``NAME.ARM``, ``NAME.ARZ`` and ``NAME.ARZ.new`` in ``directory``.
        self.arm_path = arm_path(self.directory, name)
        self.arz_path = arz_path(self.directory, name)
        self.new_path = arz_new_path(self.directory, name)
        self._arm: ArmFile | None = arm
        self._data: DataFile | None = None
        self._lock = threading.Lock()
        #: Set when this table was found reading the previous commit because its newest
        #: meta slot is invalid (see ``fallback.py``); reported by ``stat()``/``check()``.
        self.fallback: ArmFallback | None = None

    # ------------------------------------------------------------ fallback
    def note_fallback(self, read: MetaRead, *, warn: bool = True) -> None:
        """Remember (and, with ``warn``, log as one warning line) a fallback that ``read``
        shows, once. Call with ``read`` taken under the table writer lock (only then is an
        invalid slot not a meta write in flight)."""
        fb = detect(self.arm_path, read)
        if fb is not None and self.fallback is None:
            self.fallback = fb
            if warn:
                log.warning("%s", fb.describe())

    def save_damaged_slots(self, read: MetaRead) -> None:
        """Before a writer's first meta write: note a fallback and save every damaged
        slot's bytes aside (once; see ``fallback.save_damaged``). Under the table writer
        lock, writable tables only. Raises StorageError."""
        had = self.fallback is not None
        self.note_fallback(read, warn=False)
        fb = self.fallback
        for slot in read.damaged_slots:
            data = slot_bytes(read, slot)
            if not data:
                continue
            if fb is not None and fb.slot == slot:
                counter = fb.lost_counter
            else:
                counter = int.from_bytes(data[16:24], "little") if len(data) >= 24 else 0
            saved = save_damaged(self.arm_path, slot, counter, data)
            if fb is not None and fb.slot == slot:
                if fb.saved is None:
                    self.fallback = fb = dataclasses.replace(fb, saved=saved)
                    if not had:
                        log.warning("%s", fb.describe())
                    else:
                        log.warning("%s: saved damaged meta slot %d as %s before rewriting "
                                    "it", self.arm_path, slot, saved.name)
            else:
                log.warning("%s: meta slot %d was damaged (%s), no commit lost; saved as %s "
                            "and rewritten", self.arm_path, slot, read.states[slot],
                            saved.name)

    # ------------------------------------------------------------ meta
    def arm(self) -> ArmFile:
        """The open meta file; ClosedError once closed."""
        arm = self._arm
        if arm is None:
            raise ClosedError(f"archive table {self.name!r} is closed")
        return arm

    def read(self) -> MetaRead:
        """The committed meta now (one pread of both slots)."""
        return self.arm().read()

    def writer_lock(self) -> ExclusiveLock:
        """The table writer lock (not taken: the caller acquires and releases it)."""
        return self.lockfile.table_writer_lock(self.table_id, self.name)

    # ------------------------------------------------------------ data file
    def open_data(self) -> DataFile:
        """Open the data file now at ``NAME.ARZ`` (no reference taken). Raises
        CorruptionError (missing, or of another table), NotADatabaseError, VersionError."""
        try:
            data = DataFile.open(self.arz_path, self.name, writable=not self.readonly)
        except FileNotFoundError as exc:
            raise CorruptionError(f"archive table {self.name!r} has no data file",
                                  path=self.arz_path) from exc
        if data.header.table_id != self.table_id:
            data.retire()
            raise CorruptionError(f"data file has table id {data.header.table_id}, expected "
                                  f"{self.table_id}", path=self.arz_path, where="offset 0")
        return data

    def install(self, data: DataFile) -> None:
        """Make ``data`` the current generation's file; retire the previous one. After
        :meth:`close`, retires ``data`` and raises ClosedError."""
        with self._lock:
            if self._arm is None:
                data.retire()
                raise ClosedError(f"archive table {self.name!r} is closed")
            old, self._data = self._data, data
        if old is not None and old is not data:
            old.retire()

    def _install_new(self) -> DataFile:
        """Open ``NAME.ARZ``, take a reference and install it."""
        data = self.open_data()
        data.acquire()
        try:
            self.install(data)
        except BaseException:
            data.release()
            raise
        return data

    def acquire_current(self) -> DataFile:
        """The data file now at ``NAME.ARZ`` (reopened and installed if it was replaced),
        with a reference the caller must ``release()``: a reader thread may install a newer
        generation meanwhile and retire this one, which is closed only once unreferenced.
        Raises CorruptionError (no data file), StorageError."""
        try:
            st = fileio.stat(self.arz_path)
        except FileNotFoundError as exc:
            raise CorruptionError(f"archive table {self.name!r} has no data file",
                                  path=self.arz_path) from exc
        with self._lock:
            data = self._data
            if data is not None and data.identity == (st.st_dev, st.st_ino):
                data.acquire()  # under the lock: an install() cannot retire it first
                return data
        return self._install_new()

    def snapshot(self) -> Snapshot:
        """The committed state now and a referenced data file holding it.

        When an optimize renamed its new generation into place but has not yet rolled the
        meta forward (it is publishing right now, or crashed), the header's base state is
        the committed state. Raises CorruptionError when the generations never agree (a
        half-done optimize that only a writer's recovery can finish).
        """
        for attempt in range(_SNAPSHOT_ATTEMPTS):
            meta = self.read().meta
            with self._lock:
                data = self._data
                # Acquire under the lock so a concurrent install() cannot close it under us.
                if data is not None and data.header.generation in (meta.generation,
                                                                    meta.generation + 1):
                    data.acquire()
                else:
                    data = None
            if data is None:
                data = self._install_new()
            gen = data.header.generation
            if gen == meta.generation + 1:
                meta = meta_from_header(data.header, meta)
            elif gen != meta.generation:
                # Raced two publishes (or a crash left meta ahead of the rename): retry.
                data.release()
                time.sleep(0.001 * (attempt + 1))
                continue
            return Snapshot(meta, data)
        raise CorruptionError(f"archive table {self.name!r}: data file generation does not "
                              f"match the meta file (a half-done optimize? open the table "
                              f"for writing to recover)", path=self.arz_path)

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the meta file and retire the data file (idempotent)."""
        with self._lock:
            arm, self._arm = self._arm, None
            data, self._data = self._data, None
        if arm is not None:
            arm.close()
        if data is not None:
            data.retire()


__all__ = ["Snapshot", "TableFiles"]
