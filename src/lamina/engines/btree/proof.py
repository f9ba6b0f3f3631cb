"""The Merkle proof of a full btree stream, made while its pages stream by.

A full stream (:mod:`lamina.engines.btree.stream`) sends a snapshot's pages in page order,
so a page may be referenced before or after it arrives. :class:`MerkleProof` keeps a small
index of the pages received (about 30 bytes each) and the references not yet matched, and
proves that the pages form exactly the snapshot the VP meta record authenticates: every
reference (the meta's catalog and free-list roots, each branch record, each btree table's
root descriptor in the catalog, each overflow chain) names a received page with that txnid
and, where the format records one, that blake2b-128 hash; and every received page is
referenced exactly once; and every overflow value's length and blake2b-128 hash against its leaf's
reference. Together with the root hash in the VP facts this proves that the pages are the
source's pages at the VP, byte for byte. Not proven here: key order, subtree counts and
free-list accounting (structural properties of the source's tree, which the checker
proves: ``lamina restore --check``, ``lamina check``).

Each page is hashed once (by the caller, which hands the digest in); a plain leaf is never
decoded. Overflow payloads are read back through ``read_page`` when the caller has the
pages (a restore reads its destination file), else spooled (memory, then a temporary file)
until :meth:`MerkleProof.finish` hashes each chain. Not thread-safe: one proof is used by
one thread.
"""

from __future__ import annotations

import hashlib
import struct
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Callable

from lamina.core.catalog import ENGINE_BTREE, CatalogEntry
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.page import Branch, Leaf, OverflowRef, decode_node
from lamina.errors import CorruptionError, LaminaError

_U16 = struct.Struct("<H")
#: The value lengths of catalog entries (an archive table's, a btree table's with its root).
_CATALOG_VLENS = (20, 20 + btree_format.ROOT_SIZE)


def _at(where: str | Callable[[], str]) -> str:
    return where if isinstance(where, str) else where()


#: Overflow payload bytes a proof without ``read_page`` keeps in memory before it spills
#: them to a temporary file.
SPOOL_MEMORY = 64 << 20


class PageIndex:
    """Received pages in page order (pgno, txnid, hash, referenced flag), about 30 bytes
    per page, so the Merkle proof can match references made before or after a page."""

    def __init__(self) -> None:
        self.pgnos = array("I")
        self.txnids = array("Q")
        self.types = bytearray()
        self.hashes = bytearray()
        self.claimed = bytearray()

    def add(self, pgno: int, txnid: int, ptype: int, digest: bytes) -> None:
        """Append a page (page numbers must arrive in increasing order), unreferenced."""
        self.pgnos.append(pgno)
        self.txnids.append(txnid)
        self.types.append(ptype)
        self.hashes += digest
        self.claimed.append(0)

    def find(self, pgno: int) -> int | None:
        """The index of page ``pgno``, or None if it was not received (yet)."""
        i = bisect_left(self.pgnos, pgno)
        if i < len(self.pgnos) and self.pgnos[i] == pgno:
            return i
        return None

    def digest(self, i: int) -> bytes:
        """The page hash of the ``i``-th page received."""
        size = btree_format.HASH_SIZE
        return bytes(self.hashes[i * size:(i + 1) * size])


class MerkleProof:
    """Proves, while pages stream by in page order, that they form exactly the snapshot the
    meta record authenticates: every reference (meta roots, branch records, catalog table
    roots, overflow chains) names a received page with that txnid (and hash, where the
    format records one), and every received page is referenced exactly once.

    ``where`` names the stream in error locations (``"{where}, page N"``). Every method
    raises CorruptionError when the proof fails.
    """

    def __init__(self, meta: btree_format.Meta, where: str,
                 read_page: Callable[[int], bytes] | None = None) -> None:
        self.meta = meta
        self._read_page = read_page
        #: Overflow pages without ``read_page``: pgno -> (offset, length) in the spool.
        self._spooled: dict[int, tuple[int, int]] = {}
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self.where = where
        self.index = PageIndex()
        #: References to pages not received yet: pgno -> (txnid, hash or None, by whom).
        self.pending: dict[int, tuple[int, bytes | None, str]] = {}
        self.branch_kids: dict[int, list[int]] = {}
        self.catalog_candidates: dict[int, list[CatalogEntry]] = {}
        self.chains: list[tuple[OverflowRef, str]] = []
        #: Overflow pages received: pgno -> (next pgno, payload length).
        self.overflow_next: dict[int, tuple[int, int]] = {}
        #: The catalog's entries (filled by :meth:`finish`), by table name.
        self.catalog: dict[str, CatalogEntry] = {}
        for desc, by in ((meta.catalog, "meta catalog root"),
                         (meta.freelist, "meta free-list root")):
            if desc.pgno:
                self.claim(desc.pgno, desc.txnid, desc.hash, by)

    def bad(self, what: str, pgno: int, where: str | None = None) -> CorruptionError:
        """The error for page ``pgno`` (located at ``where``, else in the stream)."""
        return CorruptionError(what, where=f"{where or self.where}, page {pgno}")

    def claim(self, pgno: int, txnid: int, digest: bytes | None, by: str) -> None:
        """Record a reference to page ``pgno`` (with the txnid and, if the format records
        one, the hash it names); matched now if the page was received, else when it is."""
        if not btree_format.FIRST_DATA_PAGE <= pgno < self.meta.total_pages:
            raise self.bad(f"{by} references a page outside the snapshot", pgno)
        i = self.index.find(pgno)
        if i is None:
            if pgno in self.pending:
                raise self.bad(f"page referenced twice ({self.pending[pgno][2]}, {by})", pgno)
            self.pending[pgno] = (txnid, digest, by)
            return
        if self.index.claimed[i]:
            raise self.bad(f"page referenced twice (second: {by})", pgno)
        self.index.claimed[i] = 1
        self._match(i, pgno, txnid, digest, by)

    def _match(self, i: int, pgno: int, txnid: int, digest: bytes | None, by: str) -> None:
        if self.index.txnids[i] != txnid:
            raise self.bad(f"page txnid {self.index.txnids[i]} differs from {by}'s record "
                           f"{txnid}", pgno)
        if digest is not None and self.index.digest(i) != digest:
            raise self.bad(f"page hash differs from {by}'s record (Merkle mismatch)", pgno)

    def page(self, pgno: int, page: bytes, digest: bytes,
             where: str | Callable[[], str]) -> None:
        """Account for one received page: ``digest`` is its blake2b-128 (page hash) and
        the stream reader verified its checksum, page number (increasing, inside the
        snapshot), txnid (1 .. the VP's) and type (a tree page). ``where`` locates it in
        the stream for error messages (a callable: asked only for an error). Raises
        CorruptionError (a reference that does not match, a page that does not decode, a
        child newer than its parent)."""
        _c, ptxn, _p, ptype, flags, nkeys, aux, nxt = btree_format.HEADER.unpack_from(page)
        self.index.add(pgno, ptxn, ptype, digest)
        ref = self.pending.pop(pgno, None)
        if ref is not None:
            self.index.claimed[-1] = 1
            self._match(len(self.index.pgnos) - 1, pgno, ref[0], ref[1], ref[2])
        if ptype == btree_format.PAGE_OVERFLOW:
            if aux > len(page) - btree_format.HEADER_SIZE:
                raise self.bad("overflow page payload runs past the page", pgno, _at(where))
            self.overflow_next[pgno] = (nxt, aux)
            if self._read_page is None:
                self._spool_payload(pgno, page, aux)
            return
        if (ptype == btree_format.PAGE_LEAF and not flags & 1
                and not self._maybe_catalog(page, nkeys)):
            return  # a plain user leaf: no references, nothing more to learn
        try:
            node = decode_node(page, pgno, ptxn, None)
        except CorruptionError as exc:
            raise self.bad(exc.what, pgno, _at(where)) from exc
        if isinstance(node, Branch):
            kids: list[int] = []
            for kid, h in zip(node.kids, node.hashes):
                assert type(kid) is tuple
                if kid[1] > ptxn:
                    raise self.bad(f"child {kid[0]} txnid {kid[1]} is newer than its parent",
                                   pgno)
                self.claim(kid[0], kid[1], h, f"branch page {pgno}")
                kids.append(kid[0])
            self.branch_kids[pgno] = kids
            return
        assert isinstance(node, Leaf)
        entries: list[CatalogEntry] | None = [] if not flags & 1 else None
        for key, val in zip(node.keys, node.vals):
            if isinstance(val, OverflowRef):
                if val.txnid > ptxn:
                    raise self.bad("overflow chain newer than its leaf", pgno)
                self.chains.append((val, f"leaf page {pgno}"))
                self.claim(val.pgno, val.txnid, None, f"leaf page {pgno}")
            elif entries is not None:
                try:
                    entries.append(CatalogEntry.decode(key, val))
                except LaminaError:
                    entries = None
        if entries is not None:
            self.catalog_candidates[pgno] = entries

    @staticmethod
    def _maybe_catalog(page: bytes, n: int) -> bool:
        """Cheap filter: every value is as long as a catalog entry (20 or 20 + 40 bytes);
        the first value's length decides for nearly every user leaf."""
        if n == 0 or btree_format.HEADER_SIZE + 4 * n > len(page):
            return False
        if _U16.unpack_from(page, btree_format.HEADER_SIZE + 2 * n)[0] not in _CATALOG_VLENS:
            return False
        vlens = struct.unpack_from(f"<{n}H", page, btree_format.HEADER_SIZE + 2 * n)
        return all(v in _CATALOG_VLENS for v in vlens)

    def _spool_payload(self, pgno: int, page: bytes, aux: int) -> None:
        if self._spool is None:
            self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        offset = self._spool.tell()
        self._spool.write(page[btree_format.HEADER_SIZE:btree_format.HEADER_SIZE + aux])
        self._spooled[pgno] = (offset, aux)

    def _payload(self, pgno: int, aux: int) -> bytes:
        if self._read_page is not None:
            page = self._read_page(pgno)
            return page[btree_format.HEADER_SIZE:btree_format.HEADER_SIZE + aux]
        assert self._spool is not None
        offset, length = self._spooled[pgno]
        self._spool.seek(offset)
        return self._spool.read(length)

    def close(self) -> None:
        """Drop the spooled overflow payloads (idempotent; :meth:`finish` calls it)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    def finish(self) -> None:
        """After the last page: resolve the catalog's table roots and overflow chains (each
        chain's pages, then its value's length and hash against the leaf's reference), then
        require every reference satisfied and every page referenced exactly once."""
        try:
            self._catalog(self.meta.catalog)
            for ref, by in self.chains:
                self._chain(ref, by)
        finally:
            self.close()
        if self.pending:
            pgno, (_t, _h, by) = min(self.pending.items())
            raise self.bad(f"page referenced by {by} is not in the stream", pgno)
        i = self.index.claimed.find(0)
        if i >= 0:
            raise self.bad("page is not referenced by any tree", self.index.pgnos[i])

    def _chain(self, ref: OverflowRef, by: str) -> None:
        if not btree_format.overflow_ref_valid(ref.length, ref.npages, self.meta.page_size):
            raise self.bad(f"overflow reference of {by}: length and page count disagree",
                           ref.pgno)
        value = hashlib.blake2b(digest_size=btree_format.HASH_SIZE)
        length = 0
        pgno = ref.pgno
        for k in range(ref.npages):
            i = self.index.find(pgno)
            if i is None or self.index.types[i] != btree_format.PAGE_OVERFLOW:
                raise self.bad(f"overflow chain of {by} reaches a missing or non-overflow "
                               "page", pgno)
            if k:
                self.claim(pgno, ref.txnid, None, f"overflow chain of {by}")
            nxt, aux = self.overflow_next[pgno]
            value.update(self._payload(pgno, aux))
            length += aux
            pgno = nxt
        if pgno != 0:
            raise self.bad(f"overflow chain of {by} is longer than its reference", pgno)
        if length != ref.length or value.digest() != ref.hash:
            raise self.bad(f"overflow value of {by}: length or hash differs from its "
                           "reference", ref.pgno)

    def _catalog(self, root: btree_format.RootDesc) -> None:
        stack = [root.pgno] if root.pgno else []
        while stack:
            pgno = stack.pop()
            kids = self.branch_kids.get(pgno)
            if kids is not None:
                stack.extend(kids)
                continue
            entries = self.catalog_candidates.get(pgno)
            if entries is None:
                raise self.bad("catalog leaf does not decode as catalog entries", pgno)
            for e in entries:
                self.catalog[e.name] = e
                if e.engine != ENGINE_BTREE:
                    continue
                try:
                    desc = btree_format.RootDesc.decode(e.state, f"table {e.name!r}")
                except CorruptionError as exc:
                    raise self.bad(exc.what, pgno) from exc
                if desc.pgno:
                    self.claim(desc.pgno, desc.txnid, desc.hash, f"table {e.name!r}")


__all__ = ["SPOOL_MEMORY", "MerkleProof", "PageIndex"]
