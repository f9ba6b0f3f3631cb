"""One replicator per database and repository: the lock a running replicator holds.

Two replicators of the same database into the same repository would both take a point
whenever the database committed, on the same newest point: duplicate points at one VP and
forked chains, which the levels and the retention windows are not made for. So
:meth:`Replicator.run <lamina.repository.replicate.Replicator.run>` holds, for as long as it
runs, an exclusive ``flock`` on ``REPLICATE-<repository id>.lock`` in the database's
directory (the database is local to the replicator, so every replicator of it runs on this
host); a second one fails at once with LockedError naming the process that holds it (its
pid is written into the file). The kernel releases the lock when the process ends, however
it ends (kill -9 included): nothing stale is ever left to remove by hand. Replicating the
same database into another repository takes another lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from lamina.core import fileio
from lamina.errors import LockedError, StorageError

#: The lock file's name in the database directory: one per repository id.
NAME_FORMAT = "REPLICATE-{repository_id}.lock"


def lock_path(database_dir: Path, repository_id: uuid.UUID) -> Path:
    """Where the lock of replicating the database in ``database_dir`` into the repository
    ``repository_id`` lives."""
    return Path(database_dir) / NAME_FORMAT.format(repository_id=repository_id)


@contextlib.contextmanager
def replicator_lock(database_dir: Path, repository_id: uuid.UUID) -> Iterator[None]:
    """Hold the replicator lock of (database, repository) while the block runs. Raises
    LockedError at once when another replicator holds it (no wait: a replicator runs for
    days), StorageError when the lock file cannot be opened."""
    path = lock_path(database_dir, repository_id)
    fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise LockedError(f"database {database_dir} is already replicated into "
                              f"repository {repository_id} by process {holder}; stop it "
                              "first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(StorageError):
            fileio.close_fd(fd, path)


__all__ = ["NAME_FORMAT", "lock_path", "replicator_lock"]
