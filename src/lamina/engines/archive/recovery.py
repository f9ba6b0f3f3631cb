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

Then: a damaged meta slot (torn write) is rewritten from the current one — after its
bytes were saved aside (``T.ARM.slot<k>-<counter>.damaged``, see ``fallback.py``), before
any meta write — and a torn tail past the committed length is truncated.
"""

from __future__ import annotations

from lamina.core import fileio
from lamina.engines.archive.datafile import DataFile, meta_from_header, read_header_at
from lamina.engines.archive.files import TableFiles
from lamina.engines.archive.meta import MetaRead
from lamina.errors import CorruptionError


def recover(files: TableFiles) -> MetaRead:
    """Bring the table's files to a clean committed state; call only under the table writer
    lock. Returns the current meta. Raises CorruptionError for states no crash can
    produce, StorageError."""
    read = files.read()
    data = files.acquire_current()
    try:
        return _recover_with(files, read, data)
    finally:
        data.release()


def _recover_with(files: TableFiles, read: MetaRead, data: DataFile) -> MetaRead:
    arm = files.arm()
    if read.damaged_slots:
        # Evidence first: every meta write below reuses the damaged slot.
        files.save_damaged_slots(read)
    meta = read.meta
    gen = data.header.generation
    if gen == meta.generation + 1:
        rolled = meta_from_header(data.header, meta)
        size = fileio.file_size(data.fd)
        if rolled.data_length > size:  # never publish a length the file cannot hold
            raise CorruptionError(f"data file header's base length {rolled.data_length} is "
                                  f"past the end of the file ({size} bytes)",
                                  path=files.arz_path, where="offset 0")
        read = arm.write(read, rolled, sync=files.sync)
        meta = read.meta
        fileio.unlink(files.new_path)
    elif gen == meta.generation - 1 and fileio.exists(files.new_path):
        pending = read_header_at(files.new_path)
        if pending is None or pending.generation != meta.generation:
            raise CorruptionError(f"data file is generation {gen}, meta says {meta.generation}",
                                  path=files.arz_path)
        fileio.rename(files.new_path, files.arz_path)
        fileio.fsync_dir(files.directory)
        fresh = files.acquire_current()
        try:
            return _recover_with(files, read, fresh)
        finally:
            fresh.release()
    elif gen == meta.generation:
        if fileio.exists(files.new_path):
            fileio.unlink(files.new_path)
    else:
        raise CorruptionError(f"data file is generation {gen}, meta says {meta.generation}",
                              path=files.arz_path, where="offset 0")
    if read.damaged_slots:
        read = arm.write(read, meta, sync=files.sync)
    size = fileio.file_size(data.fd)
    if size < meta.data_length:
        raise CorruptionError(f"data file is {size} bytes, shorter than its committed length "
                              f"{meta.data_length}", path=files.arz_path)
    if size > meta.data_length:
        # A torn tail: blocks of a commit whose meta never published.
        fileio.truncate(data.fd, meta.data_length, files.arz_path)
    return read


__all__ = ["recover"]
