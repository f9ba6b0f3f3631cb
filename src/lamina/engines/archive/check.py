"""The archive checker: proves a table's committed state is intact and self-consistent.

Checks, on a snapshot (writers may keep committing meanwhile):

* both meta slots (a damaged slot is reported: after a torn write a writer's open repairs
  it, so a clean table has two valid slots; a damaged *newest* slot — the table reads the
  previous commit — is a finding whose ``what`` starts with ``fallback:``, and the
  fallback the table was opened in is in ``stats["fallback"]``, see ``fallback.py``);
* the committed length against the data file's size (before any block is read);
* the data file header against the meta (table id, generation, codec);
* every block below the committed length: header checksum, codec, payload checksum,
  decompressed length, row length table, row id continuity, commit seq order and bound;
* the totals against the meta: committed length, row count, next row id, block count, raw
  bytes, and the block chain's head (recomputed from every block's bytes, see
  :mod:`~lamina.engines.archive.chain`): a block changed with its checksums recomputed, or
  a meta whose chain head was changed, is a finding.

The blocks are read by the one block walk (:class:`~lamina.engines.archive.walker.BlockWalker`,
not strict: every problem becomes a finding). A damaged block header stops the walk (its
lengths cannot be trusted); the remaining range is reported as unchecked.
"""

from __future__ import annotations

from lamina.core import fileio
from lamina.core.check import CheckReport, Finding
from lamina.engines.archive import codec, generations
from lamina.engines.archive.block import decode_payload
from lamina.engines.archive.chain import ChainHasher
from lamina.engines.archive.datafile import DataFile
from lamina.engines.archive.fallback import detect
from lamina.engines.archive.files import TableFiles
from lamina.engines.archive.format import BLOCK_HEADER_SIZE
from lamina.engines.archive.meta import Meta
from lamina.engines.archive.walker import BlockWalker
from lamina.errors import CorruptionError, LaminaError


def check_table(files: TableFiles) -> CheckReport:
    """Check the table of ``files``; returns a report whose findings name table, block
    offset and rows. Never raises for damage it can describe (StorageError and ClosedError
    pass)."""
    name = files.name
    report = CheckReport()
    arm = files.arm()
    try:
        read = arm.read()
    except LaminaError as exc:
        report.findings.append(Finding(name, "meta file", f"unreadable: {exc}"))
        return report
    now = detect(files.arm_path, read)
    recorded = files.fallback
    for slot in read.damaged_slots:
        if now is not None and now.slot == slot:
            fb = recorded if recorded is not None and recorded.slot == slot else now
            report.findings.append(Finding(name, f"meta slot {slot}",
                                           f"fallback: {fb.describe()}",
                                           f"counter {fb.lost_counter}",
                                           f"counter {fb.current_counter}"))
            continue
        report.findings.append(Finding(name, f"meta slot {slot}",
                                       "slot damaged (torn write or corruption)",
                                       "valid", read.states[slot]))
    shown = recorded or now
    if shown is not None:
        report.stats["fallback"] = shown.to_json()
    try:
        snap = files.snapshot()
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
        _check_blocks(name, report, data, meta)
        report.stats.update({
            "rows": meta.row_count, "generation": meta.generation,
            "committed_length": meta.data_length,
            "tail_bytes": max(0, fileio.file_size(data.fd) - meta.data_length),
            "retained_generations": [g for g, _p in generations.retained(files.directory,
                                                                          name)],
            "pending_optimize": fileio.exists(files.new_path),
        })
    finally:
        snap.data.release()
    return report


def _check_blocks(name: str, report: CheckReport, data: DataFile, meta: Meta) -> None:
    """Walk every block below the committed length and compare the totals with ``meta``."""
    path = data.path
    upto = meta.data_length
    size = fileio.file_size(data.fd)
    if upto > size:
        # Nothing past the file can be checked, and no length read from it may size a read.
        find = report.findings.append
        find(Finding(name, "meta", "committed length is past the end of the data file",
                     f"<= {size}", str(upto)))
        report.stats["blocks_checked"] = 0
        return
    walker = BlockWalker(name, path, upto, strict=False)
    headers = walker.headers(data.fd)
    prev_seq = 0
    seen_blocks = 0
    seen_raw = 0
    payload_ok = True
    chain = ChainHasher()
    find = report.findings.append
    while True:
        try:
            header = next(headers, None)
        except CorruptionError as exc:  # the header itself: its lengths cannot be trusted
            find(Finding(name, f"block at offset {walker.offset} rows from {walker.expected}",
                         exc.what, "", ""))
            find(Finding(name, f"offsets {walker.offset}-{upto}", "not checked after a "
                                                                  "damaged block header"))
            report.stats["blocks_checked"] = seen_blocks
            return
        if header is None:
            break
        where = f"block at offset {header.offset} rows {header.first_row_id}-{header.last_row_id}"
        if header.first_row_id != walker.expected:
            find(Finding(name, where, "row ids not continuous", str(walker.expected),
                         str(header.first_row_id)))
        if header.end > upto:
            find(Finding(name, where, "block runs past the committed length", str(upto),
                         str(header.end)))
            report.stats["blocks_checked"] = seen_blocks
            return
        if header.commit_seq < prev_seq:
            find(Finding(name, where, "commit seq decreases", f">= {prev_seq}",
                         str(header.commit_seq)))
        if header.commit_seq > meta.last_commit_seq:
            find(Finding(name, where, "commit seq after the table's last commit",
                         f"<= {meta.last_commit_seq}", str(header.commit_seq)))
        block = fileio.pread(data.fd, BLOCK_HEADER_SIZE + header.stored_length,
                             header.offset, path)
        chain.add(block)
        payload = block[BLOCK_HEADER_SIZE:]
        try:
            got = decode_payload(header, payload, name, path)
            seen_raw += sum(map(len, got))
        except LaminaError as exc:
            payload_ok = False
            find(Finding(name, where, getattr(exc, "what", str(exc))))
        prev_seq = max(prev_seq, header.commit_seq)
        seen_blocks += 1
    report.stats["blocks_checked"] = seen_blocks
    expected = walker.expected
    if walker.offset != upto:
        find(Finding(name, "data file", "blocks do not end at the committed length", str(upto),
                     str(walker.offset)))
    if expected != meta.next_row_id:
        find(Finding(name, "meta", "next row id does not follow the last block",
                     str(expected), str(meta.next_row_id)))
    if expected - 1 != meta.row_count:
        find(Finding(name, "meta", "row count differs from the rows in blocks",
                     str(meta.row_count), str(expected - 1)))
    if seen_blocks != meta.blocks:
        find(Finding(name, "meta", "block count differs", str(meta.blocks), str(seen_blocks)))
    if payload_ok and seen_raw != meta.raw_bytes:
        find(Finding(name, "meta", "raw bytes differ", str(meta.raw_bytes), str(seen_raw)))
    if walker.offset == upto and chain.head != meta.chain_head:
        find(Finding(name, "meta", "block chain head differs from the blocks' chain",
                     chain.head.hex(), meta.chain_head.hex()))


__all__ = ["check_table"]
