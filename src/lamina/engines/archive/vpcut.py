"""An archive table as of a validity point, derived after the fact.

Every block header carries the commit seq of the commit that wrote it and blocks are in seq
order (a commit appends; ``optimize`` keeps row order and stamps a block with its rows' max
seq), so the table as of the VP commit seq V is: the generation current at V
(:func:`open_vp_generation`: the live files, or the ``.g<N>`` copies an ``optimize`` kept
because a backup slot was live), cut at the end of its last block with seq <= V
(:func:`cut_at`). Used by the native backup driver and the snapshot driver's source.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

from lamina.core import fileio
from lamina.engines.archive import generations
from lamina.engines.archive.chain import CHAIN_START, ChainHasher
from lamina.engines.archive.datafile import FileHeader, meta_from_header, read_header
from lamina.engines.archive.format import ARZ_HEADER_SIZE, arm_path, retained_paths
from lamina.engines.archive.meta import Meta, read_meta_file
from lamina.engines.archive.walker import BlockWalker
from lamina.errors import NotFoundError, StorageError, TableNotFoundError

#: How often the generation lookup is retried while an optimize publish races it.
_RESOLVE_ATTEMPTS = 50


def _close_quietly(fd: int, path: Path) -> None:
    with suppress(StorageError):
        fileio.close_fd(fd, path)


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
        _close_quietly(fd, arz)
        raise
    if header.generation == meta.generation:
        return fd, header, meta, meta.generation
    if header.generation == meta.generation + 1:
        return fd, header, meta_from_header(header, meta), meta.generation
    fileio.close_fd(fd, arz)
    return None


def open_vp_generation(directory: Path, name: str, vp_seq: int,
                       ) -> tuple[int, FileHeader, Meta, Path]:
    """Open the data file of the generation of table ``name`` current at ``vp_seq``:
    ``(fd, header, committed meta of that file, path)``; the caller closes ``fd``.

    Raises NotFoundError (not retained: no backup slot was live), TableNotFoundError (the
    table is gone), CorruptionError & co., StorageError.
    """
    for attempt in range(_RESOLVE_ATTEMPTS):
        arm, arz = generations.files_at(directory, name, vp_seq)
        try:
            got = _open_pair(arm, arz, name)
        except TableNotFoundError:
            if arm == arm_path(directory, name):
                raise  # the table itself is gone
            got = None  # a retained copy vanished under us: look again
        if got is not None:
            fd, header, committed, meta_gen = got
            if header.generation_commit_seq <= vp_seq:
                return fd, header, committed, arz
            # The data file is newer than the VP: an optimize renamed it in place and has
            # not written its meta yet (in flight, or it crashed there). It kept the
            # generation we need, because our backup slot was live.
            fileio.close_fd(fd, arz)
            kept_arm, kept_arz = retained_paths(directory, name, meta_gen)
            try:
                kept = _open_pair(kept_arm, kept_arz, name)
            except TableNotFoundError:
                kept = None
            if kept is not None:
                if kept[1].generation_commit_seq <= vp_seq:
                    return kept[0], kept[1], kept[2], kept_arz
                fileio.close_fd(kept[0], kept_arz)
        time.sleep(0.001 * (attempt + 1))
    raise NotFoundError(f"archive table {name!r}: could not open the generation current at "
                        f"commit seq {vp_seq} (publishes kept racing, or it was not retained)")


def cut_at(fd: int, path: Path, name: str, header: FileHeader, committed: Meta,
           vp_seq: int, *, chain_from: tuple[int, bytes] | None = None) -> Meta:
    """The meta of ``committed``'s generation as of ``vp_seq``: walk the block headers up to
    the committed length (the one block walk) and stop at the first block committed after
    ``vp_seq``; rows, next row id, data length, block count, raw bytes and last commit seq
    are recomputed from the headers below it, and the block chain's head at the cut from
    the blocks' bytes: from the generation's base state (its header's chain head), or from
    ``chain_from`` = (a block boundary at or below the cut, the chain head there: a layer's
    base), so a layer reads only the blocks after its base.

    The cut is a prefix (blocks are in seq order). O(1) memory. Raises CorruptionError for a
    damaged header (naming table, offset and rows), StorageError.
    """
    walker = BlockWalker(name, path, committed.data_length)
    blocks = raw_bytes = 0
    last_seq = header.generation_commit_seq
    for block in walker.headers(fd):
        if block.commit_seq > vp_seq:
            break  # the walk stays at this block: the cut ends where it starts
        blocks += 1
        raw_bytes += block.row_bytes
        last_seq = max(last_seq, block.commit_seq)
    cut = walker.offset
    if chain_from is not None and chain_from[0] <= cut:
        start, head = chain_from
    else:
        start, head = header.base_data_length, header.base_chain_head
        if start > cut:  # cannot be: the base blocks are older than any later VP
            start, head = ARZ_HEADER_SIZE, CHAIN_START
    return committed.replace(row_count=walker.expected - 1, next_row_id=walker.expected,
                             data_length=cut, blocks=blocks, raw_bytes=raw_bytes,
                             last_commit_seq=last_seq,
                             chain_head=chain_between(fd, path, name, start, cut, head))


def chain_between(fd: int, path: Path, name: str, start: int, end: int, head: bytes) -> bytes:
    """The block chain head after the blocks of ``[start, end)`` (block boundaries) of the
    open data file ``fd``, continuing ``head``. Reads those bytes once, in large preads.
    Raises CorruptionError (a damaged block header), StorageError."""
    chain = ChainHasher(head)
    walker = BlockWalker(name, path, end, start=start, strict=False)
    for block in walker.headers(fd):
        chain.add(fileio.pread(fd, block.end - block.offset, block.offset, path))
    return chain.head


__all__ = ["chain_between", "cut_at", "open_vp_generation"]
