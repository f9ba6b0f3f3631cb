"""Shared helpers of the btree native backup tests (also imported by the writer script)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lamina
from lamina.backup import (
    BackupResult,
    Buffer,
    DriverGroup,
    ImageReader,
    RestoreFlags,
    RestoreResult,
    TableSpec,
    run_backup,
    run_restore,
)
from lamina.backup import image_format as IF
from lamina.core.identity import Identity
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.database import Database
from lamina.engines.btree import ReadTxn
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.engines.btree.restore_driver import BtreeRestoreDriver

Contents = dict[str, dict[bytes, bytes]]


def btree_specs(db: Database) -> list[TableSpec]:
    """Every btree table of ``db`` as the kernel names it."""
    return [TableSpec(t.name, t.engine, t.table_id) for t in db.tables() if t.engine == "btree"]


def backup(db: Database, image: Path, *, specs: Sequence[TableSpec] | None = None,
           engine: BtreeBackupEngine | None = None, **kw: Any) -> BackupResult:
    """Back up ``db``'s btree tables through the real kernel."""
    engine = engine or BtreeBackupEngine(db.store)
    return run_backup([DriverGroup(engine, list(specs or btree_specs(db)))], image,
                      commit_blocker=db.lockfile, commit_seq=db.lockfile.commit_seq,
                      database_id=db.identity.db_id, **kw)


def restore(image: Path, dest: Path, **kw: Any) -> RestoreResult:
    """Restore ``image`` into the new directory ``dest`` through the real restore kernel."""
    dest.mkdir(parents=True)
    return run_restore(image, {"btree": BtreeBackupEngine()}, dest, **kw)


def open_restored(dest: Path) -> Database:
    """Give a restored directory an identity and open it."""
    Identity.new().write(dest)
    return lamina.open(dest, create=False)


def contents(txn: ReadTxn, names: Sequence[str]) -> Contents:
    """Full contents of the named btree tables in a snapshot."""
    return {n: dict(txn.table(n).items()) for n in names}


def backup_slots(db: Database) -> list[tuple[int, int, int, int]]:
    """Live lock-file slots of kind "backup"."""
    return [s for s in db.lockfile.live_slots() if s[3] == SLOT_BACKUP]


def stream0(image: Path) -> bytes:
    """The btree driver's common stream (global stream 0) of an image, concatenated."""
    with open(image, "rb") as f:
        return b"".join(bytes(c.data) for c in ImageReader(f).chunks() if c.stream == 0)


def feed(driver: BtreeRestoreDriver, stream: bytes, piece: int = 3001, *,
         last: bool = True) -> None:
    """Send a raw btree stream to a restore driver in odd-sized buffers (the final one
    flagged ``last`` unless told otherwise)."""
    for i in range(0, len(stream), piece):
        data = stream[i:i + piece]
        driver.send_data(Buffer(len(data), 0, data, last and i + piece >= len(stream)))


def restore_driver(dest: Path | None, specs: Sequence[TableSpec] = ()) -> BtreeRestoreDriver:
    """A restore driver for ``dest`` made by the engine, begun."""
    drv = BtreeBackupEngine().get_restore(1, list(specs), RestoreFlags(dest))
    assert isinstance(drv, BtreeRestoreDriver)
    drv.begin()
    return drv


def rewrite_chunk(image: Path, index: int, change: Any) -> None:
    """Replace the payload of the ``index``-th chunk of an uncompressed image with
    ``change(payload)`` (same length), fixing the chunk's checksums so only what the
    payload means is wrong (the manifest's stream hash is left stale)."""
    raw = bytearray(image.read_bytes())
    pos = IF.HEADER_SIZE
    _d, _t, length, _c = IF.decode_catalog_head(bytes(raw[pos:pos + IF.CATALOG_HEAD_SIZE]), pos)
    pos += IF.CATALOG_HEAD_SIZE + length
    n = 0
    while raw[pos:pos + 4] == IF.CHUNK_MAGIC:
        fields = list(IF.CHUNK_HEAD.unpack_from(raw, pos))
        stored = fields[7]
        start = pos + IF.CHUNK_HEAD_SIZE
        if n == index:
            assert fields[4] == 0, "image must be written with codec 'none'"
            payload = change(bytes(raw[start:start + stored]))
            assert len(payload) == stored
            raw[start:start + stored] = payload
            fields[8] = IF.xxh3(payload)
            head = IF.CHUNK_HEAD.pack(*fields)
            raw[pos:start] = head + IF.CHUNK_HEAD_CHECKSUM.pack(IF.xxh3(head))
            image.write_bytes(bytes(raw))
            return
        pos = start + stored
        n += 1
    raise AssertionError(f"image has only {n} chunks")


def page_txnid(page: bytes) -> int:
    """The txnid in a page header."""
    return int(struct.unpack_from("<Q", page, 8)[0])
