"""Page space of a write transaction: allocation, freeing, and the free-list tree.

Free pages are kept LMDB-style in a tree of records ``(txnid, chunk) -> page numbers``:
the pages that the transaction ``txnid`` stopped using. A record's pages may be handed out
again only when every live reader snapshot (of every process, from the lock file's reader
slots) is ``>= txnid``: such readers cannot reach them. Pages freed by the running
transaction are recorded under its own txnid, so they are never reused before it commits
(and an abort simply forgets them).

Allocation order: pages released earlier in this transaction (never committed), then whole
records taken from the free list (oldest first, while eligible), then the end of the file.

A streaming bulk load (:meth:`PageSpace.streaming`) writes its pages to the file as it
builds them instead of keeping them until commit. That is safe for the same reason the
commit's own page writes are: every page :meth:`PageSpace.alloc` hands out is invisible to
every snapshot (past the committed page count, or free in the committed snapshot and older
than every live reader). Until the commit's meta names them they are garbage: an abort or
a crash leaves them as free pages of the committed free list or as bytes past the committed
page count, which the next writer overwrites (and the checker ignores).

At commit, :meth:`PageSpace.settle` writes the free-list tree. Changing that tree frees and
allocates pages itself, so it iterates to a fixpoint; it terminates because, within the
loop, the pool of reusable pages only shrinks and the set of freed pages only grows.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Iterator
from itertools import groupby

from lamina.engines.btree import format as btree_format
from lamina.engines.btree import tree
from lamina.engines.btree.page import (
    Leaf,
    Node,
    OverflowRef,
    Ref,
    Value,
    decode_node,
    encode_overflow,
    verify_header,
)
from lamina.engines.btree.pager import Pager
from lamina.errors import CorruptionError, KeyTooLargeError, ValueTooLargeError

#: Bytes of pages a streaming bulk load buffers before it writes them (one batch of
#: pwrites, runs of consecutive pages coalesced).
STREAM_BATCH_BYTES = 1 << 20


def encode_free_value(pages: list[int]) -> bytes:
    """A free-list record value: page numbers as u32 little-endian."""
    return struct.pack(f"<{len(pages)}I", *pages)


def decode_free_value(raw: bytes) -> list[int]:
    """Inverse of :func:`encode_free_value`; CorruptionError on a ragged length."""
    if len(raw) % 4:
        raise CorruptionError(f"free-list record of {len(raw)} bytes is not whole page numbers")
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


class PageSpace:
    """The write transaction's view of pages (implements :class:`tree.WriteCtx`).

    Not thread-safe: a write transaction belongs to one thread.
    """

    def __init__(self, pager: Pager, txnid: int, meta: btree_format.Meta,
                 oldest_reader: Callable[[], int | None], *,
                 keep_previous_snapshot: bool = False) -> None:
        self.pager = pager
        self.page_size = pager.page_size
        self.txnid = txnid
        self.committed_txnid = meta.txnid
        self.next_pgno = meta.total_pages
        self.committed_pages = meta.total_pages
        self._oldest_reader = oldest_reader
        # Without a meta fsync the previous meta may be the one a power loss falls back
        # to, so the snapshot it names must stay intact: reuse nothing it still uses.
        self._keep_previous = keep_previous_snapshot
        self._threshold: int | None = None
        self._free_root = tree.TreeState(meta.freelist)
        self._groups: Iterator[tuple[int, Iterator[tuple[bytes, Value]]]] | None = None
        self._refill_allowed = True
        #: Encoded pages of this transaction, and the nodes they encode.
        self.pending: dict[int, bytes] = {}
        self.pending_nodes: dict[int, Node] = {}
        #: Committed pages this transaction stopped using (recorded under its txnid).
        self.freed: set[int] = set()
        #: Free pages this transaction may use (popped from the end).
        self.pool: list[int] = []
        #: Free-list groups taken: (txnid, number of chunks).
        self.consumed: list[tuple[int, int]] = []
        self.max_key = btree_format.max_key_size(self.page_size)
        self.max_entry = btree_format.max_leaf_entry(self.page_size)
        # While streaming (a bulk load): pages stored but not yet written, and the pool
        # pages handed out (given back if the load fails).
        self._stream: dict[int, bytes] | None = None
        self._stream_taken: list[int] = []
        self._stream_batch = max(1, STREAM_BATCH_BYTES // self.page_size)

    # ------------------------------------------------------------ WriteCtx
    def load(self, ref: Ref) -> Node:
        """Node behind ``ref``: this transaction's own page, or a committed one."""
        if ref[1] == self.txnid:
            node = self.pending_nodes.get(ref[0])
            if node is None:
                # Never through the node cache: this txnid is not committed (an abort
                # hands it to the next writer, with other contents under the same pgno).
                node = decode_node(self.own_page(ref[0]), ref[0], ref[1], self.pager.path)
            return node
        return self.pager.node(ref)

    def own_page(self, pgno: int) -> bytes:
        """The bytes of this transaction's page ``pgno``: kept until commit, or already
        written to the file by a streaming bulk load (then read back from the file)."""
        page = self.pending.get(pgno)
        if page is not None:
            return page
        if self._stream is not None and pgno in self._stream:
            return self._stream[pgno]
        return self.pager.read(pgno)

    def own(self, ref: Ref) -> Node:
        """Dirty copy of ``ref``'s node; the page is released."""
        node = self.load(ref).copy()
        self.release(ref[0], ref[1])
        return node

    def release(self, pgno: int, txnid: int) -> None:
        """Forget a page: this txn's own pages are reusable at once, committed ones later."""
        if txnid == self.txnid:
            self.pending.pop(pgno, None)
            self.pending_nodes.pop(pgno, None)
            self.pool.append(pgno)
        else:
            self.freed.add(pgno)

    def store_page(self, pgno: int, page: bytes, node: Node | None) -> None:
        """Keep an encoded page until commit (while :meth:`streaming`: write it out)."""
        if self._stream is not None:
            self.pending.pop(pgno, None)
            self.pending_nodes.pop(pgno, None)
            self._stream[pgno] = page
            if len(self._stream) >= self._stream_batch:
                self._write_stream()
            return
        self.pending[pgno] = page
        if node is not None:
            self.pending_nodes[pgno] = node
        else:
            self.pending_nodes.pop(pgno, None)

    def free_value(self, value: Value) -> None:
        """Release the overflow chain of a dropped value (inline values own no pages)."""
        if type(value) is bytes:
            return
        assert isinstance(value, OverflowRef)
        if not btree_format.overflow_ref_valid(value.length, value.npages, self.page_size):
            raise CorruptionError(f"overflow reference of {value.length} bytes names "
                                  f"{value.npages} pages", path=self.pager.path,
                                  where=f"page {value.pgno}")
        pgno = value.pgno
        for _ in range(value.npages):
            ours = value.txnid == self.txnid
            page = self.own_page(pgno) if ours else self.pager.read(pgno)
            _t, ptype, _f, _n, _aux, nxt = verify_header(page, pgno, value.txnid,
                                                         self.pager.path)
            if ptype != btree_format.PAGE_OVERFLOW:
                raise CorruptionError("overflow chain reaches a non-overflow page",
                                      path=self.pager.path, where=f"page {pgno}")
            self.release(pgno, value.txnid)
            pgno = nxt

    # ------------------------------------------------------------ values
    def make_value(self, key: bytes, value: bytes) -> Value:
        """Validate a key/value pair and return what the leaf stores (inline or overflow)."""
        if type(key) is not bytes or type(value) is not bytes:
            key, value = _as_bytes(key, "key"), _as_bytes(value, "value")
        if len(key) > self.max_key:
            raise KeyTooLargeError(f"key is {len(key)} bytes; the maximum at page size "
                                   f"{self.page_size} is {self.max_key}")
        if 4 + len(key) + len(value) <= self.max_entry:
            return value
        if len(value) > btree_format.MAX_VALUE_SIZE:
            raise ValueTooLargeError(f"value is {len(value)} bytes; the maximum is "
                                     f"{btree_format.MAX_VALUE_SIZE}")
        cap = btree_format.overflow_capacity(self.page_size)
        npages = btree_format.overflow_pages(len(value), self.page_size)
        pgnos = [self.alloc() for _ in range(npages)]
        for i, pgno in enumerate(pgnos):
            nxt = pgnos[i + 1] if i + 1 < npages else 0
            self.store_page(pgno, encode_overflow(value[i * cap:(i + 1) * cap], pgno, nxt,
                                                  self.txnid, self.page_size), None)
        digest = hashlib.blake2b(value, digest_size=btree_format.HASH_SIZE).digest()
        return OverflowRef(pgnos[0], npages, len(value), self.txnid, digest)

    # ------------------------------------------------------------ allocation
    def alloc(self) -> int:
        """A page number for a new page of this transaction."""
        if self.pool or (self._refill_allowed and self._refill()):
            pgno = self.pool.pop()
            if self._stream is not None:
                self._stream_taken.append(pgno)
            return pgno
        return self._grow()

    # ------------------------------------------------------------ streaming
    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Within the block, every page stored is written to the file (in batches of
        ``STREAM_BATCH_BYTES``) instead of kept in ``pending``: memory stays O(one batch)
        whatever the block stores. Reads of those pages in this transaction go back to the
        file (:meth:`own_page`). Nothing becomes visible before the commit's meta (see the
        module doc). If the block raises, the pages it allocated are handed back (the file
        tail it grew is given up, pool pages return to the pool; their bytes are garbage)
        and the exception propagates. Only for code that allocates nothing it keeps outside
        the block's result (a bulk build); not reentrant."""
        if self._stream is not None:
            raise RuntimeError("PageSpace.streaming() is not reentrant")
        grow_start = self.next_pgno
        batch: dict[int, bytes] = {}
        self._stream, self._stream_taken = batch, []
        try:
            yield
            self._write_stream()
        except BaseException:
            batch.clear()
            self.pool.extend(self._stream_taken)
            if self.next_pgno > grow_start:  # the grown tail is given up, wherever it went
                self.pool = [p for p in self.pool if p < grow_start]
                self.next_pgno = grow_start
            raise
        finally:
            self._stream, self._stream_taken = None, []

    def _write_stream(self) -> None:
        batch = self._stream
        if batch:
            self.pager.write_pages(batch)
            batch.clear()

    def _grow(self) -> int:
        pgno = self.next_pgno
        self.next_pgno += 1
        return pgno

    def _refill(self) -> bool:
        """Take the oldest eligible free-list record group into the pool."""
        if self._threshold is None:
            oldest = self._oldest_reader()
            limit = self.committed_txnid - (1 if self._keep_previous else 0)
            self._threshold = limit if oldest is None else min(oldest, limit)
            self._groups = groupby(tree.iter_items(self.pager.node, self._free_root),
                                   key=_record_txnid)
        assert self._groups is not None
        for txnid, records in self._groups:
            if txnid > self._threshold:
                self._groups = iter(())
                return False
            recs = list(records)
            pages: list[int] = []
            for _key, raw in recs:
                assert type(raw) is bytes
                pages.extend(decode_free_value(raw))
            if pages and (min(pages) < btree_format.FIRST_DATA_PAGE
                          or max(pages) >= self.committed_pages):
                # Never hand out a page the snapshot does not have: a damaged record could
                # otherwise grow the file to any size (page numbers are u32).
                bad = min(pages) if min(pages) < btree_format.FIRST_DATA_PAGE else max(pages)
                raise CorruptionError(
                    f"free-list record of txnid {txnid} lists page {bad}, outside the "
                    f"data pages {btree_format.FIRST_DATA_PAGE}..{self.committed_pages - 1}",
                    path=self.pager.path, where="free list")
            self.consumed.append((txnid, len(recs)))
            if pages:
                pages.sort(reverse=True)  # pop() hands out low page numbers first
                self.pool.extend(pages)
                return True
        return False

    # ------------------------------------------------------------ commit
    def settle(self, fst: tree.TreeState) -> list[int]:
        """Bring the free-list tree ``fst`` up to date; returns the pages reserved for its
        dirty nodes (exactly as many as it has). Call after every other tree is serialized.
        """
        # Keep some reusable pages at hand for the free-list tree's own pages: taken from
        # the file end instead, they would grow the file a little on every commit.
        while len(self.pool) < 16 and self._refill():
            pass
        self._refill_allowed = False
        for txnid, nchunks in self.consumed:
            for i in range(nchunks):
                tree.delete(self, fst, btree_format.FREE_KEY.pack(txnid, i))
        left_t = self.consumed[-1][0] if self.consumed else self.txnid
        written: dict[bytes, bytes] = {}
        reserved: list[int] = []
        for _ in range(10_000):
            before = (len(self.freed), len(self.pool))
            if left_t == self.txnid:
                self._write_group(fst, written, self.txnid, sorted(self.freed | set(self.pool)))
            else:
                self._write_group(fst, written, self.txnid, sorted(self.freed))
                self._write_group(fst, written, left_t, sorted(self.pool))
            need = tree.count_dirty(fst)
            while len(reserved) < need:
                reserved.append(self.pool.pop() if self.pool else self._grow())
            if len(reserved) > need:
                self.freed.update(reserved[need:])
                del reserved[need:]
            if (len(self.freed), len(self.pool)) == before:
                return reserved
        raise AssertionError("free-list settlement did not converge")  # pragma: no cover

    def _write_group(self, fst: tree.TreeState, written: dict[bytes, bytes], txnid: int,
                     pages: list[int]) -> None:
        cap = btree_format.free_chunk_capacity(self.page_size)
        chunks = [encode_free_value(pages[i:i + cap]) for i in range(0, len(pages), cap)]
        for i, raw in enumerate(chunks):
            key = btree_format.FREE_KEY.pack(txnid, i)
            if written.get(key) != raw:
                tree.insert(self, fst, key, raw)
                written[key] = raw
        i = len(chunks)
        while True:
            key = btree_format.FREE_KEY.pack(txnid, i)
            if key not in written:
                break
            tree.delete(self, fst, key)
            del written[key]
            i += 1

    def new_nodes(self) -> dict[Ref, Node]:
        """The nodes this transaction wrote, by (pgno, txnid), for the cache after commit."""
        t = self.txnid
        return {(p, t): n for p, n in self.pending_nodes.items()}


def _record_txnid(item: tuple[bytes, Value]) -> int:
    if len(item[0]) != btree_format.FREE_KEY.size:
        raise CorruptionError(f"free-list key {item[0]!r} has a bad length")
    return int(btree_format.FREE_KEY.unpack(item[0])[0])


def _as_bytes(obj: object, what: str) -> bytes:
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes, not {type(obj).__name__}")


__all__ = ["Leaf", "PageSpace", "decode_free_value", "encode_free_value"]
