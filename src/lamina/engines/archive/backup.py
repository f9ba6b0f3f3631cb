"""Native online backup of archive tables: the MySQL 6.0 ARCHIVE driver ("at begin"), with
the four limitations its worklog lists fixed.

Classes, named after the seed's ``archive_backup`` namespace:

* :class:`ArchiveBackupEngine` (``Engine``) hands out the drivers;
* :class:`ArchiveBackupDriver` (``Backup``) and :class:`TableBackup` (``Table_backup``) send
  the tables; :class:`~lamina.engines.archive.restore_driver.ArchiveRestoreDriver`
  (``Restore``) and :class:`~lamina.engines.archive.restore_driver.TableRestore`
  (``Table_restore``) receive them; :class:`~lamina.engines.archive.table.ArchiveTable` is
  the seed's ``Table``.

Stream of table N (local stream N; stream 0 stays empty), docs/format.md, "Archive native
backup stream"::

    stream header (64)   T.ARM as of the VP (1,024)   T.ARZ bytes [0, VP position)

In a layer (``BackupFlags.layer``), a table whose data file generation and table id are the
ones of the base image's VP sends a *tail* instead (stream version 2, docs/format.md, "Layer
streams and chains"): the same header naming the base position B, the meta as of the VP,
then only ``T.ARZ`` bytes [B, VP position) — the blocks committed after the base VP. A table
created, re-created or optimized since the base (or absent from it) is sent whole.

How the seed's limitations are fixed:

1. *Data frozen at the VP.* Every block header carries the commit seq of the commit that
   wrote it and blocks are in seq order, so the table as of the VP commit seq V is derived
   after the fact: the generation current at V (``ArchiveTable.generation_files_at``), cut
   at the end of its last block with seq <= V. Its meta as of V (rows, next row id,
   committed length, block count, raw bytes, last commit seq) is recomputed from those
   block headers. Nothing appended after V is ever sent.
2. *``lock()`` does no disk I/O.* It records ``lockfile.commit_seq()`` (a read of shared
   memory) and nothing else: O(1) whatever the number of tables.
3. *Cancellation.* ``cancel()`` works in every state, never raises, closes every file and
   releases the lock-file slot; the restore driver's ``cancel()`` removes what it wrote.
4. *Meta of any size, buffers of any size.* A table's stream is one byte sequence cut at
   the kernel's buffer size, so the meta spans as many buffers as it needs (even 1-byte
   buffers work).

Why ``optimize`` cannot change what is sent: ``begin()`` marks its lock-file reader slot as a
*backup* slot (kind 1) before the VP exists. An ``optimize`` that publishes while such a slot
is live keeps the replaced generation as ``T.ARM.g<N>``/``T.ARZ.g<N>`` (the check runs
under the commit blocker), so the generation current at V stays readable until ``end()`` or
``cancel()`` releases the slot and removes retained files no other backup needs.

Concurrency: one driver is used by one thread (the kernel's). Writers and ``optimize`` in
any process go on during the whole backup; only ``lock()``/``unlock()`` run under the
commit blocker.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from lamina.core import fileio
from lamina.core.driver import (
    AtBeginDriver,
    BackupDriver,
    BackupEngine,
    BackupFlags,
    Buffer,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
)
from lamina.core.lockfile import LockFile, Slot
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.core.names import validate_table_name
from lamina.engines.archive import format as F
from lamina.engines.archive.block import decode_header
from lamina.engines.archive.datafile import FileHeader, read_header
from lamina.engines.archive.meta import Meta, encode_file, read_meta_file
from lamina.engines.archive.table import ArchiveTable, meta_from_header
from lamina.errors import (
    ChainError,
    CorruptionError,
    DriverChoiceError,
    LaminaError,
    NotFoundError,
    TableNotFoundError,
    UnsupportedError,
    UsageError,
    VersionError,
)

log = logging.getLogger("lamina.backup")

#: Driver name in the image catalog and version of the stream format it writes.
DRIVER_NAME = "archive"
DRIVER_VERSION = 1
ENGINE_ARCHIVE = "archive"

# ---------------------------------------------------------------- stream format
STREAM_MAGIC = b"LARSTRM\x00"
STREAM_VERSION = 1
#: Version of a *tail* stream (layers only): bytes 48..55 hold the base position.
TAIL_STREAM_VERSION = 2
#: Stream header body (checksummed): magic 8s, version u32, header size u32, meta length
#: u32, table id u32, VP commit seq u64, data length u64 (= the VP position), xxh3_64 of the
#: meta bytes u64, 8 bytes that are zero in version 1 and hold the base position (where the
#: tail starts, :data:`STREAM_BASE`) in version 2.
STREAM_HEADER_BODY = struct.Struct("<8sIIIIQQQ8x")
STREAM_BASE = struct.Struct("<Q")
STREAM_BASE_OFFSET = 48
STREAM_HEADER_CHECKSUM = struct.Struct("<Q")
STREAM_HEADER_SIZE = STREAM_HEADER_BODY.size + STREAM_HEADER_CHECKSUM.size  # 64
#: The meta travels as a whole ``.ARM`` file (both slots hold the VP state).
STREAM_META_SIZE = F.ARM_FILE_SIZE

#: Bytes read per pread while walking block headers to find the VP position.
_WALK_CHUNK = 64 * 1024
#: How often the generation lookup is retried while an optimize publish races it.
_RESOLVE_ATTEMPTS = 50


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The 64-byte header that opens every table stream. ``base_position`` is 0 for a whole
    stream (version 1) and the data file offset where a layer's tail starts (version 2)."""

    table_id: int
    vp_seq: int
    data_length: int
    meta_checksum: int
    meta_length: int = STREAM_META_SIZE
    base_position: int = 0

    @property
    def is_tail(self) -> bool:
        """True for a layer's tail stream (data from ``base_position`` on)."""
        return self.base_position != 0

    @property
    def data_start(self) -> int:
        """Data file offset of the first data byte the stream carries (0 or the base)."""
        return self.base_position

    def encode(self) -> bytes:
        """The 64 header bytes."""
        version = TAIL_STREAM_VERSION if self.base_position else STREAM_VERSION
        body = STREAM_HEADER_BODY.pack(STREAM_MAGIC, version, STREAM_HEADER_SIZE,
                                       self.meta_length, self.table_id, self.vp_seq,
                                       self.data_length, self.meta_checksum)
        body = body[:STREAM_BASE_OFFSET] + STREAM_BASE.pack(self.base_position)
        return body + STREAM_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))

    @classmethod
    def decode(cls, raw: bytes, table: str) -> StreamHeader:
        """Validate magic, then version, then checksum, then the fields.

        Raises CorruptionError (naming the table and stream offset 0) or VersionError (a
        stream written by a newer build).
        """
        where = f"archive stream of table {table!r}, offset 0"
        if len(raw) < STREAM_HEADER_SIZE:
            raise CorruptionError("archive stream header cut short", where=where)
        fields = STREAM_HEADER_BODY.unpack_from(raw)
        magic, version, size, meta_len, table_id, vp_seq, length, meta_sum = fields
        (base,) = STREAM_BASE.unpack_from(raw, STREAM_BASE_OFFSET)
        if magic != STREAM_MAGIC:
            raise CorruptionError("bad archive stream magic", where=where)
        if version > TAIL_STREAM_VERSION:
            raise VersionError(f"archive stream of table {table!r} is version {version}; this "
                               f"build reads up to {TAIL_STREAM_VERSION}")
        (checksum,) = STREAM_HEADER_CHECKSUM.unpack_from(raw, STREAM_HEADER_BODY.size)
        if checksum != xxhash.xxh3_64_intdigest(raw[:STREAM_HEADER_BODY.size]):
            raise CorruptionError("archive stream header checksum mismatch", where=where)
        if version < 1 or size != STREAM_HEADER_SIZE or meta_len != STREAM_META_SIZE:
            raise CorruptionError(f"archive stream header has a bad version, size or meta "
                                  f"length ({version}, {size}, {meta_len})", where=where)
        if version == STREAM_VERSION and base:
            raise CorruptionError("archive stream header reserved bytes are not zero",
                                  where=where)
        if length < F.ARZ_HEADER_SIZE:
            raise CorruptionError(f"archive stream data length {length} is shorter than a "
                                  f"data file header", where=where)
        if version == TAIL_STREAM_VERSION and not F.ARZ_HEADER_SIZE <= base <= length:
            raise CorruptionError(f"archive tail stream starts at {base}, outside "
                                  f"{F.ARZ_HEADER_SIZE}..{length}", where=where)
        return cls(table_id, vp_seq, length, meta_sum, meta_len, base)


def block_raw_bytes(codec_flags: int, row_count: int, raw_length: int) -> int:
    """Sum of the row lengths of a block (what the meta's raw bytes count) from its header:
    the raw payload minus the row separators (lines layout) or the u32 length table."""
    if codec_flags & F.BLOCK_FLAG_LINES:
        return raw_length - (row_count - 1)
    return raw_length - 4 * row_count


# ---------------------------------------------------------------- engine
class ArchiveBackupEngine(BackupEngine):
    """The archive engine's native backup engine (seed: ``Engine``).

    ``ArchiveBackupEngine(db.path, db.lockfile)`` backs up tables of that database;
    ``ArchiveBackupEngine(None, None)`` can only restore.
    """

    name = DRIVER_NAME
    version = DRIVER_VERSION

    def __init__(self, directory: str | os.PathLike[str] | None,
                 lockfile: LockFile | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self.lockfile = lockfile

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        """A driver for ``tables`` (archive tables of this database). Holds no resources.

        With ``flags.layer`` the driver sends tails for tables whose generation is the one
        in the base image's VP facts (``flags.base_vp_info``), whole streams for the others.
        Raises UsageError (no database to back up, or a table listed twice),
        InvalidNameError, DriverChoiceError (a table of another engine), ChainError (base
        facts that are not an archive driver's).
        """
        _check_specs(tables)
        if self.directory is None or self.lockfile is None:
            raise UsageError("this archive backup engine has no database to back up")
        base: Mapping[str, Any] | None = None
        if flags.layer:
            facts = flags.base_vp_info or {}
            base = facts.get("tables", {})
            if not isinstance(base, Mapping):
                raise ChainError("the base image's archive VP facts have no table map")
        return ArchiveBackupDriver(self.directory, self.lockfile, tables, base_tables=base)

    def get_restore(self, version: int, tables: Sequence[TableSpec],
                    flags: RestoreFlags) -> RestoreDriver:
        """A restore driver for streams of ``version`` into ``flags.destination`` (None:
        verify only). Raises VersionError (newer than ours), UnsupportedError (a version
        below 1), ChainError (a layer: restored only with its chain, by
        :mod:`lamina.online.chain`), InvalidNameError (a name that could leave the
        destination), DriverChoiceError, UsageError (a table listed twice)."""
        if version > self.version:
            raise VersionError(f"archive backup data version {version}; this build reads "
                               f"up to {self.version}")
        if version < 1:
            raise UnsupportedError(f"archive backup data version {version} does not exist")
        if flags.layer:
            raise ChainError("a layer image holds only what changed after its base: restore "
                             "it with its chain (lamina restore FULL LAYER... --to DEST)")
        _check_specs(tables)
        from lamina.engines.archive.restore_driver import ArchiveRestoreDriver

        return ArchiveRestoreDriver(tables, flags)


def _check_specs(tables: Sequence[TableSpec]) -> None:
    names: set[str] = set()
    for t in tables:
        validate_table_name(t.name)  # a name must never lead outside the directory
        if t.engine != ENGINE_ARCHIVE:
            raise DriverChoiceError(f"table {t.name!r} is a {t.engine} table; the archive "
                                    "driver handles archive tables only")
        if t.name in names:
            raise UsageError(f"archive table {t.name!r} is listed twice")
        names.add(t.name)


def _as_mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


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
                 base: Mapping[str, Any] | None = None) -> None:
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
        meta = read_meta_file(F.arm_path(self.directory, self.name)).meta
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
        fd, header, committed, arz = _open_vp_generation(self.directory, self.name, vp_seq)
        try:
            if committed.table_id != self.spec.table_id or header.table_id != committed.table_id:
                raise TableNotFoundError(
                    f"archive table {self.name!r} (id {self.spec.table_id}) not found at the "
                    f"validity point: its files hold table id {committed.table_id}")
            if committed.last_commit_seq <= vp_seq:
                meta = committed  # nothing committed to this generation after the VP
            else:
                meta = _cut_at(fd, arz, self.name, header, committed, vp_seq)
            meta = meta.replace(counter=1)
            arm = encode_file(meta)
            start = self._tail_start(meta)
            stream_header = StreamHeader(self.spec.table_id, vp_seq, meta.data_length,
                                         xxhash.xxh3_64_intdigest(arm), base_position=start)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.start = start
        self.state = VpState(meta, header, arz)
        self._head = stream_header.encode() + arm
        self._pos = 0
        self._total = len(self._head) + meta.data_length - start

    def _tail_start(self, meta: Meta) -> int:
        """Where a layer's tail starts: the base position if the base VP saw this very
        generation of this very table (append-only since then), else 0 (send it whole)."""
        base = self.base
        if not self.layer or base is None:
            return 0
        position = base.get("position")
        if (base.get("table_id") != self.spec.table_id
                or base.get("generation") != meta.generation
                or not isinstance(position, int) or isinstance(position, bool)
                or not F.ARZ_HEADER_SIZE <= position <= meta.data_length):
            return 0
        return position

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

    def facts(self) -> dict[str, int]:
        """VP facts of this table (empty before :meth:`prepare`)."""
        if self.state is None:
            return {}
        m = self.state.meta
        facts = {"rows": m.row_count, "position": m.data_length, "generation": m.generation,
                 "last_commit_seq": m.last_commit_seq, "table_id": self.spec.table_id}
        if self.layer:
            facts["base_position"] = self.start  # 0: sent whole
        return facts

    def close(self) -> None:
        """Close the data file (idempotent, never raises)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def _open_pair(arm: Path, arz: Path, name: str) -> tuple[int, FileHeader, Meta, int] | None:
    """Open one generation's data file: ``(fd, header, committed meta, meta generation)``.

    The meta is read *before* the data file is opened, so the data file's generation is the
    meta's, or one more when an optimize renamed its new file in place but has not yet
    rolled the meta forward (then the header's base state is that file's committed state).
    Returns None when a publish raced the two reads (retry).
    """
    meta = read_meta_file(arm).meta
    try:
        fd = fileio.open_fd(arz, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        header = read_header(fd, arz)
    except BaseException:
        os.close(fd)
        raise
    if header.generation == meta.generation:
        return fd, header, meta, meta.generation
    if header.generation == meta.generation + 1:
        return fd, header, meta_from_header(header, meta), meta.generation
    os.close(fd)
    return None


def _open_vp_generation(directory: Path, name: str, vp_seq: int,
                        ) -> tuple[int, FileHeader, Meta, Path]:
    """Open the data file of the generation current at ``vp_seq``:
    ``(fd, header, committed meta of that file, path)``.

    Raises NotFoundError (not retained), TableNotFoundError, CorruptionError & co.
    """
    for attempt in range(_RESOLVE_ATTEMPTS):
        arm, arz = ArchiveTable.generation_files_at(directory, name, vp_seq)
        try:
            got = _open_pair(arm, arz, name)
        except TableNotFoundError:
            if arm == F.arm_path(directory, name):
                raise  # the table itself is gone
            got = None  # a retained copy vanished under us: look again
        if got is not None:
            fd, header, committed, meta_gen = got
            if header.generation_commit_seq <= vp_seq:
                return fd, header, committed, arz
            # The data file is newer than the VP: an optimize renamed it in place and has
            # not written its meta yet (in flight, or it crashed there). It kept the
            # generation we need, because our backup slot was live.
            os.close(fd)
            kept_arm, kept_arz = F.retained_paths(directory, name, meta_gen)
            try:
                kept = _open_pair(kept_arm, kept_arz, name)
            except TableNotFoundError:
                kept = None
            if kept is not None:
                if kept[1].generation_commit_seq <= vp_seq:
                    return kept[0], kept[1], kept[2], kept_arz
                os.close(kept[0])
        time.sleep(0.001 * (attempt + 1))
    raise NotFoundError(f"archive table {name!r}: could not open the generation current at "
                        f"commit seq {vp_seq} (publishes kept racing, or it was not retained)")


def _cut_at(fd: int, path: Path, name: str, header: FileHeader, committed: Meta,
            vp_seq: int) -> Meta:
    """The meta of ``committed``'s generation as of ``vp_seq``: walk the block headers up to
    the committed length and stop at the first block committed after ``vp_seq``.

    Blocks are in commit seq order (a commit appends, optimize keeps row order and stamps
    a block with its rows' max seq), so the cut is a prefix. O(1) memory. Raises
    CorruptionError for a damaged header (naming table, offset and rows).
    """
    offset = F.ARZ_HEADER_SIZE
    end = committed.data_length
    expected = 1
    blocks = raw_bytes = 0
    last_seq = header.generation_commit_seq
    buf = b""
    buf_start = offset
    while offset < end:
        rel = offset - buf_start
        if rel + F.BLOCK_HEADER_SIZE > len(buf):
            buf_start, rel = offset, 0
            buf = fileio.pread(fd, max(_WALK_CHUNK, F.BLOCK_HEADER_SIZE), offset, path)
        h = decode_header(buf[rel:rel + F.BLOCK_HEADER_SIZE], offset, name, path, expected)
        if h.end > end:
            raise CorruptionError(f"block runs past the committed length {end}", path=path,
                                  where=h.where(name))
        if h.commit_seq > vp_seq:
            break
        blocks += 1
        raw_bytes += block_raw_bytes(h.flags, h.row_count, h.raw_length)
        last_seq = max(last_seq, h.commit_seq)
        expected = h.last_row_id + 1
        offset = h.end
    return committed.replace(row_count=expected - 1, next_row_id=expected, data_length=offset,
                             blocks=blocks, raw_bytes=raw_bytes, last_commit_seq=last_seq)


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

    Protocol: ``begin`` (slot of kind backup, tables probed) -> ``prelock`` READY ->
    ``lock`` (records the VP commit seq: memory only) -> ``unlock`` -> ``get_data`` ...
    (one table at a time, its stream N; DONE with the final buffer) -> ``vp_info`` ->
    ``end``. ``cancel()`` at any point. A failing call returns ERROR with ``error`` set
    (state ERROR); a call in the wrong state is a UsageError reported the same way.
    """

    label = "archive"

    kind = DriverKind.AT_BEGIN

    def __init__(self, directory: Path, lockfile: LockFile, tables: Sequence[TableSpec], *,
                 base_tables: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.lockfile = lockfile
        layer = base_tables is not None
        bases = base_tables or {}
        self.tables = [TableBackup(self.directory, spec, i + 1, layer=layer,
                                   base=_as_mapping(bases.get(spec.name)))
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
            self._slot = self.lockfile.acquire_slot()
            # Must be live before the VP: an optimize publishing after this keeps the
            # generation it replaces. The txnid is the current btree one, so the slot does
            # not hold back btree page reuse more than a reader starting now would.
            self._slot.set(self._pin_txnid(), SLOT_BACKUP)
            self.state = DriverState.WAITING
            for t in self.tables:
                t.probe()
            return Result.OK
        return self._guard(step)

    def _pin_txnid(self) -> int:
        """The last committed btree txnid (a shared-memory read), else the commit seq."""
        from lamina.engines.btree import format as btree_format

        try:
            return max(1, btree_format.Meta.decode(self.lockfile.btree_meta()).txnid)
        except LaminaError:  # no btree published (bare lock file): nothing to pin
            return max(1, self.lockfile.commit_seq())

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

    def vp_info(self) -> Mapping[str, Any]:
        """``{"vp_seq": V, "tables": {name: {"rows", "position", "generation",
        "last_commit_seq", "table_id"}}}`` for every table sent."""
        return {"vp_seq": self.vp_seq,
                "tables": {t.name: t.facts() for t in self.tables if t.state is not None}}

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
                ArchiveTable.cleanup_generations(self.directory, t.name, self.lockfile)
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
            total += STREAM_HEADER_SIZE + STREAM_META_SIZE + length
        return total


__all__ = [
    "DRIVER_NAME",
    "DRIVER_VERSION",
    "STREAM_HEADER_SIZE",
    "STREAM_MAGIC",
    "STREAM_META_SIZE",
    "STREAM_VERSION",
    "TAIL_STREAM_VERSION",
    "ArchiveBackupDriver",
    "ArchiveBackupEngine",
    "DriverState",
    "StreamHeader",
    "TableBackup",
    "VpState",
    "block_raw_bytes",
]
