"""The archive checker: proves a table's committed state is intact and self-consistent.

Checks, on a snapshot (writers may keep committing meanwhile):

* both meta slots (a damaged slot is reported: after a torn write a writer's open repairs
  it, so a clean table has two valid slots);
* the data file header against the meta (table id, generation, codec);
* every block below the committed length: header checksum, codec, payload checksum,
  decompressed length, row length table, row id continuity, commit seq order and bound;
* the totals against the meta: committed length, row count, next row id, block count, raw
  bytes.

A damaged block header stops the walk (its lengths cannot be trusted); the remaining range
is reported as unchecked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lamina.core import fileio
from lamina.core.check import CheckReport, Finding
from lamina.engines.archive import codec, generations
from lamina.engines.archive import format as F
from lamina.engines.archive.block import BlockHeader, decode_header, decode_payload
from lamina.engines.archive.datafile import DataFile
from lamina.errors import CorruptionError, LaminaError

if TYPE_CHECKING:
    from lamina.engines.archive.table import ArchiveTable


def check_table(table: ArchiveTable) -> CheckReport:
    """Check ``table``; returns a report whose findings name table, block offset and rows."""
    name = table.name
    report = CheckReport()
    arm = table._arm_file()
    try:
        read = arm.read()
    except LaminaError as exc:
        report.findings.append(Finding(name, "meta file", f"unreadable: {exc}"))
        return report
    for slot in read.damaged_slots:
        report.findings.append(Finding(name, f"meta slot {slot}",
                                       "slot damaged (torn write or corruption)",
                                       "valid", read.states[slot]))
    try:
        snap = table._snapshot()
    except LaminaError as exc:
        report.findings.append(Finding(name, "data file header", f"unreadable: {exc}"))
        return report
    try:
        meta, data = snap.meta, snap.data
        header = data.header
        if meta.generation != read.meta.generation:
            report.findings.append(Finding(
                name, "meta", "optimize publish not finished (meta behind data file)",
                str(header.generation), str(read.meta.generation)))
        if header.table_id != meta.table_id:
            report.findings.append(Finding(name, "data file header", "table id mismatch",
                                           str(meta.table_id), str(header.table_id)))
        if header.codec != meta.codec:
            report.findings.append(Finding(name, "data file header", "codec differs from meta",
                                           str(meta.codec), str(header.codec)))
        if not codec.available(meta.codec):
            report.findings.append(Finding(name, "meta", "codec unavailable in this build",
                                           "", str(meta.codec)))
        _check_blocks(table, report, snap.data, meta.data_length, meta.last_commit_seq,
                      meta.row_count, meta.next_row_id, meta.blocks, meta.raw_bytes)
        report.stats.update({
            "rows": meta.row_count, "generation": meta.generation,
            "committed_length": meta.data_length,
            "tail_bytes": max(0, fileio.file_size(data.fd) - meta.data_length),
            "retained_generations": [g for g, _p in generations.retained(table.directory,
                                                                          name)],
            "pending_optimize": F.arz_new_path(table.directory, name).exists(),
        })
    finally:
        snap.data.release()
    return report


def _check_blocks(table: ArchiveTable, report: CheckReport, data: DataFile, upto: int,
                  last_seq: int, rows: int, next_row_id: int, blocks: int,
                  raw_bytes: int) -> None:
    name = table.name
    path = data.path
    offset = F.ARZ_HEADER_SIZE
    expected = 1
    prev_seq = 0
    seen_blocks = 0
    seen_raw = 0
    payload_ok = True
    find = report.findings.append
    while offset < upto:
        raw = fileio.pread(data.fd, F.BLOCK_HEADER_SIZE, offset, path)
        try:
            header: BlockHeader = decode_header(raw, offset, name, path, None)
        except CorruptionError as exc:
            find(Finding(name, f"block at offset {offset} rows from {expected}",
                         exc.what, "", ""))
            find(Finding(name, f"offsets {offset}-{upto}", "not checked after a damaged block "
                                                         "header"))
            report.stats["blocks_checked"] = seen_blocks
            return
        where = f"block at offset {offset} rows {header.first_row_id}-{header.last_row_id}"
        if header.first_row_id != expected:
            find(Finding(name, where, "row ids not continuous", str(expected),
                         str(header.first_row_id)))
        if header.end > upto:
            find(Finding(name, where, "block runs past the committed length", str(upto),
                         str(header.end)))
            report.stats["blocks_checked"] = seen_blocks
            return
        if header.commit_seq < prev_seq:
            find(Finding(name, where, "commit seq decreases", f">= {prev_seq}",
                         str(header.commit_seq)))
        if header.commit_seq > last_seq:
            find(Finding(name, where, "commit seq after the table's last commit",
                         f"<= {last_seq}", str(header.commit_seq)))
        payload = fileio.pread(data.fd, header.stored_length, offset + F.BLOCK_HEADER_SIZE,
                               path)
        try:
            got = decode_payload(header, payload, name, path)
            seen_raw += sum(map(len, got))
        except LaminaError as exc:
            payload_ok = False
            find(Finding(name, where, getattr(exc, "what", str(exc))))
        prev_seq = max(prev_seq, header.commit_seq)
        expected = header.first_row_id + header.row_count
        seen_blocks += 1
        offset = header.end
    report.stats["blocks_checked"] = seen_blocks
    if offset != upto:
        find(Finding(name, "data file", "blocks do not end at the committed length", str(upto),
                     str(offset)))
    if expected != next_row_id:
        find(Finding(name, "meta", "next row id does not follow the last block",
                     str(expected), str(next_row_id)))
    if expected - 1 != rows:
        find(Finding(name, "meta", "row count differs from the rows in blocks", str(rows),
                     str(expected - 1)))
    if seen_blocks != blocks:
        find(Finding(name, "meta", "block count differs", str(blocks), str(seen_blocks)))
    if payload_ok and seen_raw != raw_bytes:
        find(Finding(name, "meta", "raw bytes differ", str(raw_bytes), str(seen_raw)))
