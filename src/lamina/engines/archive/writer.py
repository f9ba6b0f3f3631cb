"""The commit path: an :class:`Appender` buffers rows and publishes them as one commit.

A commit, in order:

1. compress the buffered rows into blocks split at the block target (no lock but the table
   writer lock: CPU work stays outside the commit blocker);
2. hold ``lockfile.publishing_commit()`` (commit blocker shared) and inside it: take the next
   global commit seq, stamp it into every block header, append the blocks at the committed
   length, ``fdatasync`` the data, write the other meta slot, ``fsync`` the meta.

So a validity point (commit blocker exclusive) sees a commit entirely or not at all, and a
crash at any instruction leaves either the old meta (the blocks are a torn tail, truncated at
the next writer's recovery) or the new one (blocks synced before it).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType

from lamina.core import fileio
from lamina.core.failpoints import failpoint, is_armed
from lamina.core.lockfile import ExclusiveLock
from lamina.core.table_locks import table_backup_lock
from lamina.engines.archive.block import BlockHeader, PendingBlock, pack_rows
from lamina.engines.archive.chain import ChainHasher
from lamina.engines.archive.datafile import DataFile
from lamina.engines.archive.files import TableFiles
from lamina.engines.archive.format import MAX_ROW_BYTES
from lamina.engines.archive.meta import MetaRead
from lamina.errors import StorageError, TransactionClosedError, UsageError, ValueTooLargeError


def check_row(row: object, table: str) -> bytes:
    """``row`` as bytes; UsageError if not bytes-like, ValueTooLargeError if too long."""
    if isinstance(row, bytes):
        data = row
    elif isinstance(row, bytearray | memoryview):
        data = bytes(row)
    else:
        raise UsageError(f"archive rows are bytes, not {type(row).__name__} (table {table!r})")
    if len(data) > MAX_ROW_BYTES:
        raise ValueTooLargeError(f"row of {len(data)} bytes is larger than the archive maximum "
                                 f"of {MAX_ROW_BYTES} bytes (table {table!r})")
    return data


class Appender:
    """Buffered inserts into one table, holding its writer lock until :meth:`close`.

    As a context manager: commits on normal exit, aborts on an exception, then releases
    the lock. :meth:`commit` may be called several times (one commit seq each). Rows appended
    are invisible to every reader until their commit publishes. Use from one thread.
    """

    def __init__(self, files: TableFiles, lock: ExclusiveLock, read: MetaRead) -> None:
        self._files = files
        self._lock: ExclusiveLock | None = lock
        self._read = read
        self._rows: list[bytes] = []
        #: How long a commit waits while a default backup driver holds the table (then
        #: LockedError); ``ArchiveTable.writer`` sets its table's ``lock_timeout`` (for a
        #: table of a database, the database's).
        self.backup_lock_timeout: float | None = 5.0

    def _live(self) -> MetaRead:
        if self._lock is None:
            raise TransactionClosedError(f"appender of table {self._files.name!r} is closed")
        return self._read

    @property
    def pending(self) -> int:
        """Rows buffered, not yet committed."""
        return len(self._rows)

    def append(self, row: bytes) -> int:
        """Buffer ``row``; returns the row id it gets if this commit publishes.

        Raises ValueTooLargeError (row > ``MAX_ROW_BYTES``), UsageError (not bytes).
        """
        read = self._live()
        self._rows.append(check_row(row, self._files.name))
        return read.meta.next_row_id + len(self._rows) - 1

    def append_many(self, rows: Iterable[bytes]) -> list[int]:
        """Buffer several rows; returns their future row ids. All-or-nothing on bad rows."""
        read = self._live()
        name = self._files.name
        checked = list(rows)
        # Fast path in C for the common case (all bytes, none too long); else row by row.
        if not (set(map(type, checked)) <= {bytes}
                and max(map(len, checked), default=0) <= MAX_ROW_BYTES):
            checked = [check_row(r, name) for r in checked]
        first = read.meta.next_row_id + len(self._rows)
        self._rows.extend(checked)
        return list(range(first, first + len(checked)))

    def commit(self) -> int:
        """Publish the buffered rows as one commit; returns its commit seq (0 if nothing was
        buffered: an empty commit publishes nothing and takes no seq).

        Raises StorageError on I/O failure. Before the meta write began, the commit is not
        visible and the rows stay buffered (retry or abort). Once the meta write began, its
        outcome is unknown (readers may already see it): the appender closes itself, so it
        can never publish the same row ids twice; a new writer re-reads the table's state.
        A KeyboardInterrupt (any BaseException that is not an Exception) during the meta
        write closes the appender the same way and propagates unchanged.
        """
        read = self._live()
        if not self._rows:
            return 0
        meta = read.meta
        blocks = pack_rows(self._rows, meta.next_row_id, meta.codec, meta.level,
                           meta.block_target)
        data = self._files.acquire_current()
        try:
            return self._commit(read, blocks, data)
        finally:
            data.release()

    def _commit(self, read: MetaRead, blocks: list[PendingBlock], data: DataFile) -> int:
        files = self._files
        meta = read.meta
        arm = files.arm()
        offset = meta.data_length
        lockfile = files.lockfile
        # The table backup lock, shared: a default backup driver holding the table makes
        # this commit wait; otherwise it costs one fcntl call each way.
        backup_lock = table_backup_lock(lockfile, files.table_id)
        with backup_lock.shared(self.backup_lock_timeout, f"archive table {files.name!r}"), \
                lockfile.publishing_commit():
            seq = lockfile.next_commit_seq()
            encoded = [b.encode(seq) for b in blocks]
            buf = memoryview(b"".join(encoded))
            failpoint("archive.before_block_write")
            if is_armed("archive.mid_block_write"):  # crash tests: a torn tail on disk
                half = len(buf) // 2
                fileio.pwrite(data.fd, buf[:half], offset, data.path)
                failpoint("archive.mid_block_write")
                fileio.pwrite(data.fd, buf[half:], offset + half, data.path)
            else:
                fileio.pwrite(data.fd, buf, offset, data.path)
            # Always, even with sync=False: a meta slot must never reach the disk before
            # the blocks it counts (sync=False only skips the meta's own sync).
            fileio.fdatasync(data.fd, data.path)
            failpoint("archive.after_data_sync")
            n = len(self._rows)
            chain = ChainHasher(meta.chain_head)
            for block_bytes in encoded:
                chain.add(block_bytes)
            new = meta.replace(chain_head=chain.head, row_count=meta.row_count + n,
                               next_row_id=meta.next_row_id + n,
                               data_length=offset + len(buf), last_commit_seq=seq,
                               blocks=meta.blocks + len(blocks),
                               raw_bytes=meta.raw_bytes + sum(b.raw_bytes for b in blocks))
            try:
                self._read = arm.write(read, new, sync=files.sync)
            except BaseException as exc:
                self.close()
                if not isinstance(exc, Exception):
                    raise  # Ctrl-C, SystemExit: unchanged (the outcome is unknown all the same)
                raise StorageError(f"commit to archive table {files.name!r} failed while "
                                   f"writing its meta ({exc}); whether it is visible is "
                                   "unknown: open a new writer to see") from exc
            failpoint("archive.after_meta_write")
        headers = []
        at = offset
        for b in blocks:
            headers.append(BlockHeader(at, b.codec, b.flags, b.first_row_id, b.row_count,
                                       b.raw_length, len(b.stored), seq, b.payload_checksum))
            at += b.size
        data.note_appended(headers, offset)
        self._rows = []
        return seq

    def abort(self) -> None:
        """Drop the buffered rows (nothing was written). A no-op once the appender closed
        (e.g. itself, after a failed commit), so it never hides the error that closed it."""
        self._rows = []

    def close(self) -> None:
        """Drop anything uncommitted and release the table writer lock (idempotent)."""
        lock, self._lock = self._lock, None
        self._rows = []
        if lock is not None:
            lock.release()

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None and self._lock is not None:
                self.commit()
        finally:
            self.close()
