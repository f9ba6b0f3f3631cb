"""Restore (and verify-only) driver of the archive native backup stream.

:class:`ArchiveRestoreDriver` (seed: ``Restore``) routes each buffer to the
:class:`TableRestore` (seed: ``Table_restore``) of its stream. A table's stream
(docs/format.md, "Archive native backup stream") is parsed incrementally, whatever the
buffer boundaries:

1. the 64-byte stream header: magic, then version, then checksum, then fields;
2. the 1,024-byte ``.ARM`` as of the VP: its hash against the header, then each slot (magic,
   version, checksum) and its fields against the header and the table spec;
3. the ``.ARZ`` header, then every block: header checksum, row id continuity, the block
   ends at or before the VP position, payload checksum, decompression to exactly its raw
   length and row count, commit seq order and bound (<= the table's last commit seq <= VP).

Only proven bytes are written (to ``DEST/T.ARZ``); ``end()`` checks the totals against the
meta and the backup's VP facts, syncs, re-reads the written data file from disk (every block
header and payload checksum, continuity, row count), then writes ``DEST/T.ARM`` (synced) and
syncs the directory. With ``RestoreFlags.destination`` None (``lamina verify --deep``)
everything is proven the same way and nothing is written.

Names come from the image catalog as TableSpecs and are validated by the engine before a
driver exists, so no name can make a restore write outside the destination; files are
created with ``O_EXCL | O_NOFOLLOW``. ``cancel()`` removes every file the driver created.

Concurrency: one driver is used by one thread (the restore kernel's).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.core.driver import Buffer, RestoreDriver, RestoreFlags, Result, TableSpec
from lamina.core.names import validate_table_name
from lamina.engines.archive import codec
from lamina.engines.archive import format as F
from lamina.engines.archive.backup import (
    STREAM_HEADER_SIZE,
    STREAM_META_SIZE,
    StreamHeader,
    block_raw_bytes,
)
from lamina.engines.archive.block import BlockHeader, decode_header, decode_payload
from lamina.engines.archive.datafile import FileHeader, read_header_at
from lamina.engines.archive.meta import SLOT_VALID, Meta, decode_file, read_meta_file
from lamina.errors import (
    AlreadyExistsError,
    ChainError,
    CorruptionError,
    LaminaError,
    NotADatabaseError,
    UsageError,
    VersionError,
    storage_error,
)

#: Largest raw payload a valid block can have: a block closes once it reaches its target
#: (<= MAX_BLOCK_TARGET), so it holds less than the target plus one more row.
MAX_BLOCK_RAW = F.MAX_BLOCK_TARGET + 4 + F.MAX_ROW_BYTES
#: Bytes read per pread when the written data file is re-checked from disk.
_RECHECK_CHUNK = 1024 * 1024


class DataChecker:
    """Proves a ``.ARZ`` byte sequence (file header, then blocks up to ``meta.data_length``)
    fed in pieces of any size; returns the proven prefix of what it was fed.

    ``decode`` also decompresses and splits every payload (the stream check); without it
    only checksums and headers are proven (the re-check of bytes already decoded).

    A layer's tail starts at data file offset ``start`` > 0 (no file header), with block
    row ids from ``first_row`` and commit seqs >= ``min_seq`` (after the base VP); its
    :meth:`finish` can check only the end (next row id and length), not the whole-file
    totals (the assembled file is re-checked whole).
    """

    def __init__(self, table: str, spec_id: int, meta: Meta, vp_seq: int, label: str,
                 *, decode: bool, start: int = 0, first_row: int = 1,
                 min_seq: int = 0) -> None:
        self.table = table
        self.spec_id = spec_id
        self.meta = meta
        self.vp_seq = vp_seq
        self.label = label
        self.decode = decode
        self.start = start
        self.offset = start  # file offset of the first byte of ``pending``
        self.pending = bytearray()
        self.header: FileHeader | None = None
        self.expected = first_row
        self.rows = self.blocks = self.raw_bytes = 0
        self.prev_seq = min_seq

    @property
    def complete(self) -> bool:
        """True once every byte up to the VP position was proven."""
        return self.offset == self.meta.data_length and not self.pending

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add ``data``; return the newly proven bytes (in file order). Raises
        CorruptionError naming the table and the data file offset, UnsupportedError (a
        codec this build lacks)."""
        end = self.meta.data_length
        if self.offset + len(self.pending) + len(data) > end:
            raise CorruptionError(f"data runs past the VP position {end}", path=self.label,
                                  where=f"table {self.table!r}, offset {end}")
        self.pending += data
        buf = self.pending
        pos = 0
        if self.header is None and self.offset == 0:
            if len(buf) < F.ARZ_HEADER_SIZE:
                return b""
            self._check_file_header(bytes(buf[:F.ARZ_HEADER_SIZE]))
            pos = F.ARZ_HEADER_SIZE
        while len(buf) - pos >= F.BLOCK_HEADER_SIZE:
            at = self.offset + pos
            h = decode_header(bytes(buf[pos:pos + F.BLOCK_HEADER_SIZE]), at, self.table,
                              self.label, self.expected)
            # Lengths are checked before the payload is awaited or allocated.
            if h.end > end:
                raise CorruptionError(f"block runs past the VP position {end}",
                                      path=self.label, where=h.where(self.table))
            if h.raw_length > MAX_BLOCK_RAW:
                raise CorruptionError(f"block raw length {h.raw_length} is impossible",
                                      path=self.label, where=h.where(self.table))
            if len(buf) - pos < F.BLOCK_HEADER_SIZE + h.stored_length:
                break
            payload = bytes(buf[pos + F.BLOCK_HEADER_SIZE:pos + F.BLOCK_HEADER_SIZE
                                + h.stored_length])
            self._check_block(h, payload)
            pos += F.BLOCK_HEADER_SIZE + h.stored_length
        proven = bytes(buf[:pos])
        del buf[:pos]
        self.offset += pos
        return proven

    def _check_file_header(self, raw: bytes) -> None:
        try:
            h = FileHeader.decode(raw, Path(self.label))
        except (NotADatabaseError, VersionError) as exc:
            if isinstance(exc, VersionError):
                raise
            raise CorruptionError("bad data file header magic", path=self.label,
                                  where=f"table {self.table!r}, offset 0") from exc
        m = self.meta
        got = (h.table_id, h.generation, h.codec, h.generation_commit_seq)
        want = (self.spec_id, m.generation, m.codec, m.generation_commit_seq)
        if got != want:
            raise CorruptionError(f"data file header (table id, generation, codec, generation "
                                  f"seq) {got} differs from the meta's {want}",
                                  path=self.label, where=f"table {self.table!r}, offset 0")
        self.header = h

    def _check_block(self, h: BlockHeader, payload: bytes) -> None:
        where = h.where(self.table)
        if self.decode:
            decode_payload(h, payload, self.table, self.label)
        elif xxhash.xxh3_64_intdigest(payload) != h.payload_checksum:
            raise CorruptionError("block payload checksum mismatch", path=self.label,
                                  where=where)
        if h.commit_seq < self.prev_seq:
            raise CorruptionError(f"commit seq {h.commit_seq} decreases (previous "
                                  f"{self.prev_seq})", path=self.label, where=where)
        if h.commit_seq > self.meta.last_commit_seq:
            raise CorruptionError(f"block commit seq {h.commit_seq} is after the table's last "
                                  f"commit {self.meta.last_commit_seq}", path=self.label,
                                  where=where)
        self.prev_seq = h.commit_seq
        self.expected = h.last_row_id + 1
        self.rows += h.row_count
        self.blocks += 1
        self.raw_bytes += block_raw_bytes(h.flags, h.row_count, h.raw_length)

    def finish(self) -> None:
        """Check the totals against the meta; CorruptionError if anything differs."""
        m = self.meta
        where = f"table {self.table!r}, offset {self.offset + len(self.pending)}"
        if not self.complete:
            raise CorruptionError(f"data ends at offset {self.offset + len(self.pending)}, "
                                  f"before the VP position {m.data_length}", path=self.label,
                                  where=where)
        if self.start:  # a tail: its blocks must end exactly at the VP's next row id
            if self.expected != m.next_row_id:
                raise CorruptionError(f"tail blocks end before row id {self.expected}, the "
                                      f"meta's next row id is {m.next_row_id}",
                                      path=self.label, where=where)
            return
        got = (self.rows, self.expected, self.blocks, self.raw_bytes)
        want = (m.row_count, m.next_row_id, m.blocks, m.raw_bytes)
        if got != want:
            raise CorruptionError(f"blocks hold (rows, next row id, blocks, raw bytes) {got}, "
                                  f"the meta says {want}", path=self.label, where=where)


def check_stream_meta(arm: bytes, header: StreamHeader, spec: TableSpec, label: str,
                      where: str) -> Meta:
    """Validate the ``.ARM`` bytes of a table stream against its header and the table spec:
    hash, both slots valid, table id, data length, row counters, commit seqs <= the VP,
    generation and block target, codec available. Returns the meta. Raises
    CorruptionError (naming ``where``), VersionError, UnsupportedError (codec)."""
    if xxhash.xxh3_64_intdigest(arm) != header.meta_checksum:
        raise CorruptionError("archive meta checksum differs from the stream header's",
                              where=where)
    try:
        read = decode_file(arm, Path(label))
    except VersionError:
        raise
    except LaminaError as exc:  # NotADatabaseError or CorruptionError: a bad image
        raise CorruptionError(f"archive meta does not validate: {exc}", where=where) from exc
    if read.damaged_slots or read.states != (SLOT_VALID, SLOT_VALID):
        raise CorruptionError(f"archive meta slots not all valid: {read.states}", where=where)
    m = read.meta
    problems = []
    if m.table_id != spec.table_id:
        problems.append(f"table id {m.table_id} != {spec.table_id}")
    if m.data_length != header.data_length:
        problems.append(f"data length {m.data_length} != {header.data_length}")
    if m.row_count != m.next_row_id - 1:
        problems.append(f"row count {m.row_count} vs next row id {m.next_row_id}")
    if m.last_commit_seq > header.vp_seq or m.generation_commit_seq > m.last_commit_seq:
        problems.append(f"commit seqs {m.generation_commit_seq}/{m.last_commit_seq} "
                        f"after the VP {header.vp_seq}")
    if m.generation < 1 or not F.MIN_BLOCK_TARGET <= m.block_target <= F.MAX_BLOCK_TARGET:
        problems.append("impossible generation or block target")
    if problems:
        raise CorruptionError("archive meta is inconsistent: " + "; ".join(problems),
                              where=where)
    codec.require(m.codec, f"table {spec.name!r}")
    return m


def recheck_data_file(arz: Path, name: str, table_id: int, meta: Meta, vp_seq: int,
                      header: FileHeader | None) -> None:
    """Read a restored, synced ``.ARZ`` back from disk and prove it against ``meta``: its
    size, its file header (equal to ``header`` when given), every block header and payload
    checksum, row id continuity and the totals. Raises CorruptionError, StorageError."""
    got_header = read_header_at(arz)
    if got_header is None or (header is not None and got_header != header):
        raise CorruptionError("restored data file header does not read back", path=arz)
    check = DataChecker(name, table_id, meta, vp_seq, str(arz), decode=False)
    fd = fileio.open_fd(arz, os.O_RDONLY)
    try:
        if fileio.file_size(fd) != meta.data_length:
            raise CorruptionError(f"restored data file is not {meta.data_length} bytes",
                                  path=arz)
        offset = 0
        while offset < meta.data_length:
            piece = fileio.pread(fd, min(_RECHECK_CHUNK, meta.data_length - offset), offset,
                                 arz)
            if not piece:
                break
            check.feed(piece)
            offset += len(piece)
    finally:
        os.close(fd)
    check.finish()


class TableRestore:
    """The restore of one table's stream (seed: ``Table_restore``).

    Phases: stream header -> meta -> data -> complete. Writes ``T.ARZ`` as its bytes are
    proven (nothing when ``destination`` is None) and ``T.ARM`` in :meth:`finish`.
    """

    def __init__(self, spec: TableSpec, destination: Path | None) -> None:
        self.spec = spec
        self.name = validate_table_name(spec.name)
        self.destination = destination
        self.received = 0  # stream bytes accepted so far
        self.header: StreamHeader | None = None
        self.meta: Meta | None = None
        self.arm_bytes = b""
        self.ended = False  # the last buffer arrived
        self._head = bytearray()  # stream header + meta, until both are parsed
        self._data: DataChecker | None = None
        self._fd = -1
        self._written = 0
        self.created: list[Path] = []
        self.label = f"image stream of archive table {spec.name!r}"

    @property
    def arm_path(self) -> Path | None:
        """``DEST/T.ARM`` (None when verifying only)."""
        return None if self.destination is None else F.arm_path(self.destination, self.name)

    @property
    def arz_path(self) -> Path | None:
        """``DEST/T.ARZ`` (None when verifying only)."""
        return None if self.destination is None else F.arz_path(self.destination, self.name)

    def _where(self, offset: int) -> str:
        return f"archive stream of table {self.name!r}, offset {offset}"

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Consume the next piece of this table's stream (``last``: its final piece).

        Raises CorruptionError (naming the table and offset), VersionError, UnsupportedError,
        StorageError, AlreadyExistsError (a file of that name already in the destination).
        """
        if self.ended:
            if data:
                raise CorruptionError("data after the stream's last block",
                                      where=self._where(self.received))
            return
        view = memoryview(data)
        if self._data is None:
            need = STREAM_HEADER_SIZE + STREAM_META_SIZE - len(self._head)
            take = min(need, len(view))
            self._head += view[:take]
            view = view[take:]
            self.received += take
            if self.header is None and len(self._head) >= STREAM_HEADER_SIZE:
                self.header = StreamHeader.decode(bytes(self._head[:STREAM_HEADER_SIZE]),
                                                  self.name)
                if self.header.table_id != self.spec.table_id:
                    raise CorruptionError(f"stream is of table id {self.header.table_id}, the "
                                          f"catalog says {self.spec.table_id}",
                                          where=self._where(0))
                if self.header.is_tail:
                    raise ChainError(f"the stream of archive table {self.name!r} is a layer's "
                                     "tail: restore it with its chain")
            if len(self._head) == STREAM_HEADER_SIZE + STREAM_META_SIZE:
                self._start_data(bytes(self._head[STREAM_HEADER_SIZE:]))
        if len(view):
            assert self._data is not None
            at = self.received
            try:
                proven = self._data.feed(view)
            except CorruptionError as exc:
                if exc.where is None or "offset" not in exc.where:
                    raise CorruptionError(exc.what, path=exc.path,
                                          where=self._where(at)) from exc
                raise
            self.received += len(view)
            if proven:
                self._write(proven)
        if last:
            self.ended = True
            if self._data is None or not self._data.complete:
                raise CorruptionError(f"stream ends after {self.received} bytes, expected "
                                      f"{self.expected_length()}",
                                      where=self._where(self.received))
            self._close_data(sync=True)

    def expected_length(self) -> int | None:
        """Stream length from the header (None before it arrived)."""
        if self.header is None:
            return None
        return STREAM_HEADER_SIZE + STREAM_META_SIZE + self.header.data_length

    def _start_data(self, arm: bytes) -> None:
        header = self.header
        assert header is not None
        m = check_stream_meta(arm, header, self.spec, self.label,
                              self._where(STREAM_HEADER_SIZE))
        self.meta = m
        self.arm_bytes = arm
        self._data = DataChecker(self.name, self.spec.table_id, m, header.vp_seq,
                                  self.label, decode=True)
        self._head = bytearray()
        if self.destination is not None:
            path = F.arz_path(self.destination, self.name)
            flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0))
            fileio.COUNTERS["open"] += 1  # os.open directly: fileio would hide EEXIST
            try:
                self._fd = os.open(path, flags, 0o644)
            except FileExistsError as exc:
                # Never overwrite (or later remove) a file this driver did not create.
                raise AlreadyExistsError(f"{path} already exists in the restore "
                                         "destination") from exc
            except OSError as exc:
                raise storage_error(exc, "create", path) from exc
            self.created.append(path)

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            return  # verify only
        assert self.destination is not None
        fileio.pwrite(self._fd, data, self._written, F.arz_path(self.destination, self.name))
        self._written += len(data)

    def _close_data(self, *, sync: bool) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if sync:
                fileio.fsync(fd, self.arz_path)
        finally:
            os.close(fd)

    def finish(self, facts: dict[str, object] | None, vp_seq: object) -> None:
        """Prove the whole table and make it durable: the stream was complete, totals equal
        the meta, the meta equals the VP facts; then (restoring) re-check the synced data
        file from disk and write ``T.ARM``. Raises CorruptionError, StorageError."""
        if not self.ended or self._data is None or self.meta is None or self.header is None:
            raise CorruptionError("the image has no complete stream for this table",
                                  where=self._where(self.received))
        self._data.finish()
        m = self.meta
        if facts is not None:
            want = {"rows": m.row_count, "position": m.data_length,
                    "generation": m.generation, "last_commit_seq": m.last_commit_seq}
            got = {k: facts.get(k) for k in want}
            if got != want or vp_seq != self.header.vp_seq:
                raise CorruptionError(f"archive table {self.name!r}: stream meta {want} at VP "
                                      f"{self.header.vp_seq} differs from the image's VP "
                                      f"facts {got} at VP {vp_seq}")
        arm, arz = self.arm_path, self.arz_path
        if arm is None or arz is None:
            return  # verify only: nothing to write
        self._recheck(arz)
        self.created.append(arm)  # first: cancel() then also removes a half-written one
        fileio.atomic_write_file(arm, self.arm_bytes, sync=True)
        if read_meta_file(arm).meta != m:
            raise CorruptionError("restored meta file does not read back", path=arm)

    def _recheck(self, arz: Path) -> None:
        """Read the synced data file back: header, every block's header and payload
        checksum, continuity and totals (payloads were decoded while streaming)."""
        assert self.meta is not None and self.header is not None
        if self._data is None or self._data.header is None:
            raise CorruptionError("restored data file header does not read back", path=arz)
        recheck_data_file(arz, self.name, self.spec.table_id, self.meta, self.header.vp_seq,
                          self._data.header)

    def remove(self) -> None:
        """Close and delete every file this table created (never raises)."""
        try:
            self._close_data(sync=False)
        except LaminaError:
            pass
        for path in reversed(self.created):
            for p in (path, path.with_name(path.name + ".tmp")):
                try:
                    os.unlink(p)
                except OSError:
                    pass
        self.created.clear()


class ArchiveRestoreDriver(RestoreDriver):
    """Rebuilds archive tables from their streams (seed: ``Restore``), or only proves them
    (``RestoreFlags.destination`` None). Local stream N is ``tables[N-1]``; stream 0 must
    stay empty. Errors are returned as ERROR with ``error`` set."""

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        self.flags = flags
        self.destination = None if flags.destination is None else Path(flags.destination)
        self.tables = [TableRestore(t, self.destination) for t in tables]
        self._began = self._finished = False

    @property
    def verify_only(self) -> bool:
        """True when nothing is written (``lamina verify --deep``)."""
        return self.destination is None

    def _fail(self, exc: LaminaError) -> Result:
        self.error = exc
        return Result.ERROR

    def begin(self) -> Result:
        """Check the destination is a directory (when restoring). OK or ERROR."""
        if self._began:
            return self._fail(UsageError("archive restore driver: begin() called twice"))
        if self.destination is not None and not self.destination.is_dir():
            return self._fail(UsageError(f"restore destination {self.destination} is not a "
                                         "directory"))
        self._began = True
        return Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        """Route the buffer to its table and prove (and write) what it completes.

        Returns OK, or ERROR (CorruptionError naming the table and offset, VersionError,
        UnsupportedError, AlreadyExistsError, StorageError).
        """
        if not self._began or self._finished:
            return self._fail(UsageError("archive restore driver: send_data() outside "
                                         "begin()..end()"))
        try:
            if buffer.stream == 0:
                if buffer.data:
                    raise CorruptionError("archive common stream (0) carries data; it must "
                                          "be empty", where="archive stream 0")
                return Result.OK
            if not 1 <= buffer.stream <= len(self.tables):
                raise CorruptionError(f"archive stream {buffer.stream} does not exist (1.."
                                      f"{len(self.tables)})")
            self.tables[buffer.stream - 1].feed(buffer.data, buffer.last)
        except LaminaError as exc:
            return self._fail(exc)
        except OSError as exc:
            return self._fail(storage_error(exc, "restore", self.destination))
        return Result.OK

    def end(self) -> Result:
        """Prove every table against its meta and the VP facts; when restoring, sync and
        re-check the data files, write the meta files, sync the directory. OK or ERROR."""
        if not self._began or self._finished:
            return self._fail(UsageError("archive restore driver: end() outside begin()"))
        facts = self.vp_facts
        table_facts = None if facts is None else facts.get("tables")
        try:
            if facts is not None and not isinstance(table_facts, dict):
                raise CorruptionError("archive VP facts have no table map")
            for t in self.tables:
                mine = None
                if isinstance(table_facts, dict):
                    mine = table_facts.get(t.name)
                    if not isinstance(mine, dict):
                        raise CorruptionError(f"archive VP facts do not name table {t.name!r}")
                t.finish(mine, None if facts is None else facts.get("vp_seq"))
            if self.destination is not None:
                fileio.fsync_dir(self.destination)
        except LaminaError as exc:
            return self._fail(exc)
        self._finished = True
        return Result.OK

    def cancel(self) -> Result:
        """Remove every file written, in any state; never raises."""
        self._finished = True
        for t in self.tables:
            t.remove()
        return Result.OK


__all__ = ["ArchiveRestoreDriver", "DataChecker", "TableRestore", "check_stream_meta",
           "recheck_data_file"]
