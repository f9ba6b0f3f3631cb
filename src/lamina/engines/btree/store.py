"""The open data file: creation, meta selection and recovery, transactions, check, stat."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any

from lamina.core import fileio
from lamina.core.check import CheckReport
from lamina.core.lockfile import LockFile
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.check import check_store, stat_store
from lamina.engines.btree.fallback import MetaFallback, detect, save_damaged
from lamina.engines.btree.freelist import PageSpace
from lamina.engines.btree.pager import (
    DEFAULT_CACHE_BYTES,
    MetaSlots,
    Pager,
    read_meta_slots,
    read_metas,
)
from lamina.engines.btree.txn import ReadTxn, WriteTxn
from lamina.errors import (
    ClosedError,
    LockedError,
    NotFoundError,
    ReadOnlyError,
    StorageError,
    UsageError,
)

log = logging.getLogger(__name__)


class BtreeStore:
    """One open btree data file (``data.lamina``) of a database directory.

    Thread-safe: any number of threads may run read transactions; write transactions are
    serialized by the lock file's btree writer lock (across threads and processes).
    """

    DATA_FILE_NAME = btree_format.DATA_FILE_NAME

    def __init__(self, path: Path, pager: Pager, lockfile: LockFile, *, readonly: bool,
                 sync: bool) -> None:
        self.path = path
        self._pager = pager
        self._lockfile = lockfile
        self.readonly = readonly
        self.sync = sync
        self.page_size = pager.page_size
        self._meta_lock = threading.Lock()
        self._meta_cache: tuple[bytes, btree_format.Meta] = (b"", _placeholder_meta(self.page_size))
        self._closed = False
        #: Set when the open found the newest meta slot invalid and reads fall back to the
        #: previous commit (reported by ``stat()`` and ``check()``; see ``fallback.py``).
        self.fallback: MetaFallback | None = None

    # ---------------------------------------------------------------- open / close
    @classmethod
    def open(cls, directory: Path, lockfile: LockFile, *, create: bool, readonly: bool,
             page_size: int = btree_format.DEFAULT_PAGE_SIZE, sync: bool = True,
             cache_bytes: int = DEFAULT_CACHE_BYTES) -> BtreeStore:
        """Open ``directory/data.lamina``, creating it (with ``page_size``) if ``create``.

        An existing file keeps its own page size. A writable open repairs an invalid meta
        slot (a torn meta write of a crashed commit) by copying the current meta into it.
        ``sync=False`` skips the meta fsync (LMDB's NOMETASYNC): data pages are still synced
        before the meta that points at them, and the previous snapshot is never reused
        while its meta may be the durable one. A process crash loses nothing; a power loss
        may lose the last commit but never corrupts.

        Raises NotFoundError (no file and not ``create``), UsageError (bad page size),
        NotADatabaseError, VersionError, CorruptionError, LockedError, StorageError.
        """
        directory = Path(directory)
        path = directory / btree_format.DATA_FILE_NAME
        if not fileio.exists(path):
            if not create or readonly:
                raise NotFoundError(f"no btree data file in {directory}")
            if not btree_format.valid_page_size(page_size):
                raise UsageError(f"page size {page_size} is not a power of two in 1024..65536")
            with lockfile.btree_writer.held(None):
                if not fileio.exists(path):
                    _create(path, page_size)
        try:
            fd = fileio.open_fd(path, os.O_RDONLY if readonly else os.O_RDWR)
        except FileNotFoundError as exc:
            raise NotFoundError(f"no btree data file in {directory}") from exc
        try:
            current, _slots = read_metas(fd, path)
            pager = Pager(path, fd, current.page_size, readonly=readonly,
                          cache_bytes=cache_bytes)
        except BaseException:
            with contextlib.suppress(StorageError):  # the first error is the one to report
                fileio.close_fd(fd, path)
            raise
        store = cls(path, pager, lockfile, readonly=readonly, sync=sync)
        try:
            store._recover()
        except BaseException:
            with contextlib.suppress(StorageError):  # the first error is the one to report
                pager.close()
            raise
        if store.fallback is not None:
            log.warning("%s", store.fallback.describe())  # one line: the CLI's warning
        return store

    def _recover(self) -> None:
        lf = self._lockfile
        _current, slots = read_metas(self._pager.fd, self.path)
        repaired = all(isinstance(m, btree_format.Meta) for m in slots)
        if lf.btree_meta() and repaired:
            return  # nothing to repair or publish: do not wait for a running writer
        if lf.btree_meta() and self.readonly:
            # Report a fallback, never write. Only under the writer lock is the answer
            # stable; a writer holding it repaired the slots when it opened, so an invalid
            # slot seen meanwhile is its meta write in progress (check() still reports it).
            try:
                lf.btree_writer.acquire(0)
            except LockedError:
                return
            try:
                self._note_fallback(read_meta_slots(self._pager.fd, self.path),
                                    _published(lf))
            finally:
                lf.btree_writer.release()
            return
        with lf.btree_writer.held(None):
            found = read_meta_slots(self._pager.fd, self.path)
            current, slots = found.current, found.slots
            pub = _published(lf)
            self._note_fallback(found, pub)
            if not self.readonly:
                # Other processes may still read a newer commit than the disk's current
                # (the damaged slot held it): repair the slot with that one, so it is kept.
                src = pub if pub is not None and pub.txnid > current.txnid else current
                for slot, m in enumerate(slots):
                    if not isinstance(m, btree_format.Meta):
                        self._save_damaged(found, slot)
                        copy = btree_format.Meta(src.page_size, src.txnid, src.commit_seq,
                                                 slot, src.total_pages, src.next_table_id,
                                                 src.catalog, src.freelist, src.commit_ns)
                        self._pager.write_meta(slot, copy.encode())
                        self._pager.sync()
            published = lf.btree_meta()
            if not published or btree_format.Meta.decode(published).txnid < current.txnid:
                with lf.publishing_commit():
                    lf.publish_btree_meta(current.encode())
                    with lf.seq_mutex.held(None):
                        if lf.commit_seq() < current.commit_seq:
                            lf.set_commit_seq(current.commit_seq)

    def _note_fallback(self, found: MetaSlots, published: btree_format.Meta | None) -> None:
        """Remember a fallback the slots show (see ``fallback.py``); logged as one warning
        at the end of the open (with where the damaged slot was saved, if it was). None if
        the lock file's ``published`` meta (what readers use) is the damaged slot's."""
        fb = detect(self.path, found.current, found.slots, found.raw,
                    reading_txnid=None if published is None else published.txnid)
        if fb is not None and self.fallback is None:
            self.fallback = fb

    def _save_damaged(self, found: MetaSlots, slot: int) -> None:
        """Save the invalid ``slot``'s page aside before it is rewritten (under the writer
        lock, writable stores only)."""
        fb = self.fallback
        if fb is not None and fb.slot == slot:
            txnid = fb.lost_txnid
        else:
            raw = found.raw[slot]
            txnid = int.from_bytes(raw[16:24], "little") if len(raw) >= 24 else 0
        page = fileio.pread(self._pager.fd, self.page_size, slot * self.page_size, self.path)
        saved = save_damaged(self.path.parent, slot, txnid, page)
        if fb is not None and fb.slot == slot:
            self.fallback = dataclasses.replace(fb, saved=saved)
        else:
            log.warning("%s: meta slot %d was damaged (%s), no commit lost; saved as %s and "
                        "rewritten", self.path, slot, found.slots[slot], saved.name)

    @staticmethod
    def read_committed_meta(directory: Path) -> tuple[int, bytes]:
        """(commit seq, meta record) of the current meta page of ``directory/data.lamina``,
        read from the file without a lock file; (0, b"") if there is no data file.
        Raises NotADatabaseError / VersionError / CorruptionError for a bad file."""
        path = Path(directory) / btree_format.DATA_FILE_NAME
        try:
            fd = fileio.open_fd(path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, b""
        try:
            current, _slots = read_metas(fd, path)
        finally:
            fileio.close_fd(fd, path)
        return current.commit_seq, current.encode()

    def close(self) -> None:
        """Close the file. Transactions still open must not be used afterwards."""
        if not self._closed:
            self._closed = True
            self._pager.close()

    def __enter__(self) -> BtreeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- transactions
    def current_meta(self) -> btree_format.Meta:
        """The last committed meta, as published in the lock file (no file I/O)."""
        rec = self._lockfile.btree_meta()
        cached = self._meta_cache
        if rec == cached[0]:
            return cached[1]
        meta = btree_format.Meta.decode(rec, "published meta")
        self._meta_cache = (rec, meta)
        return meta

    def mark_failed(self, why: str) -> None:
        """Stop every writer in every process (PostgreSQL's rule after a failed fsync): the
        meta slot on disk may or may not hold the failed commit. ``why`` is logged."""
        log.error("btree store %s: %s", self.path, why)
        self._lockfile.mark_btree_failed()

    def begin_read(self) -> ReadTxn:
        """Start a read transaction on the current snapshot (pinned until closed).
        Raises LockedError when every reader slot is taken."""
        self._check_open()
        lf = self._lockfile
        slot = lf.acquire_slot()
        try:
            while True:
                rec = lf.btree_meta()
                meta = self.current_meta()
                if meta.txnid:
                    slot.set(meta.txnid)
                # Re-read after pinning: a commit in between could have let a writer reuse
                # pages of the snapshot we read before our pin was visible.
                if lf.btree_meta() == rec:
                    break
        except BaseException:
            slot.release()
            raise
        return ReadTxn(self._pager, meta, slot)

    def read_pinned(self, meta: btree_format.Meta) -> ReadTxn:
        """A read transaction on the snapshot ``meta`` describes, which the *caller* pins.

        For the backup driver: it publishes ``meta.txnid`` in a reader slot of its own
        (kind ``SLOT_BACKUP``) while holding the commit blocker, and reads the snapshot
        later, while writers go on. The transaction owns no slot: closing it unpins nothing,
        and it must not be used after the caller's pin ends (pages could be reused, and a
        read would then fail its txnid/checksum check with CorruptionError). No I/O here.
        """
        self._check_open()
        if meta.page_size != self.page_size:
            raise UsageError(f"meta of page size {meta.page_size} for a store of "
                             f"page size {self.page_size}")
        return ReadTxn(self._pager, meta, None)

    def begin_write(self, timeout: float | None = 5.0) -> WriteTxn:
        """Start the write transaction. Raises ReadOnlyError (read-only store), LockedError
        (another writer held the lock for ``timeout`` seconds; None waits forever)."""
        self._check_open()
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        lf = self._lockfile
        if lf.btree_failed():
            raise StorageError("an earlier commit failed while writing its meta page and "
                               "could not be undone: close the database in every process "
                               "and reopen it (it opens at the last durable commit)")
        lf.btree_writer.acquire(timeout)
        try:
            if self.sync and lf.btree_meta_unsynced():
                # A sync=False writer (any process) left the last meta unsynced; this
                # writer may reuse the pages of the snapshot before it, so make that meta
                # durable first (the data fsync also flushes the meta page: same file).
                self._pager.sync()
                lf.set_btree_meta_unsynced(False)
            meta = self.current_meta()
            space = PageSpace(self._pager, meta.txnid + 1, meta, lf.oldest_reader_txnid,
                              keep_previous_snapshot=not self.sync)
            return WriteTxn(self._pager, meta, space, lf, sync=self.sync,
                            on_failed=self.mark_failed)
        except BaseException:
            lf.btree_writer.release()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("btree store is closed")

    # ---------------------------------------------------------------- check / stat
    def check(self) -> CheckReport:
        """Verify the current snapshot (see :mod:`lamina.engines.btree.check`); runs in a
        read transaction, so writers may continue meanwhile. Never raises for damage."""
        return check_store(self._pager, self.begin_read, self.fallback)

    def stat(self) -> dict[str, Any]:
        """Figures of the current snapshot: txnid, commit seq, page size, file size, depth,
        pages by type, entries, free pages, and per-table entries/depth/pages. Runs in a
        read transaction (walks the trees through the page cache)."""
        with self.begin_read() as txn:
            stats = stat_store(self._pager, txn)
        if self.fallback is not None:
            stats["fallback"] = self.fallback.to_json()
        return stats


def _published(lf: LockFile) -> btree_format.Meta | None:
    """The meta record published in the lock file (what readers use), if any."""
    rec = lf.btree_meta()
    return btree_format.Meta.decode(rec, "published meta") if rec else None


def _placeholder_meta(page_size: int) -> btree_format.Meta:
    return btree_format.Meta(page_size, 0, 0, 0, btree_format.META_PAGES, 1,
                             btree_format.EMPTY_ROOT, btree_format.EMPTY_ROOT)


def _create(path: Path, page_size: int) -> None:
    """Write a fresh data file (two meta pages at txnid 0) atomically."""
    pages = []
    for slot in (0, 1):
        meta = btree_format.Meta(page_size, 0, 0, slot, btree_format.META_PAGES, 1,
                                 btree_format.EMPTY_ROOT, btree_format.EMPTY_ROOT)
        rec = meta.encode()
        pages.append(rec + bytes(page_size - len(rec)))
    fileio.atomic_write_file(path, b"".join(pages), sync=True)
