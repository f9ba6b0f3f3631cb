"""The btree native "at end" backup driver: the bulk of the pages goes before the VP.

MySQL 6.0's second driver kind. Its stream (docs/format.md, "At-end streams") is two btree
page streams one after the other on local stream 0, each in the format of
:mod:`lamina.engines.btree.stream`:

* **initial section** (sent in the kernel's initial transfer, before the VP): the snapshot
  S0 pinned by ``begin()`` — a full stream, or in a layer the pages of S0 newer than the
  base image's txnid;
* **final section** (after the VP): a layer stream of the VP snapshot on S0's txnid —
  only the pages written between S0 and the VP, found by the same walk by child txnid that
  layers use (``ReadTxn.walk_changed_pages``), never a scan of the file.

So the VP is taken when the bulk is already copied, and the image holds the database as of
the *end* of the backup. A restore applies both sections in one pass, the newer page
winning (the final section's pages overwrite the initial section's).

Pinning. ``begin()`` publishes S0's txnid in a reader slot of kind ``SLOT_BACKUP`` (then
re-reads the published meta: a commit between the read and the pin could have let a writer
reuse S0's pages, so it retries, as ``BtreeStore.begin_read`` does). The initial transfer
reads S0 while writers go on. ``lock()`` (commit blocker held, memory only) reads the VP's
meta and moves the pin from S0 to the VP: S0 was sent whole, so its pages may be reused from
now on, while the VP's pages stay pinned until ``end()``/``cancel()`` release the slot.

Concurrency: one driver is used by one thread (the kernel's); writers in any process go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lamina.core.driver import Buffer, DriverKind, ReleasingDriver, Result, TableSpec
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.backup_driver import (
    BtreeBackupDriver,
    PieceReader,
    SlotOwner,
    read_published_meta,
)
from lamina.engines.btree.facts import BtreeInitialFacts, BtreeVpFacts
from lamina.engines.btree.stream import HEADER_SIZE, TRAILER_SIZE
from lamina.errors import UsageError

if TYPE_CHECKING:
    from lamina.core.lockfile import Slot
    from lamina.engines.btree.store import BtreeStore

class BtreeAtEndDriver(SlotOwner, ReleasingDriver):
    """Sends S0 before the VP and the pages changed between S0 and the VP after it.

    States: created -> begun (slot pins S0) -> initial transfer -> READY -> locked (slot
    pins the VP) -> final section -> DONE -> ended; ``cancel()`` from any state releases
    the slot. Errors are raised as LaminaError (the kernel cancels and reports them).

    ``base_txnid`` (not None) makes it a layer driver: the initial section holds only S0's
    pages newer than the base.
    """

    kind = DriverKind.AT_END
    label = "btree at-end"

    def __init__(self, store: BtreeStore, tables: Sequence[TableSpec], *,
                 base_txnid: int | None = None) -> None:
        self._store = store
        self._lockfile = store._lockfile
        self._tables = list(tables)
        self._base_txnid = base_txnid
        self._buf_size = 0
        self._slot: Slot | None = None
        self._s0: btree_format.Meta | None = None
        self._begin_seq = 0
        self._vp: btree_format.Meta | None = None
        self._initial = BtreeBackupDriver(store, tables, base_txnid=base_txnid)
        self._final: BtreeBackupDriver | None = None
        self._section: PieceReader | None = None
        self._ready = False
        self._done = False

    # ---------------------------------------------------------------- introspection
    @property
    def initial_meta(self) -> btree_format.Meta | None:
        """The snapshot S0 pinned by ``begin()`` (None before)."""
        return self._s0

    @property
    def vp_meta(self) -> btree_format.Meta | None:
        """The meta record frozen by ``lock()`` (None before)."""
        return self._vp

    # ---------------------------------------------------------------- protocol
    def begin(self, buf_size: int) -> Result:
        """Own a reader slot and pin the current snapshot S0 in it (memory only, retried
        until the pin is known to precede any reuse). Raises LockedError when every slot
        is in use. OK."""
        self._buf_size = buf_size
        slot = self._slot = self._lockfile.acquire_slot()
        while True:
            record, meta = read_published_meta(self._lockfile)
            if meta.txnid:
                slot.set(meta.txnid, SLOT_BACKUP)
            if self._lockfile.btree_meta() == record:
                break
        self._s0 = meta
        self._begin_seq = self._lockfile.commit_seq()
        return Result.OK

    def get_data(self, buffer: Buffer) -> Result:
        """Before the VP: the next bytes of the initial section (READY with its final
        buffer). After it: the final section (DONE with ``last`` on the final buffer).
        Raises CorruptionError (a page fails its checksum), TableNotFoundError (a table
        not in the snapshot), ChainError (a base newer than S0), StorageError."""
        if self._s0 is None:
            raise UsageError("btree at-end driver: get_data() before begin()")
        if self._done:
            raise UsageError("btree at-end driver: get_data() after DONE")
        cap = min(buffer.capacity, self._buf_size or buffer.capacity)
        buffer.stream = 0
        if self._vp is None:
            if self._ready:
                raise UsageError("btree at-end driver: get_data() after READY, before lock()")
            if self._section is None:
                self._section = PieceReader(self._initial.stream_of(self._s0))
            buffer.data, finished = self._section.fill(cap)
            if not finished:
                return Result.OK
            self._initial.close_snapshot()
            self._section = None
            self._ready = True
            return Result.READY
        if self._final is None:
            raise UsageError("btree at-end driver: get_data() after lock() before READY")
        if self._section is None:
            self._section = PieceReader(self._final.stream_of(self._vp))
        buffer.data, finished = self._section.fill(cap)
        if not finished:
            return Result.OK
        buffer.last = True
        self._done = True
        self._final.close_snapshot()
        return Result.DONE

    def prelock(self) -> Result:
        """Nothing to prepare: READY."""
        return Result.READY

    def lock(self) -> Result:
        """Freeze the VP: decode the published meta and move the pin from S0 to it.
        Memory only, O(1). Raises UsageError before the initial transfer ended."""
        if self._slot is None or self._s0 is None or not self._ready:
            raise UsageError("btree at-end driver: lock() before the initial transfer ended")
        _record, meta = read_published_meta(self._lockfile)
        if meta.txnid:
            self._slot.set(meta.txnid, SLOT_BACKUP)
        self._vp = meta
        self._final = BtreeBackupDriver(self._store, self._tables, base_txnid=self._s0.txnid)
        return Result.OK

    def unlock(self) -> Result:
        """Nothing to undo: OK."""
        return Result.OK

    def vp_info(self) -> BtreeVpFacts:
        """The VP's btree facts (as the "at begin" driver's: the final section's pages
        count and hash, the layer's base txnid) plus ``initial``: S0 and the initial
        section's pages. Memory only. Raises UsageError before ``lock()``."""
        vp, s0, final = self._vp, self._s0, self._final
        if vp is None or s0 is None or final is None:
            raise UsageError("btree at-end driver: vp_info() before lock()")
        initial = BtreeInitialFacts(s0.txnid, s0.commit_seq, s0.root_hash, s0.total_pages,
                                    self._initial.pages_sent, self._initial.pages_hash,
                                    self._begin_seq)
        facts = BtreeVpFacts.of_meta(vp, final.pages_sent, final.pages_hash,
                                     base_txnid=self._base_txnid)
        return BtreeVpFacts(facts.txnid, facts.commit_seq, facts.root_hash, facts.page_size,
                            facts.total_pages, facts.pages_sent, facts.pages_hash,
                            facts.base_txnid, initial=initial)

    def _release(self) -> None:
        self._initial.close_snapshot()
        if self._final is not None:
            self._final.close_snapshot()
        self._section = None
        self._release_slot()

    def init_size(self) -> int | None:
        """Estimate of the initial section: S0's pages (a full image) or None (a layer,
        whose page count is known only after its walk). Memory only."""
        s0 = self._s0
        if s0 is None or self._base_txnid is not None:
            return None
        return s0.total_pages * s0.page_size + HEADER_SIZE + TRAILER_SIZE

    def size(self) -> int | None:
        """Estimate of both sections: the initial one's size plus the final one's (known
        once its walk counted the pages). Memory only."""
        first = self._initial.size()
        if first is None:
            return None
        second = self._final.size() if self._final is not None else None
        return first + (second if second is not None else HEADER_SIZE + TRAILER_SIZE)


__all__ = ["BtreeAtEndDriver"]
