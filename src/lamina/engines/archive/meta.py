"""The ``.ARM`` meta file: two alternating self-validating slots (like LMDB's meta pages).

A write goes to the slot that does *not* hold the current meta, with counter + 1, then one
fsync. A torn write damages only that slot, so a reader falls back to the other — the
previous committed state. No rename and no directory fsync per commit.

Reading: each slot is validated magic, then version, then checksum. A slot with our magic
and a future version makes the whole file a :class:`VersionError` (a newer build wrote it;
the older slot would be stale); so does a valid slot of format version 1 (an older build,
before the block chain: it carries no chain head, and this build refuses to guess one).
Of the valid slots, the highest counter wins.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from lamina.core import fileio
from lamina.core.failpoints import failpoint
from lamina.engines.archive.format import (
    ARM_FILE_SIZE,
    ARM_MAGIC,
    ARM_SLOT_BODY,
    ARM_SLOT_CHECKSUM,
    ARM_SLOT_COUNT,
    ARM_SLOT_SIZE,
    ARM_SLOT_STRIDE,
    ARM_SLOT_TEAR_AT,
    ARM_V1_SLOT_SIZE,
    ARM_VERSION,
)
from lamina.errors import CorruptionError, NotADatabaseError, TableNotFoundError, VersionError


@dataclass(frozen=True, slots=True)
class Meta:
    """One committed state of an archive table (the content of a meta slot).

    ``data_length`` is the committed length of the ``.ARZ`` (header included): bytes past it
    are a torn tail. ``generation_commit_seq`` is the commit seq at which this generation was
    published (0 for the first generation); ``last_commit_seq`` the seq of the table's last
    commit (or optimize publish); ``chain_head`` the head of the generation's block chain
    after its last committed block (:mod:`~lamina.engines.archive.chain`).
    """

    counter: int
    table_id: int
    codec: int
    level: int
    generation: int
    row_count: int
    next_row_id: int
    data_length: int
    block_target: int
    last_commit_seq: int
    generation_commit_seq: int
    blocks: int
    raw_bytes: int
    chain_head: bytes

    def replace(self, **changes: Any) -> Meta:
        """A copy with ``changes`` applied (ints; ``chain_head`` bytes)."""
        return dataclasses.replace(self, **changes)


def encode_slot(meta: Meta) -> bytes:
    """The 160 bytes of one slot holding ``meta``."""
    body = ARM_SLOT_BODY.pack(
        ARM_MAGIC, ARM_VERSION, ARM_SLOT_SIZE, meta.counter, meta.table_id, meta.codec,
        meta.level, 0, meta.generation, meta.row_count, meta.next_row_id, meta.data_length,
        meta.block_target, 0, meta.last_commit_seq, meta.generation_commit_seq, meta.blocks,
        meta.raw_bytes, meta.chain_head)
    return body + ARM_SLOT_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))


def encode_file(meta: Meta) -> bytes:
    """A whole fresh ``.ARM`` file: both slots valid (counters n and n+1), same state."""
    out = bytearray(ARM_FILE_SIZE)
    out[0:ARM_SLOT_SIZE] = encode_slot(meta)
    second = encode_slot(meta.replace(counter=meta.counter + 1))
    out[ARM_SLOT_STRIDE:ARM_SLOT_STRIDE + ARM_SLOT_SIZE] = second
    return bytes(out)


# Slot states reported by decode_slot.
SLOT_VALID = "valid"
SLOT_MISSING = "missing"
SLOT_BAD_MAGIC = "bad magic"
SLOT_FUTURE = "future version"
SLOT_OLD = "older format version"
SLOT_BAD_VERSION = "bad version or size"
SLOT_BAD_CHECKSUM = "bad checksum"


def decode_slot(raw: bytes) -> tuple[str, Meta | None, int]:
    """Validate one slot: ``(state, meta or None, version)``; never raises."""
    if len(raw) < ARM_SLOT_SIZE:
        return SLOT_MISSING, None, 0
    fields = ARM_SLOT_BODY.unpack_from(raw)
    magic, version, size = fields[0], fields[1], fields[2]
    if magic != ARM_MAGIC:
        return SLOT_BAD_MAGIC, None, 0
    if version > ARM_VERSION:
        return SLOT_FUTURE, None, version
    if version == 1 and size == ARM_V1_SLOT_SIZE:
        (old_sum,) = ARM_SLOT_CHECKSUM.unpack_from(raw, ARM_V1_SLOT_SIZE - 8)
        if old_sum == xxhash.xxh3_64_intdigest(raw[:ARM_V1_SLOT_SIZE - 8]):
            return SLOT_OLD, None, version
        return SLOT_BAD_CHECKSUM, None, version
    if version < 1 or size != ARM_SLOT_SIZE:
        return SLOT_BAD_VERSION, None, version
    (checksum,) = ARM_SLOT_CHECKSUM.unpack_from(raw, ARM_SLOT_BODY.size)
    if checksum != xxhash.xxh3_64_intdigest(raw[:ARM_SLOT_BODY.size]):
        return SLOT_BAD_CHECKSUM, None, version
    (_m, _v, _s, counter, table_id, codec_id, level, _flags, generation, row_count, next_row_id,
     data_length, block_target, _r, last_seq, gen_seq, blocks, raw_bytes, head) = fields
    return SLOT_VALID, Meta(counter, table_id, codec_id, level, generation, row_count,
                            next_row_id, data_length, block_target, last_seq, gen_seq, blocks,
                            raw_bytes, head), version


@dataclass(frozen=True, slots=True)
class MetaRead:
    """The result of reading the meta file: the current state, its slot, every slot's state."""

    meta: Meta
    slot: int
    states: tuple[str, ...]
    #: The file's bytes as read (both slots; empty after a write, which read nothing).
    raw: bytes = b""

    @property
    def damaged_slots(self) -> list[int]:
        """Indexes of slots that are not valid (torn write or damage)."""
        return [i for i, s in enumerate(self.states) if s != SLOT_VALID]


def decode_file(raw: bytes, path: Path) -> MetaRead:
    """Choose the current slot of a meta file's bytes; raises on no usable slot.

    Raises VersionError (a slot from a newer format, or a valid slot of format version 1,
    made by an older build), NotADatabaseError (no slot has the
    magic: not an archive meta file), CorruptionError (every slot damaged).
    """
    decoded = [decode_slot(raw[i * ARM_SLOT_STRIDE:i * ARM_SLOT_STRIDE + ARM_SLOT_SIZE])
               for i in range(ARM_SLOT_COUNT)]
    states = tuple(d[0] for d in decoded)
    for state, _m, version in decoded:
        if state == SLOT_FUTURE:
            raise VersionError(f"{path} is archive meta format version {version}; this build "
                               f"knows up to {ARM_VERSION}")
    for state, _m, version in decoded:
        if state == SLOT_OLD:
            raise VersionError(f"{path} was made by an older format (archive meta format "
                               f"version {version}, without the block chain); this build "
                               f"reads version {ARM_VERSION} only: dump it with the build "
                               "that wrote it and load the rows again")
    valid = [(m.counter, i, m) for i, (s, m, _v) in enumerate(decoded) if m is not None]
    if not valid:
        if len(raw) == 0:
            raise CorruptionError("archive meta file is empty", path=path)
        if all(s in (SLOT_BAD_MAGIC, SLOT_MISSING) for s in states):
            raise NotADatabaseError(f"{path} is not an archive meta file (bad magic)")
        raise CorruptionError("both archive meta slots are damaged", path=path,
                              where="; ".join(f"slot {i}: {s}" for i, s in enumerate(states)))
    _c, slot, meta = max(valid)
    return MetaRead(meta, slot, states, bytes(raw[:ARM_FILE_SIZE]))


class ArmFile:
    """An open ``.ARM`` file. ``read()`` is safe from any thread; ``write()`` only under the
    table writer lock (the lock, not this object, serializes writers across processes)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> ArmFile:
        """Open ``path``; TableNotFoundError if it does not exist."""
        try:
            fd = fileio.open_fd(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError as exc:
            raise TableNotFoundError(f"archive meta file {path} does not exist") from exc
        return cls(path, fd)

    def read(self) -> MetaRead:
        """The current committed state. One pread of both slots.

        A reader racing the writer's in-place slot write can see that slot torn; the other
        slot is then valid. Re-reading covers the (theoretical) case of two writes during
        one pread.
        """
        for attempt in range(3):
            raw = fileio.pread(self.fd, ARM_FILE_SIZE, 0, self.path)
            try:
                return decode_file(raw, self.path)
            except CorruptionError:
                if attempt == 2:
                    raise
                time.sleep(0.001)
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, current: MetaRead, meta: Meta, *, sync: bool) -> MetaRead:
        """Publish ``meta`` into the slot not holding ``current``; returns the new MetaRead.

        The counter is set to ``current.meta.counter + 1``. Failpoint ``archive.mid_meta_write``
        sits between the two halves of the slot write (a torn slot).
        """
        slot = 1 - current.slot
        meta = meta.replace(counter=current.meta.counter + 1)
        data = encode_slot(meta)
        offset = slot * ARM_SLOT_STRIDE
        fileio.pwrite(self.fd, data[:ARM_SLOT_TEAR_AT], offset, self.path)
        failpoint("archive.mid_meta_write")
        fileio.pwrite(self.fd, data[ARM_SLOT_TEAR_AT:], offset + ARM_SLOT_TEAR_AT, self.path)
        if sync:
            fileio.fsync(self.fd, self.path)
        states = list(current.states)
        states[slot] = SLOT_VALID
        return MetaRead(meta, slot, tuple(states))

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            fileio.close_fd(fd, self.path)


def read_meta_file(path: Path) -> MetaRead:
    """Open, read and close a meta file (for static helpers); TableNotFoundError if absent."""
    arm = ArmFile.open(path, writable=False)
    try:
        return arm.read()
    finally:
        arm.close()
