"""Native online backup of archive tables: the MySQL 6.0 ARCHIVE driver ("at begin"), with
the four limitations its worklog lists fixed.

Classes, named after the seed's ``archive_backup`` namespace:

* :class:`~lamina.engines.archive.engine.ArchiveBackupEngine` (``Engine``) hands out the
  drivers;
* :class:`ArchiveBackupDriver` (``Backup``) and :class:`TableBackup` (``Table_backup``) send
  the tables; :class:`~lamina.engines.archive.restore_driver.ArchiveRestoreDriver`
  (``Restore``) and :class:`~lamina.engines.archive.restore_driver.TableRestore`
  (``Table_restore``) receive them; :class:`~lamina.engines.archive.table.ArchiveTable` is
  the seed's ``Table``.

Each table goes out as one stream (:mod:`~lamina.engines.archive.stream`): header, the
``.ARM`` as of the VP, then ``T.ARZ`` bytes [0, VP position). In a layer
(``BackupFlags.layer``), a table whose data file generation and table id are the ones of the
base image's VP facts (:class:`~lamina.engines.archive.facts.ArchiveVpFacts`) sends a
*tail* instead: the same header naming the base position B, the meta as of the VP, then only
``T.ARZ`` bytes [B, VP position) — the blocks committed after the base VP. A table created,
re-created or optimized since the base (or absent from it) is sent whole.

How the seed's limitations are fixed:

1. *Data frozen at the VP.* The table as of the VP commit seq V is derived after the fact
   (:mod:`~lamina.engines.archive.vpcut`): the generation current at V, cut at the end of its
   last block with seq <= V, its meta as of V recomputed from those block headers. Nothing
   appended after V is ever sent.
2. *``lock()`` does no disk I/O.* It records ``lockfile.commit_seq()`` (a read of shared
   memory) and nothing else: O(1) whatever the number of tables.
3. *Cancellation.* ``cancel()`` works in every state, never raises, closes every file and
   releases the lock-file slot; the restore driver's ``cancel()`` removes what it wrote.
4. *Meta of any size, buffers of any size.* A table's stream is one byte sequence cut at
   the kernel's buffer size, so the meta spans as many buffers as it needs (even 1-byte
   buffers work).

Why ``optimize`` cannot change what is sent: ``begin()`` takes a lock-file reader slot of
kind *backup* (:func:`~lamina.engines.archive.generations.take_backup_slot`) before the VP
exists. An ``optimize`` that publishes while such a slot is live keeps the replaced
generation as ``T.ARM.g<N>``/``T.ARZ.g<N>`` (the check runs under the commit blocker), so
the generation current at V stays readable until ``end()`` or ``cancel()`` releases the slot
and removes retained files no other backup needs.

Concurrency: one driver is used by one thread (the kernel's). Writers and ``optimize`` in
any process go on during the whole backup; only ``lock()``/``unlock()`` run under the
commit blocker.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from lamina.core import fileio
from lamina.core.driver import AtBeginDriver, Buffer, DriverKind, Result, TableSpec
from lamina.core.lockfile import LockFile, Slot
from lamina.engines.archive import generations, vpcut
from lamina.engines.archive.datafile import FileHeader
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.format import ARZ_HEADER_SIZE, arm_path
from lamina.engines.archive.meta import Meta, encode_file, read_meta_file
from lamina.engines.archive.stream import STREAM_HEAD_SIZE, StreamHeader
from lamina.errors import (
    CorruptionError,
    LaminaError,
    StorageError,
    TableNotFoundError,
    UsageError,
)

log = logging.getLogger("lamina.backup")


# ---------------------------------------------------------------- one table
@dataclass(frozen=True, slots=True)
class VpState:
    """One table as of the VP: its meta, and the data file generation it is cut from."""

    meta: Meta
    header: FileHeader
    arz_path: Path

    @property
    def position(self) -> int:
        """The VP position: bytes of the data file that belong to the VP state."""
        return self.meta.data_length


class TableBackup:
    """The backup of one table (seed: ``Table_backup``): derives its state as of the VP
    and hands out the bytes of its stream.

    Not thread-safe (used by its driver's thread). Holds one descriptor between
    :meth:`prepare` and :meth:`close`.

    ``layer`` (a layer backup) with ``base`` (this table's facts in the base image's VP, or
    None if the base lacks it): send a tail from the base position when the table is still
    the same generation of the same table, else the whole table.
    """

    def __init__(self, directory: Path, spec: TableSpec, stream: int, *, layer: bool = False,
                 base: ArchiveTableFacts | None = None) -> None:
        self.directory = directory
        self.spec = spec
        self.stream = stream
        self.layer = layer
        self.base = base
        #: Data file offset the stream's data starts at (0 whole; the base position: tail).
        self.start = 0
        #: Committed data length seen at ``begin()`` (for ``size()``).
        self.estimate = 0
        self.state: VpState | None = None
        self._head = b""
        self._fd = -1
        self._pos = 0
        self._total = 0

    @property
    def name(self) -> str:
        """The table's name."""
        return self.spec.name

    def probe(self) -> None:
        """Check the table exists with the expected id and note its size. Disk I/O.

        Raises TableNotFoundError, CorruptionError & co. (from the meta file).
        """
        meta = read_meta_file(arm_path(self.directory, self.name)).meta
        if meta.table_id != self.spec.table_id:
            raise TableNotFoundError(f"archive table {self.name!r} (id {self.spec.table_id}) "
                                     f"not found: its files hold table id {meta.table_id}")
        self.estimate = meta.data_length

    def prepare(self, vp_seq: int) -> None:
        """Find the generation current at ``vp_seq``, derive the VP meta, open the data file.

        Raises NotFoundError (the generation was not retained: no backup slot was live),
        TableNotFoundError (dropped), CorruptionError (a damaged block header below the VP
        position), StorageError.
        """
        fd, header, committed, arz = vpcut.open_vp_generation(self.directory, self.name,
                                                              vp_seq)
        try:
            if committed.table_id != self.spec.table_id or header.table_id != committed.table_id:
                raise TableNotFoundError(
                    f"archive table {self.name!r} (id {self.spec.table_id}) not found at the "
                    f"validity point: its files hold table id {committed.table_id}")
            if committed.last_commit_seq <= vp_seq:
                meta = committed  # nothing committed to this generation after the VP
            else:
                meta = vpcut.cut_at(fd, arz, self.name, header, committed, vp_seq,
                                    chain_from=self._chain_from(committed))
            meta = meta.replace(counter=1)
            arm = encode_file(meta)
            start = self._tail_start(meta)
            stream_header = StreamHeader(self.spec.table_id, vp_seq, meta.data_length,
                                         xxhash.xxh3_64_intdigest(arm), base_position=start)
        except BaseException:
            with suppress(StorageError):
                fileio.close_fd(fd, arz)
            raise
        self._fd = fd
        self.start = start
        self.state = VpState(meta, header, arz)
        self._head = stream_header.encode() + arm
        self._pos = 0
        self._total = len(self._head) + meta.data_length - start

    def _chain_from(self, committed: Meta) -> tuple[int, bytes] | None:
        """Where a VP cut may start hashing its block chain: the base image's position and
        chain head when the base saw this very generation of this very table (a layer
        then reads only its tail), else None (from the generation's first block)."""
        base = self.base
        if (not self.layer or base is None or base.table_id != self.spec.table_id
                or base.generation != committed.generation
                or not ARZ_HEADER_SIZE <= base.position <= committed.data_length):
            return None
        return base.position, base.chain_head

    def _tail_start(self, meta: Meta) -> int:
        """Where a layer's tail starts: the base position if the base VP saw this very
        generation of this very table (append-only since then), else 0 (send it whole)."""
        base = self.base
        if not self.layer or base is None:
            return 0
        if (base.table_id != self.spec.table_id or base.generation != meta.generation
                or not ARZ_HEADER_SIZE <= base.position <= meta.data_length):
            return 0
        return base.position

    def fill(self, capacity: int) -> tuple[bytes, bool]:
        """The next up to ``capacity`` bytes of the stream and whether they are its end.

        Raises CorruptionError if the data file is shorter than its committed length,
        StorageError.
        """
        if self.state is None:
            raise UsageError(f"archive table {self.name!r}: fill() before prepare()")
        want = min(capacity, self._total - self._pos)
        out = bytearray()
        head_len = len(self._head)
        if self._pos < head_len:  # the meta part; may span many buffers
            piece = self._head[self._pos:self._pos + want]
            out += piece
            self._pos += len(piece)
        while len(out) < want:
            offset = self._pos - head_len + self.start
            got = fileio.pread(self._fd, want - len(out), offset, self.state.arz_path)
            if not got:
                raise CorruptionError(f"data file ends at {offset}, before the validity "
                                      f"point position {self.state.position}",
                                      path=self.state.arz_path)
            out += got
            self._pos += len(got)
        return bytes(out), self._pos >= self._total

    def facts(self) -> ArchiveTableFacts | None:
        """VP facts of this table (None before :meth:`prepare`); ``base_position`` (0: sent
        whole) only in a layer."""
        if self.state is None:
            return None
        m = self.state.meta
        return ArchiveTableFacts(table_id=self.spec.table_id, rows=m.row_count,
                                 position=m.data_length, generation=m.generation,
                                 last_commit_seq=m.last_commit_seq, chain_head=m.chain_head,
                                 base_position=self.start if self.layer else None)

    def close(self) -> None:
        """Close the data file (idempotent, never raises)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with suppress(StorageError):
                fileio.close_fd(fd, None if self.state is None else self.state.arz_path)


# ---------------------------------------------------------------- driver
class DriverState(enum.Enum):
    """The seed's driver states."""

    #: Created, ``begin()`` not yet called.
    START = "start"
    #: After ``begin()``: waiting for the VP (``lock()``); no data is transferred.
    WAITING = "waiting"
    #: After the VP: tables' data is being sent by ``get_data()``.
    DUMPING = "dumping"
    #: Every table was sent (``end()`` keeps this state).
    DONE = "done"
    #: A call failed, or the backup was cancelled before it was DONE.
    ERROR = "error"


class ArchiveBackupDriver(AtBeginDriver):
    """Sends archive tables as of the VP (seed: ``Backup``), kind "at begin".

    ``layer`` asks for a layer; ``base`` is the base image's VP facts of this driver (None
    when the base has no archive data: every table is sent whole).

    Protocol: ``begin`` (slot of kind backup, tables probed) -> ``prelock`` READY ->
    ``lock`` (records the VP commit seq: memory only) -> ``unlock`` -> ``get_data`` ...
    (one table at a time, its stream N; DONE with the final buffer) -> ``vp_info`` ->
    ``end``. ``cancel()`` at any point. A failing call returns ERROR with ``error`` set
    (state ERROR); a call in the wrong state is a UsageError reported the same way.
    """

    label = "archive"

    kind = DriverKind.AT_BEGIN

    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec], *,
                 layer: bool = False, base: ArchiveVpFacts | None = None) -> None:
        self.directory = Path(directory)
        self.lockfile = lockfile
        bases: Mapping[str, ArchiveTableFacts] = {} if base is None else base.tables
        self.tables = [TableBackup(self.directory, spec, i + 1, layer=layer,
                                   base=bases.get(spec.name))
                       for i, spec in enumerate(tables)]
        self.state = DriverState.START
        #: The VP commit seq recorded by ``lock()`` (None before).
        self.vp_seq: int | None = None
        self.buf_size = 0
        self._slot: Slot | None = None
        self._current = 0
        self._released = False

    # ---------------------------------------------------------------- introspection
    @property
    def slot_index(self) -> int | None:
        """The lock-file slot this driver owns, or None (not begun, or released)."""
        return None if self._slot is None else self._slot.index

    def _guard(self, fn: Callable[[], Result]) -> Result:
        """Run a protocol step; a LaminaError becomes ERROR with ``error`` set."""
        try:
            return fn()
        except LaminaError as exc:
            self.state = DriverState.ERROR
            self.error = exc
            return Result.ERROR

    def _expect(self, call: str, *states: DriverState) -> None:
        if self.state not in states:
            raise UsageError(f"archive backup driver: {call}() in state {self.state.name}")

    # ---------------------------------------------------------------- protocol
    def begin(self, buf_size: int) -> Result:
        """Take a lock-file slot and mark it *backup* (so optimize retains generations
        from now on), then check every table exists. Disk I/O: one meta read per table.

        Returns OK, or ERROR (LockedError: every slot in use; TableNotFoundError; damage).
        """
        def step() -> Result:
            self._expect("begin", DriverState.START)
            if buf_size < 1:
                raise UsageError(f"buffer size must be positive, not {buf_size}")
            self.buf_size = buf_size
            # Must be live before the VP: an optimize publishing after this keeps the
            # generation it replaces.
            self._slot = generations.take_backup_slot(self.lockfile)
            self.state = DriverState.WAITING
            for t in self.tables:
                t.probe()
            return Result.OK
        return self._guard(step)

    def prelock(self) -> Result:
        """Nothing to prepare (the VP is cut after the fact): READY."""
        def step() -> Result:
            self._expect("prelock", DriverState.WAITING)
            return Result.READY
        return self._guard(step)

    def lock(self) -> Result:
        """Record the VP: the last commit seq handed out. A read of the lock file's shared
        memory; no file I/O, O(1) whatever the number of tables. The kernel holds the commit
        blocker exclusively, so no commit publishes between this and its own VP read."""
        if self.state is not DriverState.WAITING or self.vp_seq is not None:
            self.error = UsageError(f"archive backup driver: lock() in state "
                                    f"{self.state.name}")
            self.state = DriverState.ERROR
            return Result.ERROR
        self.vp_seq = self.lockfile.commit_seq()
        return Result.OK

    def pin_facts(self) -> dict[str, Any] | None:
        """The VP commit seq: each table's VP state is derived from it after the fact (the
        data is append-only; a durable pin retains generations ``optimize`` replaces).
        None before ``lock()``."""
        return None if self.vp_seq is None else {"vp_seq": self.vp_seq}

    def relock(self, facts: Mapping[str, Any]) -> Result:
        """Freeze the VP of an interrupted backup: its commit seq. Memory only; ERROR with
        CorruptionError for facts without a valid seq, UsageError in a wrong state."""
        seq = facts.get("vp_seq") if isinstance(facts, Mapping) else None
        if self.state is not DriverState.WAITING or self.vp_seq is not None:
            self.error = UsageError(f"archive backup driver: relock() in state "
                                    f"{self.state.name}")
        elif not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= \
                self.lockfile.commit_seq():
            self.error = CorruptionError(f"pinned archive VP commit seq {seq!r} is not one "
                                         "of this database's")
        else:
            self.vp_seq = seq
            return Result.OK
        self.state = DriverState.ERROR
        return Result.ERROR

    def unlock(self) -> Result:
        """Nothing to undo: OK (no I/O)."""
        if self.vp_seq is None:
            self.error = UsageError("archive backup driver: unlock() before lock()")
            self.state = DriverState.ERROR
            return Result.ERROR
        return Result.OK

    def get_data(self, buffer: Buffer) -> Result:
        """Fill ``buffer`` with the next bytes of the current table's stream.

        Tables go one at a time in order; a table's final buffer has ``last`` set. Returns
        OK, DONE (with the final buffer of the last table), or ERROR (NotFoundError: the
        generation current at the VP was not retained; CorruptionError; StorageError).
        """
        def step() -> Result:
            if self.state is DriverState.WAITING and self.vp_seq is not None:
                self.state = DriverState.DUMPING
            self._expect("get_data", DriverState.DUMPING)
            assert self.vp_seq is not None
            capacity = min(buffer.capacity, self.buf_size or buffer.capacity)
            while self._current < len(self.tables):
                table = self.tables[self._current]
                if table.state is None:
                    table.prepare(self.vp_seq)
                data, finished = table.fill(capacity)
                buffer.stream = table.stream
                buffer.data = data
                if not finished:
                    return Result.OK
                buffer.last = True
                table.close()
                self._current += 1
                if self._current < len(self.tables):
                    return Result.OK
                break
            self.state = DriverState.DONE
            return Result.DONE
        result = self._guard(step)
        if result is Result.ERROR:
            buffer.data, buffer.last = b"", False
        return result

    def vp_info(self) -> ArchiveVpFacts:
        """The VP commit seq and the facts of every table sent (rows, position, generation,
        last commit seq, table id; the base position in a layer). Memory only. Raises
        UsageError before ``lock()`` recorded the VP."""
        if self.vp_seq is None:
            raise UsageError("archive backup driver: vp_info() before lock()")
        tables: dict[str, ArchiveTableFacts] = {}
        for t in self.tables:
            facts = t.facts()
            if facts is not None:
                tables[t.name] = facts
        return ArchiveVpFacts(self.vp_seq, tables)

    def _release(self) -> None:
        """Close files, release the slot, then drop retained generations no backup needs."""
        for t in self.tables:
            t.close()
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.release()
        if self._released:
            return
        self._released = True
        for t in self.tables:
            try:
                # No-op while any backup slot is live; the last backup (or the next
                # optimize / writable open of the table) removes the files then.
                generations.cleanup(self.directory, t.name, self.lockfile)
            except (LaminaError, OSError) as exc:
                log.warning("archive backup: could not remove retained generations of "
                            "%r: %s", t.name, exc)

    def end(self) -> Result:
        """Finish after DONE: release the slot and files, clean up retained generations.
        Returns OK, or ERROR (UsageError) if the backup did not reach DONE."""
        def step() -> Result:
            self._expect("end", DriverState.DONE)
            self._release()
            return Result.OK
        return self._guard(step)

    def cancel(self) -> Result:
        """Abandon the backup in any state: close files, release the slot, clean up
        retained generations. Never raises; ERROR only if releasing failed."""
        if self.state is not DriverState.DONE:
            self.state = DriverState.ERROR
        return super().cancel()

    def size(self) -> int:
        """Estimated stream bytes: per table, header + meta + its data length (the VP
        position once known, else the committed length seen by ``begin()``). O(tables),
        no I/O."""
        total = 0
        for t in self.tables:
            length = t.state.position - t.start if t.state is not None else t.estimate
            total += STREAM_HEAD_SIZE + length
        return total


__all__ = ["ArchiveBackupDriver", "DriverState", "TableBackup", "VpState"]
