"""Logical backup streams: what the generic (consistent-snapshot and default) drivers send,
and the small protocols through which they read and rebuild tables of any engine.

The backup layer must not import engines. So an engine that wants its tables backed up
logically implements :class:`LogicalProvider` (readers of a set of its tables) and, for
restores, a :class:`LogicalSink` writes rows back through the engine; :mod:`lamina.online`
wires them to :mod:`lamina.backup.snapshot_driver` and :mod:`lamina.backup.default_driver`.
Both drivers record :class:`LogicalVpFacts` (per table: rows, bytes, table id, engine and
content digest; per engine: the source's own facts), which the restore driver checks its
row counts and digests against.

Table stream (local stream N = the N-th table; the common stream stays empty), specified in
docs/format.md, "Logical backup streams"::

    header (32)   info JSON (L bytes)   (record* run-check)*   trailer (32)

* header: magic ``LLGSTRM\\0``, version u32, info length L u32, table id u32, zero u32,
  ``xxh3_64`` of header bytes 0..23 followed by the info bytes;
* info: UTF-8 JSON object with what the engine needs to recreate the table (e.g. an archive
  table's codec, level and block target), sorted keys;
* record: key length u32 (< 2^31), value length u32, key, value. Btree: key and value in
  key order. Archive: key = row id as u64 big-endian, value = the row, in row id order;
* run check (16 bytes), after every run of records of at least :data:`RUN_BYTES` bytes and
  after the last run: marker u32 ``0xFFFFFFFE``, zero u32, ``xxh3_64`` of the run's record
  bytes. A record is never accepted before the check that closes its run;
* trailer: marker u32 ``0xFFFFFFFF``, zero u32, record count u64, key+value bytes u64,
  ``xxh3_64`` of trailer bytes 0..23.

The table's *content digest* is BLAKE2b-256 over every record's bytes in stream order (not
the run checks); the driver records it in its VP facts, so a stream whose records were
changed and whose run checks and chunk checksums were recomputed still differs from the
manifest (which the restore recomputes it against).

Concurrency: one driver is used by one thread; sources may be read while writers go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash

from lamina.core.driver import (
    AtBeginDriver,
    BackupEngine,
    Buffer,
    DriverKind,
    DriverProtocolError,
    FactReader,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
    VpFacts,
)
from lamina.errors import (
    CorruptionError,
    DriverChoiceError,
    LaminaError,
    UsageError,
    VersionError,
    storage_error,
)

log = logging.getLogger("lamina.backup")

STREAM_MAGIC = b"LLGSTRM\x00"
#: Version of the logical stream (= the snapshot and default engines' ``version``). Version
#: 2 added the run checks and the content digest; version 1 is refused (an older format).
STREAM_VERSION = 2
HEADER = struct.Struct("<8sIIII")       # magic, version, info length, table id, zero
HEADER_CHECK = struct.Struct("<Q")
HEADER_SIZE = HEADER.size + HEADER_CHECK.size  # 32
RECORD = struct.Struct("<II")           # key length, value length
TRAILER = struct.Struct("<IIQQ")        # marker, zero, records, bytes
TRAILER_CHECK = struct.Struct("<Q")
TRAILER_SIZE = TRAILER.size + TRAILER_CHECK.size  # 32
TRAILER_MARKER = 0xFFFFFFFF
RUN_MARKER = 0xFFFFFFFE
RUN_CHECK = struct.Struct("<IIQ")       # marker, zero, xxh3_64 of the run's records
#: A run check follows every run of records once it holds this many bytes.
RUN_BYTES = 64 * 1024
#: Bytes of a table's content digest (BLAKE2b-256).
DIGEST_SIZE = 32
MAX_INFO = 1 << 16
MAX_KEY = (1 << 31) - 1
MAX_VALUE = 1 << 30

#: A logical row: (key, value). Archive rows are (row id u64 big-endian, row).
Row = tuple[bytes, bytes]


# ====================================================================== protocols
class LogicalSource(Protocol):
    """An engine's logical reader of some of its tables, for one backup.

    Call order: ``begin()`` (resources; disk I/O allowed) -> [the default driver:
    ``try_lock``/``unlock`` per table] -> ``pin()`` (inside the driver's ``lock()``) ->
    ``rows``/``table_info`` per table -> ``close()``. Used from one thread.
    """

    def begin(self) -> None:
        """Acquire what the backup needs (e.g. a reader slot); note size estimates.
        Raises LaminaError (LockedError, TableNotFoundError, ...)."""
        ...

    def pin(self) -> None:
        """Freeze the VP (called with the commit blocker held): memory only, O(1) per
        table, no disk I/O, never waits. A source reading under table locks does nothing."""
        ...

    def try_lock(self, spec: TableSpec) -> bool:
        """Try once, without waiting, to make ``spec``'s writers wait (exclusive backup
        lock); True once held. Only the default driver calls it."""
        ...

    def unlock(self, spec: TableSpec) -> None:
        """Release ``spec``'s lock if held (idempotent)."""
        ...

    def table_info(self, spec: TableSpec) -> dict[str, Any]:
        """JSON-ready facts needed to recreate the table (after ``pin``; may do I/O)."""
        ...

    def rows(self, spec: TableSpec) -> Iterator[Row]:
        """The table's rows in key (row id) order as of the VP: from the pinned snapshot,
        or the committed state while the caller holds the table's lock."""
        ...

    def estimate(self, spec: TableSpec) -> tuple[int, int] | None:
        """(rows, bytes) expected for the table, noted by ``begin()``; O(1), no I/O."""
        ...

    def facts(self) -> dict[str, Any]:
        """JSON-ready facts about the source, recorded in the driver's VP facts as
        ``LogicalVpFacts.sources[engine]`` (e.g. the btree page size)."""
        ...

    def close(self) -> None:
        """Release everything (slot, locks, files). Idempotent, never raises."""
        ...


class LogicalProvider(Protocol):
    """What an engine offers the generic drivers for its tables."""

    def snapshot_source(self, tables: Sequence[TableSpec]) -> LogicalSource:
        """A source reading ``tables`` from an MVCC snapshot pinned at the VP. Raises
        DriverChoiceError if the engine cannot provide one."""
        ...

    def locking_source(self, tables: Sequence[TableSpec]) -> LogicalSource:
        """A source reading ``tables`` under table locks that make their writers wait.
        Raises DriverChoiceError if the engine cannot provide one."""
        ...


class LogicalSink(Protocol):
    """Rebuilds tables in a restore destination through their engine."""

    def load(self, spec: TableSpec, info: Mapping[str, Any], rows: Iterator[Row]) -> int:
        """Create ``spec`` (same name and table id; replacing a copy another driver already
        restored) and load ``rows``; returns the number of rows loaded."""
        ...

    def close(self) -> None:
        """Make everything durable and close (called once, also after a failure)."""
        ...


# ====================================================================== VP facts
@dataclass(frozen=True, slots=True)
class LogicalTableFacts:
    """What a logical driver sent of one table: rows, key+value bytes, table id, engine,
    content digest (BLAKE2b-256 of its records, see the module doc)."""

    rows: int
    nbytes: int
    table_id: int
    engine: str
    digest: bytes

    def to_json(self) -> dict[str, Any]:
        """``{"rows", "bytes", "table_id", "engine", "digest"}`` (digest in hex)."""
        return {"rows": self.rows, "bytes": self.nbytes, "table_id": self.table_id,
                "engine": self.engine, "digest": self.digest.hex()}

    @classmethod
    def from_json(cls, facts: FactReader) -> LogicalTableFacts:
        """Decode one table's facts; CorruptionError if one is missing or mistyped."""
        return cls(facts.integer("rows"), facts.integer("bytes"), facts.integer("table_id"),
                   facts.text("engine"), facts.digest("digest", DIGEST_SIZE))


@dataclass(frozen=True, slots=True)
class LogicalVpFacts(VpFacts):
    """The VP facts of the snapshot and default drivers.

    ``tables``: every table sent, by name. ``sources``: each engine's source facts
    (:meth:`LogicalSource.facts`, opaque here; e.g. the btree page size, which a restore
    uses as the default page size). JSON: ``{"tables": {name: {"rows", "bytes",
    "table_id", "engine", "digest"}}, "sources": {engine: {...}}}``.
    """

    tables: Mapping[str, LogicalTableFacts]
    sources: Mapping[str, Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in the image manifest."""
        return {"tables": {name: t.to_json() for name, t in self.tables.items()},
                "sources": {engine: dict(f) for engine, f in self.sources.items()}}

    @classmethod
    def from_json(cls, data: object, where: str) -> LogicalVpFacts:
        """Decode the manifest's JSON form; CorruptionError naming ``where`` if a fact is
        missing or mistyped."""
        facts = FactReader(data, where)
        return cls({name: LogicalTableFacts.from_json(t)
                    for name, t in facts.mapping("tables").entries()},
                   {engine: dict(f.data) for engine, f in facts.mapping("sources").entries()})


class LogicalBackupEngine(BackupEngine):
    """Base of the snapshot and default backup engines: their drivers record
    :class:`LogicalVpFacts`."""

    def decode_vp_facts(self, data: object, where: str) -> LogicalVpFacts:
        """:meth:`LogicalVpFacts.from_json` (CorruptionError naming ``where``)."""
        return LogicalVpFacts.from_json(data, where)


#: ``sink_factory(destination, vp_facts)``: a sink writing into the restore destination;
#: ``vp_facts`` are the logical driver's (their ``sources`` describe the backed-up engines).
SinkFactory = Callable[[Path, LogicalVpFacts], LogicalSink]


# ====================================================================== encoding
def encode_header(table_id: int, info: Mapping[str, Any]) -> bytes:
    """The stream header and info bytes."""
    raw = json.dumps(dict(info), sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > MAX_INFO:
        raise UsageError(f"logical stream info too large ({len(raw)} bytes)")
    head = HEADER.pack(STREAM_MAGIC, STREAM_VERSION, len(raw), table_id, 0)
    return head + HEADER_CHECK.pack(xxhash.xxh3_64_intdigest(head + raw)) + raw


def content_hasher() -> Any:
    """A fresh content-digest hasher (BLAKE2b-256; feed it every record's bytes)."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def encode_run_check(run_hash: int) -> bytes:
    """The 16 bytes closing a run whose records' ``xxh3_64`` is ``run_hash``."""
    return RUN_CHECK.pack(RUN_MARKER, 0, run_hash)


def encode_trailer(records: int, nbytes: int) -> bytes:
    """The 32 trailer bytes."""
    body = TRAILER.pack(TRAILER_MARKER, 0, records, nbytes)
    return body + TRAILER_CHECK.pack(xxhash.xxh3_64_intdigest(body))


class StreamParser:
    """Incremental parser of one table stream (any chunk boundaries).

    ``feed(data)`` returns the complete records found; ``finish()`` raises CorruptionError
    unless the trailer was read and nothing follows. Validates magic, then version, then
    checksums, then fields; lengths are capped before anything is buffered for them.
    """

    def __init__(self, table: str, table_id: int) -> None:
        self.table = table
        self.table_id = table_id
        self.info: dict[str, Any] | None = None
        self.records = 0
        self.nbytes = 0
        self.done = False
        self.offset = 0  # stream offset of the first unparsed byte
        self._buf = bytearray()
        #: The content digest over the records accepted so far.
        self.content = content_hasher()
        self._run = xxhash.xxh3_64()
        self._run_rows: list[Row] = []
        self._run_bytes = 0

    def _bad(self, what: str) -> CorruptionError:
        return CorruptionError(what, where=f"logical stream of table {self.table!r}, "
                                           f"offset {self.offset}")

    def feed(self, data: bytes | bytearray | memoryview) -> list[Row]:
        """Parse ``data``; returns the records completed by it."""
        if self.done and len(data):
            raise self._bad("data after the trailer")
        self._buf += data
        out: list[Row] = []
        buf = self._buf
        pos = 0
        while not self.done:
            if self.info is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                magic, version, info_len, table_id, zero = HEADER.unpack_from(buf, pos)
                if magic != STREAM_MAGIC:
                    raise self._bad("bad logical stream magic")
                if version > STREAM_VERSION:
                    raise VersionError(f"logical stream of table {self.table!r} is version "
                                       f"{version}; this build reads up to {STREAM_VERSION}")
                if version == 1:
                    raise VersionError(f"logical stream of table {self.table!r} was made by "
                                       f"an older format (version 1, without record "
                                       f"checksums); this build reads version "
                                       f"{STREAM_VERSION}")
                if info_len > MAX_INFO:
                    raise self._bad(f"logical stream info length {info_len} too large")
                if len(buf) - pos < HEADER_SIZE + info_len:
                    break
                (check,) = HEADER_CHECK.unpack_from(buf, pos + HEADER.size)
                raw = bytes(buf[pos + HEADER_SIZE:pos + HEADER_SIZE + info_len])
                if check != xxhash.xxh3_64_intdigest(bytes(buf[pos:pos + HEADER.size]) + raw):
                    raise self._bad("logical stream header checksum mismatch")
                if version < 1 or zero:
                    raise self._bad("logical stream header has a bad version or reserved field")
                if table_id != self.table_id:
                    raise self._bad(f"stream is for table id {table_id}, the catalog says "
                                    f"{self.table_id}")
                try:
                    info = json.loads(raw)
                except ValueError as exc:
                    raise self._bad(f"logical stream info is not JSON: {exc}") from exc
                if not isinstance(info, dict):
                    raise self._bad("logical stream info is not a JSON object")
                self.info = info
                pos += HEADER_SIZE + info_len
                self.offset += HEADER_SIZE + info_len
                continue
            if len(buf) - pos < RECORD.size:
                break
            klen, vlen = RECORD.unpack_from(buf, pos)
            if klen == RUN_MARKER:
                if len(buf) - pos < RUN_CHECK.size:
                    break
                _m, zero, run_hash = RUN_CHECK.unpack_from(buf, pos)
                if zero or not self._run_rows:
                    raise self._bad("logical stream run check without records")
                if run_hash != self._run.intdigest():
                    raise self._bad("logical stream records do not match their run checksum")
                out.extend(self._run_rows)
                self.records += len(self._run_rows)
                self.nbytes += self._run_bytes
                self._run_rows, self._run_bytes = [], 0
                self._run.reset()
                pos += RUN_CHECK.size
                self.offset += RUN_CHECK.size
                continue
            if klen == TRAILER_MARKER:
                if len(buf) - pos < TRAILER_SIZE:
                    break
                _m, zero, records, nbytes = TRAILER.unpack_from(buf, pos)
                (check,) = TRAILER_CHECK.unpack_from(buf, pos + TRAILER.size)
                if check != xxhash.xxh3_64_intdigest(bytes(buf[pos:pos + TRAILER.size])):
                    raise self._bad("logical stream trailer checksum mismatch")
                if self._run_rows:
                    raise self._bad("logical stream records without a run checksum")
                if zero or records != self.records or nbytes != self.nbytes:
                    raise self._bad(f"trailer says {records} records / {nbytes} bytes; the "
                                    f"stream held {self.records} / {self.nbytes}")
                pos += TRAILER_SIZE
                self.offset += TRAILER_SIZE
                self.done = True
                break
            if klen > MAX_KEY or vlen > MAX_VALUE:
                raise self._bad(f"record lengths {klen}/{vlen} out of range")
            end = pos + RECORD.size + klen + vlen
            if len(buf) < end:
                break
            k0 = pos + RECORD.size
            record = memoryview(buf)[pos:end]
            self._run.update(record)
            self.content.update(record)
            record.release()
            # Held back until the run check that closes the run proved it.
            self._run_rows.append((bytes(buf[k0:k0 + klen]), bytes(buf[k0 + klen:end])))
            self._run_bytes += klen + vlen
            self.offset += end - pos
            pos = end
        del buf[:pos]
        if self.done and buf:
            raise self._bad("data after the trailer")
        return out

    @property
    def digest(self) -> bytes:
        """The content digest of the records parsed so far (the whole table once done)."""
        return bytes(self.content.digest())

    def finish(self) -> None:
        """Raise CorruptionError unless the whole stream (through its trailer) was read."""
        if not self.done:
            raise self._bad("logical stream ends before its trailer")


def iter_stream_file(path: Path, table: str, table_id: int,
                     ) -> tuple[StreamParser, Iterator[Row]]:
    """A parser and an iterator over the records of a stream spilled to ``path``."""
    parser = StreamParser(table, table_id)

    def gen() -> Iterator[Row]:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise storage_error(exc, "open", path) from exc
        with f:
            while True:
                try:
                    data = f.read(1 << 20)
                except OSError as exc:
                    raise storage_error(exc, "read", path) from exc
                if not data:
                    break
                yield from parser.feed(data)
        parser.finish()

    return parser, gen()


# ====================================================================== backup driver
class LogicalBackupDriver(AtBeginDriver):
    """Shared body of the snapshot and default drivers ("at begin": all data after the VP).

    ``sources`` maps each table's engine to the source reading it. Tables are sent one at
    a time, in order, each on its own local stream; ``_table_sent`` runs right after a
    table's last buffer (the default driver releases its lock there). Errors are raised as
    LaminaError (the kernel cancels the driver and reports them).
    """

    kind = DriverKind.AT_BEGIN
    #: Driver name for messages.
    label = "logical"

    def __init__(self, tables: Sequence[TableSpec], sources: Mapping[str, LogicalSource]) -> None:
        self.tables = list(tables)
        self.sources = dict(sources)
        self._buf_size = 0
        self._began = False
        self._pinned = False
        self._index = 0
        self._pieces: Iterator[bytes] | None = None
        self._pending = bytearray()
        self._done = False
        self._closed = False
        #: Per table: rows, key+value bytes, table id and engine of what was sent (a table
        #: appears once its last byte was handed over).
        self.sent: dict[str, LogicalTableFacts] = {}

    def source(self, spec: TableSpec) -> LogicalSource:
        """The source of ``spec``'s engine."""
        return self.sources[spec.engine]

    # ---------------------------------------------------------------- protocol
    def begin(self, buf_size: int) -> Result:
        """Begin every source (slots, estimates). Raises LockedError & co."""
        if buf_size < 1:
            raise UsageError(f"buffer size must be positive, not {buf_size}")
        self._buf_size = buf_size
        self._began = True
        for src in self.sources.values():
            src.begin()
        return Result.OK

    def prelock(self) -> Result:
        """Nothing to prepare: READY (the default driver overrides this)."""
        return Result.READY

    def lock(self) -> Result:
        """Pin every source's VP: memory only, O(1) per table."""
        if not self._began:
            raise UsageError(f"{self.label} backup driver: lock() before begin()")
        for src in self.sources.values():
            src.pin()
        self._pinned = True
        return Result.OK

    def unlock(self) -> Result:
        """Nothing to undo: OK."""
        return Result.OK

    def _table_pieces(self, spec: TableSpec) -> Iterator[bytes]:
        src = self.source(spec)
        yield encode_header(spec.table_id, src.table_info(spec))
        pack = RECORD.pack
        rows = nbytes = 0
        content = content_hasher()
        run = xxhash.xxh3_64()
        run_size = 0
        for key, value in src.rows(spec):
            rows += 1
            nbytes += len(key) + len(value)
            record = pack(len(key), len(value)) + key + value
            content.update(record)
            run.update(record)
            run_size += len(record)
            yield record
            if run_size >= RUN_BYTES:
                yield encode_run_check(run.intdigest())
                run.reset()
                run_size = 0
        if run_size:
            yield encode_run_check(run.intdigest())
        self.sent[spec.name] = LogicalTableFacts(rows, nbytes, spec.table_id, spec.engine,
                                                 content.digest())
        yield encode_trailer(rows, nbytes)

    def get_data(self, buffer: Buffer) -> Result:
        """Fill ``buffer`` with the next bytes of the current table's stream; a table's last
        buffer has ``last`` set; DONE with the last table's last buffer."""
        if not self._pinned:
            raise UsageError(f"{self.label} backup driver: get_data() before lock()")
        if self._done:
            raise UsageError(f"{self.label} backup driver: get_data() after DONE")
        cap = min(buffer.capacity, self._buf_size or buffer.capacity)
        spec = self.tables[self._index]
        if self._pieces is None:
            self._pieces = self._table_pieces(spec)
        finished = False
        while len(self._pending) < cap:
            piece = next(self._pieces, None)
            if piece is None:
                finished = True
                break
            self._pending += piece
        buffer.stream = self._index + 1
        if finished:
            buffer.data = bytes(self._pending)
            self._pending = bytearray()
        else:
            buffer.data = bytes(self._pending[:cap])
            del self._pending[:cap]
        if not finished and self._pending:
            return Result.OK
        if not finished:
            # Exactly cap bytes were pending: look ahead so the final buffer carries `last`.
            piece = next(self._pieces, None)
            if piece is not None:
                self._pending += piece
                return Result.OK
        buffer.last = True
        self._pieces = None
        self._table_sent(spec)
        self._index += 1
        if self._index < len(self.tables):
            return Result.OK
        self._done = True
        return Result.DONE

    def _table_sent(self, spec: TableSpec) -> None:
        """Hook: ``spec``'s last byte was handed to the kernel."""

    def vp_info(self) -> LogicalVpFacts:
        """The tables sent and each source's facts: restore checks its row counts against
        these."""
        return LogicalVpFacts(dict(self.sent),
                              {engine: src.facts() for engine, src in self.sources.items()})

    @property
    def rows_sent(self) -> int:
        """Rows sent so far (whole tables)."""
        return sum(t.rows for t in self.sent.values())

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pieces = None
        self._pending = bytearray()
        for src in self.sources.values():
            src.close()

    def size(self) -> int | None:
        """Estimated stream bytes (key+value bytes plus 8 per row), from the sources'
        estimates; None if any is unknown. O(tables), no I/O."""
        total = 0
        for spec in self.tables:
            est = self.source(spec).estimate(spec)
            if est is None:
                return None
            rows, nbytes = est
            total += HEADER_SIZE + TRAILER_SIZE + nbytes + RECORD.size * rows
        return total


def sources_for(tables: Sequence[TableSpec], providers: Mapping[str, LogicalProvider],
                make: Callable[[LogicalProvider, Sequence[TableSpec]], LogicalSource],
                driver: str) -> dict[str, LogicalSource]:
    """One source per engine among ``tables``. Raises DriverChoiceError if an engine has
    no provider for this driver."""
    by_engine: dict[str, list[TableSpec]] = {}
    for t in tables:
        by_engine.setdefault(t.engine, []).append(t)
    out: dict[str, LogicalSource] = {}
    for engine, specs in by_engine.items():
        provider = providers.get(engine)
        if provider is None:
            raise DriverChoiceError(f"the {driver} driver cannot back up {engine} tables "
                                    f"({specs[0].name!r})")
        out[engine] = make(provider, specs)
    return out


# ====================================================================== restore driver
class LogicalRestoreDriver(RestoreDriver):
    """Restores logical table streams: parses and checks them while they arrive (spilling
    them to a temporary file in the destination), then, in ``end()`` — after every driver
    before it in the catalog ended, so a native btree file is already complete — loads each
    table through the sink. Verify-only (no destination): parses and checks, writes nothing.
    """

    def __init__(self, name: str, tables: Sequence[TableSpec], flags: RestoreFlags,
                 sink_factory: SinkFactory | None) -> None:
        self.name = name
        self.tables = list(tables)
        self.flags = flags
        self.sink_factory = sink_factory
        self.parsers = [StreamParser(t.name, t.table_id) for t in self.tables]
        self._spill_dir: Path | None = None
        self._files: list[Any] = []
        self.loaded: dict[str, int] = {}

    def begin(self) -> Result:
        """Create the spill directory in the destination (none when verifying only)."""
        dest = self.flags.destination
        if dest is not None:
            if self.sink_factory is None:
                raise UsageError(f"the {self.name} restore engine has no way to write tables")
            self._spill_dir = Path(dest) / f".{self.name}-spill-{uuid.uuid4().hex[:8]}"
            try:
                os.mkdir(self._spill_dir)
                for i in range(len(self.tables)):
                    self._files.append(open(self._spill_dir / f"{i}.stream", "wb"))  # noqa: SIM115
            except OSError as exc:
                raise storage_error(exc, "create spill files", self._spill_dir) from exc
        return Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        """Check one chunk of a table stream (stream 0 must stay empty) and spill it."""
        if buffer.stream == 0:
            if len(buffer.data):
                raise CorruptionError(f"{self.name} driver: data on the common stream")
            return Result.OK
        if not 1 <= buffer.stream <= len(self.tables):
            raise CorruptionError(f"{self.name} driver: stream {buffer.stream} does not exist")
        i = buffer.stream - 1
        self.parsers[i].feed(buffer.data)  # records are re-read from the spill in end()
        if buffer.last:
            self.parsers[i].finish()
        if self._files:
            try:
                self._files[i].write(buffer.data)
            except OSError as exc:
                raise storage_error(exc, "write", self._spill_dir) from exc
        return Result.OK

    def end(self) -> Result:
        """Check every stream ended and matches the VP facts, then load the tables.

        Raises CorruptionError (a stream missing or cut short, a table the VP facts do not
        describe, row counts or content digests that disagree with them),
        DriverProtocolError (no VP facts were set), and whatever the sink raises (e.g.
        KeyTooLargeError when a key does not fit the destination's page size)."""
        facts = self.vp_facts
        if not isinstance(facts, LogicalVpFacts):
            raise DriverProtocolError(f"{self.name} restore driver: end() without its "
                                      f"logical VP facts (got {type(facts).__name__})")
        for spec, parser in zip(self.tables, self.parsers, strict=True):
            parser.finish()
            table = facts.tables.get(spec.name)
            if table is None:
                raise CorruptionError(f"table {spec.name!r}: the {self.name} driver's VP "
                                      "facts do not describe it")
            if table.rows != parser.records:
                raise CorruptionError(f"table {spec.name!r}: {parser.records} rows in the "
                                      f"stream, the VP facts say {table.rows}")
            if table.digest != parser.digest:
                raise CorruptionError(f"table {spec.name!r}: the content digest of its "
                                      f"stream, {parser.digest.hex()}, differs from the VP "
                                      f"facts' {table.digest.hex()}")
        if self._spill_dir is None:
            return Result.OK
        for f in self._files:
            f.close()
        assert self.sink_factory is not None and self.flags.destination is not None
        sink = self.sink_factory(Path(self.flags.destination), facts)
        try:
            for i, spec in enumerate(self.tables):
                parser, rows = iter_stream_file(self._spill_dir / f"{i}.stream", spec.name,
                                                spec.table_id)
                first = next(rows, None)  # reads the header, so the info is known
                info = parser.info or {}
                loaded = sink.load(spec, info, _chain(first, rows))
                if loaded != self.parsers[i].records:
                    raise CorruptionError(f"table {spec.name!r}: loaded {loaded} rows of "
                                          f"{self.parsers[i].records}")
                self.loaded[spec.name] = loaded
        finally:
            sink.close()
        self._remove_spill()
        return Result.OK

    def _remove_spill(self) -> None:
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
        self._files = []
        if self._spill_dir is not None:
            shutil.rmtree(self._spill_dir, ignore_errors=True)
            self._spill_dir = None

    def cancel(self) -> Result:
        """Remove the spill files (the kernel removes the destination). Never raises."""
        try:
            self._remove_spill()
        except Exception as exc:  # cancel must not raise
            self.error = LaminaError(f"{self.name} restore driver could not clean up: {exc}")
            return Result.ERROR
        return Result.OK


def _chain(first: Row | None, rest: Iterator[Row]) -> Iterator[Row]:
    if first is not None:
        yield first
        yield from rest


def check_restore_version(name: str, version: int, ours: int) -> None:
    """VersionError for a newer driver version, UsageError-free for ours or older."""
    if version > ours:
        raise VersionError(f"the image's {name!r} driver data is version {version}; this "
                           f"build reads up to {ours}")
    if version < 1:
        raise CorruptionError(f"{name!r} driver version {version} does not exist")


__all__ = [
    "HEADER_SIZE",
    "STREAM_MAGIC",
    "STREAM_VERSION",
    "TRAILER_SIZE",
    "LogicalBackupDriver",
    "LogicalBackupEngine",
    "LogicalProvider",
    "LogicalRestoreDriver",
    "LogicalSink",
    "LogicalSource",
    "LogicalTableFacts",
    "LogicalVpFacts",
    "Row",
    "SinkFactory",
    "StreamParser",
    "check_restore_version",
    "content_hasher",
    "encode_header",
    "encode_run_check",
    "encode_trailer",
    "iter_stream_file",
    "sources_for",
]
