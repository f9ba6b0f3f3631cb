"""Recovery a writer runs every time it takes the table writer lock.

Cheap when there is nothing to do (one meta pread, two ``stat``, one ``fstat``), so it runs
on every ``writer()``/``optimize()`` and at a writable ``open`` when no writer is active.

``optimize`` publishes a generation in this order (see optimize.py): write ``NAME.ARZ.new``
(header = the new generation and its base state), sync; rename it over ``NAME.ARZ``, sync the
directory; write the meta slot for the new generation, sync. Recovery resolves each crash
state by comparing the data file header's generation *g* with the meta's *m*:

=============================  ===============================================================
state                          action
=============================  ===============================================================
g == m, ``.new`` present       crashed before the rename: discard ``.new``
g == m + 1                     crashed after the rename: roll the meta forward from the header
g == m - 1, ``.new`` is gen m  meta written but rename lost (no dir sync): redo the rename
anything else                  CorruptionError
=============================  ===============================================================

Then: a damaged meta slot (torn write) is rewritten from the current one, and a torn tail
past the committed length is truncated.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lamina.core import fileio
from lamina.engines.archive import format as F
from lamina.engines.archive.datafile import read_header_at
from lamina.engines.archive.meta import MetaRead
from lamina.errors import CorruptionError, storage_error

if TYPE_CHECKING:
    from pathlib import Path

    from lamina.engines.archive.datafile import DataFile
    from lamina.engines.archive.meta import ArmFile, Meta
    from lamina.engines.archive.table import ArchiveTable


def _unlink_if_present(path: os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise storage_error(exc, "remove", path) from exc


def recover(table: ArchiveTable) -> MetaRead:
    """Bring the table's files to a clean committed state; call only under the writer lock.

    Returns the current meta. Raises CorruptionError for states no crash can produce.
    """
    arm = table._arm_file()
    read = arm.read()
    meta = read.meta
    new_path = F.arz_new_path(table.directory, table.name)
    data = table._acquire_data_at_path()
    try:
        return _recover_with(table, arm, read, meta, new_path, data)
    finally:
        data.release()


def _recover_with(table: ArchiveTable, arm: ArmFile, read: MetaRead, meta: Meta,
                  new_path: Path, data: DataFile) -> MetaRead:
    from lamina.engines.archive.table import meta_from_header

    gen = data.header.generation
    if gen == meta.generation + 1:
        read = arm.write(read, meta_from_header(data.header, meta), sync=table.sync)
        meta = read.meta
        _unlink_if_present(new_path)
    elif gen == meta.generation - 1 and new_path.exists():
        pending = read_header_at(new_path)
        if pending is None or pending.generation != meta.generation:
            raise CorruptionError(f"data file is generation {gen}, meta says {meta.generation}",
                                  path=table.arz_path)
        try:
            os.replace(new_path, table.arz_path)
        except OSError as exc:
            raise storage_error(exc, "rename", new_path) from exc
        fileio.fsync_dir(table.directory)
        fresh = table._acquire_data_at_path()
        try:
            return _recover_with(table, arm, read, meta, new_path, fresh)
        finally:
            fresh.release()
    elif gen == meta.generation:
        if new_path.exists():
            _unlink_if_present(new_path)
    else:
        raise CorruptionError(f"data file is generation {gen}, meta says {meta.generation}",
                              path=table.arz_path, where="offset 0")
    if read.damaged_slots:
        read = arm.write(read, meta, sync=table.sync)
    size = fileio.file_size(data.fd)
    if size < meta.data_length:
        raise CorruptionError(f"data file is {size} bytes, shorter than its committed length "
                              f"{meta.data_length}", path=table.arz_path)
    if size > meta.data_length:
        # A torn tail: blocks of a commit whose meta never published.
        fileio.truncate(data.fd, meta.data_length, table.arz_path)
    return read
