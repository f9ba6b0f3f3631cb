"""``optimize``: rewrite a table into larger blocks as a new generation, published atomically.

Under the table writer lock (so no commit interleaves):

1. write ``NAME.ARZ.new``: a placeholder header, then the rows re-packed at the new block
   target; each new block's commit seq is the max of the seqs of the blocks its rows came
   from (so "blocks with seq <= V" still never includes a row committed after V);
   ``fdatasync``. Failpoint ``archive.optimize_before_publish``.
2. hold the commit blocker shared (``publishing_commit``) and inside it: take a commit seq
   (the generation commit seq), write the final header (generation N+1, base state, that
   seq), sync; if a backup is running, keep generation N as ``.g<N>`` files; rename
   ``.new`` over ``NAME.ARZ`` and sync the directory (failpoint
   ``archive.optimize_mid_publish``); write the meta slot of generation N+1, sync.

Readers holding generation N keep reading it through their open descriptor (the replaced
inode lives until the last one closes). Crash states are resolved by ``recovery.py``.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from typing import Any

from lamina.core import fileio
from lamina.core.failpoints import failpoint
from lamina.engines.archive import generations, recovery
from lamina.engines.archive.block import pack_block
from lamina.engines.archive.chain import ChainHasher
from lamina.engines.archive.datafile import DataFile, FileHeader
from lamina.engines.archive.files import TableFiles
from lamina.engines.archive.format import ARZ_HEADER_SIZE, DEFAULT_OPTIMIZE_TARGET
from lamina.errors import StorageError


def optimize(files: TableFiles, block_target: int | None, timeout: float | None,
             ) -> dict[str, Any]:
    """Rewrite the table of ``files`` as a new generation (see module doc); returns stats:
    ``generation``, ``rows``, ``blocks_before``, ``blocks_after``, ``bytes_before``,
    ``bytes_after``, ``block_target``, ``commit_seq``, ``retained`` (old generation kept for a
    backup), ``seconds``. Takes the table writer lock: LockedError if it is not free in
    ``timeout``. Raises StorageError, CorruptionError (from recovery)."""
    started = time.monotonic()
    lock = files.writer_lock()
    lock.acquire(timeout)
    held: list[DataFile] = []  # data files this optimize reads (referenced until the end)
    try:
        read = recovery.recover(files)
        generations.cleanup(files.directory, files.name, files.lockfile)
        meta = read.meta
        target = block_target or max(DEFAULT_OPTIMIZE_TARGET, 4 * meta.block_target)
        old = files.acquire_current()
        held.append(old)
        new_path = files.new_path
        fd = fileio.open_fd(new_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        published = installed = False
        try:
            end, blocks, raw_bytes, head = _rewrite(old, meta.data_length, fd, new_path, meta.codec,
                                              meta.level, target)
            # Always, even with sync=False: the rename below must never reach the disk
            # before the data it publishes (sync=False skips only the directory and meta
            # syncs; recovery rolls a durable rename forward from the data file's header).
            fileio.fdatasync(fd, new_path)
            failpoint("archive.optimize_before_publish")
            lockfile = files.lockfile
            with lockfile.publishing_commit():
                seq = lockfile.next_commit_seq()
                header = FileHeader(files.table_id, meta.codec, meta.level,
                                    meta.generation + 1, target, meta.row_count,
                                    meta.next_row_id, end, blocks, raw_bytes, seq, head)
                fileio.pwrite(fd, header.encode(), 0, new_path)
                fileio.fdatasync(fd, new_path)
                retained = generations.retain_if_backup(files, read)
                fileio.rename(new_path, files.arz_path)
                published = True
                if files.sync:
                    fileio.fsync_dir(files.directory)
                failpoint("archive.optimize_mid_publish")
                new_meta = meta.replace(generation=header.generation, data_length=end,
                                        blocks=blocks, raw_bytes=raw_bytes,
                                        last_commit_seq=seq, generation_commit_seq=seq,
                                        chain_head=head)
                files.arm().write(read, new_meta, sync=files.sync)
            installed = True
            files.install(DataFile(files.arz_path, fd, header, files.name))
        except BaseException:
            if not installed:
                with suppress(StorageError):
                    fileio.close_fd(fd, new_path)
            if not published:
                with suppress(StorageError):
                    fileio.unlink(new_path)
            raise
    finally:
        for data in held:
            data.release()
        lock.release()
    return {
        "generation": meta.generation + 1, "rows": meta.row_count,
        "blocks_before": meta.blocks, "blocks_after": blocks,
        "bytes_before": meta.data_length, "bytes_after": end, "block_target": target,
        "commit_seq": seq, "retained": retained, "seconds": round(time.monotonic() - started, 6),
    }


def _rewrite(old: DataFile, upto: int, fd: int, path: os.PathLike[str], codec_id: int,
             level: int, target: int) -> tuple[int, int, int, bytes]:
    """Copy every row of ``old`` below ``upto`` into new blocks; returns (end, blocks, raw,
    the new generation's chain head: its chain restarts at CHAIN_START)."""
    fileio.pwrite(fd, bytes(ARZ_HEADER_SIZE), 0, path)  # placeholder until publish
    offset = ARZ_HEADER_SIZE
    count = old.ensure_index(upto)
    run: list[bytes] = []
    run_size = 0
    run_first = 1
    run_seq = 0
    blocks = 0
    raw_bytes = 0
    chain = ChainHasher()

    def flush() -> None:
        nonlocal offset, blocks, raw_bytes, run, run_size, run_first
        block = pack_block(run, run_first, codec_id, level)
        data = block.encode(run_seq)
        fileio.pwrite(fd, data, offset, path)
        chain.add(data)
        offset += len(data)
        blocks += 1
        raw_bytes += block.raw_bytes
        run_first += len(run)
        run, run_size = [], 0

    for i in range(count):
        header = old.blocks[i]
        for row in old.read_rows(header):
            if not run:
                run_seq = 0
            run.append(row)
            run_size += 4 + len(row)
            run_seq = max(run_seq, header.commit_seq)
            if run_size >= target:
                flush()
    if run:
        flush()
    return offset, blocks, raw_bytes, chain.head


__all__ = ["optimize"]
