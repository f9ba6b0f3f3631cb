"""Page codec: decoded node objects and their exact byte encoding (docs/format.md).

A decoded *clean* node (read from a committed page) is shared through the process-wide
page cache and must never be mutated; a write transaction copies it (copy-on-write) into a
fresh *dirty* node it owns. Branch children are either a clean reference ``(pgno, txnid)``
(also the cache key) or a dirty node object.
"""

from __future__ import annotations

import hashlib
import struct
from itertools import accumulate
from typing import TypeVar, cast

import xxhash

from lamina.engines.btree import format as btree_format
from lamina.errors import CorruptionError

#: A clean child reference: (page number, txnid of that page).
Ref = tuple[int, int]

_ZERO8 = bytes(8)
_U64 = struct.Struct("<Q")


T = TypeVar("T")


class OverflowRef:
    """A value stored in an overflow page chain (immutable)."""

    __slots__ = ("hash", "length", "npages", "pgno", "txnid")

    def __init__(self, pgno: int, npages: int, length: int, txnid: int, digest: bytes) -> None:
        self.pgno = pgno
        self.npages = npages
        self.length = length
        self.txnid = txnid
        self.hash = digest

    def encode(self) -> bytes:
        """The 40-byte reference stored in the leaf's value slot."""
        return btree_format.OVERFLOW_REF.pack(self.pgno, self.npages, self.length, self.txnid,
                                              self.hash)

    @classmethod
    def decode(cls, raw: bytes) -> OverflowRef:
        """Decode the 40-byte reference."""
        return cls(*btree_format.OVERFLOW_REF.unpack(raw))


Value = bytes | OverflowRef


class Leaf:
    """A leaf: sorted ``keys`` and their ``vals`` (inline bytes or OverflowRef)."""

    __slots__ = ("keys", "size", "vals")
    is_leaf = True

    def __init__(self, keys: list[bytes], vals: list[Value], size: int) -> None:
        self.keys = keys
        self.vals = vals
        #: Encoded size in bytes (header included); a page holds at most ``page_size``.
        self.size = size

    def copy(self) -> Leaf:
        """A dirty copy (for copy-on-write): mutable lists, whatever this node holds."""
        return Leaf(list(self.keys), list(self.vals), self.size)

    def frozen(self) -> Leaf:
        """This node as a clean, shareable one (tuples; see :func:`_frozen`)."""
        return Leaf(_frozen(self.keys), _frozen(self.vals), self.size)

    def count(self) -> int:
        """Keys in this subtree."""
        return len(self.keys)


class Branch:
    """A branch: ``kids[i]`` covers keys in [keys[i-1], keys[i]); ``len(keys) == len(kids)-1``.

    ``counts[i]`` is the number of keys under kid i; ``hashes[i]`` its page hash (only
    meaningful for clean kids, b"" for dirty ones).
    """

    __slots__ = ("counts", "hashes", "keys", "kids", "size")
    is_leaf = False

    def __init__(self, keys: list[bytes], kids: list[Ref | Node], counts: list[int],
                 hashes: list[bytes], size: int) -> None:
        self.keys = keys
        self.kids = kids
        self.counts = counts
        self.hashes = hashes
        self.size = size

    def copy(self) -> Branch:
        """A dirty copy (for copy-on-write): mutable lists, whatever this node holds."""
        return Branch(list(self.keys), list(self.kids), list(self.counts), list(self.hashes),
                      self.size)

    def frozen(self) -> Branch:
        """This node as a clean, shareable one (tuples; see :func:`_frozen`). Every kid
        must be a clean reference by now (the node was written)."""
        return Branch(_frozen(self.keys), _frozen(self.kids), _frozen(self.counts),
                      _frozen(self.hashes), self.size)

    def count(self) -> int:
        """Keys in this subtree."""
        return sum(self.counts)


Node = Leaf | Branch


def leaf_entry_size(key: bytes, val: Value) -> int:
    """Bytes one leaf entry takes (two u16 lengths, key, stored value)."""
    return 4 + len(key) + (len(val) if type(val) is bytes else btree_format.OVERFLOW_REF_SIZE)


def branch_entry_size(key: bytes) -> int:
    """Bytes one (separator key, child record) pair takes in a branch."""
    return btree_format.CHILD_SIZE + 2 + len(key)


EMPTY_LEAF_SIZE = btree_format.HEADER_SIZE
EMPTY_BRANCH_SIZE = btree_format.HEADER_SIZE + btree_format.CHILD_SIZE  # one child, no separator


def page_hash(page: bytes) -> bytes:
    """blake2b-128 of the whole page: the Merkle hash its parent records."""
    return hashlib.blake2b(page, digest_size=btree_format.HASH_SIZE).digest()


def checksum(page: bytes) -> int:
    """xxh3_64 of the page with its checksum field (bytes 0..7) zeroed."""
    h = xxhash.xxh3_64(_ZERO8)
    h.update(memoryview(page)[8:])
    return h.intdigest()


def _finish(header: bytes, body: bytes, page_size: int) -> bytes:
    used = len(header) + len(body)
    if used > page_size:
        raise AssertionError(f"page overflow: {used} > {page_size}")  # a bug, never data
    raw = header + body + bytes(page_size - used)
    return _U64.pack(xxhash.xxh3_64_intdigest(raw)) + raw[8:]


def encode_leaf(node: Leaf, pgno: int, txnid: int, page_size: int) -> bytes:
    """The page bytes of a leaf."""
    keys = node.keys
    n = len(keys)
    vlens: list[int] = []
    parts: list[bytes] = []
    flags = 0
    for v in node.vals:
        if type(v) is bytes:
            vlens.append(len(v))
            parts.append(v)
        else:
            assert isinstance(v, OverflowRef)
            vlens.append(btree_format.VAL_OVERFLOW | btree_format.OVERFLOW_REF_SIZE)
            parts.append(v.encode())
            flags = 1
    body = (struct.pack(f"<{2 * n}H", *[len(k) for k in keys], *vlens)
            + b"".join(keys) + b"".join(parts))
    head = btree_format.HEADER.pack(0, txnid, pgno, btree_format.PAGE_LEAF, flags, n, 0, 0)
    return _finish(head, body, page_size)


def encode_branch(keys: list[bytes], kids: list[Ref], counts: list[int], hashes: list[bytes],
                  pgno: int, txnid: int, page_size: int) -> bytes:
    """The page bytes of a branch whose kids are all clean references."""
    n = len(kids)
    pack = btree_format.CHILD.pack
    recs = b"".join([pack(k[0], k[1], c, h) for k, c, h in zip(kids, counts, hashes)])
    body = recs + struct.pack(f"<{n - 1}H", *[len(k) for k in keys]) + b"".join(keys)
    head = btree_format.HEADER.pack(0, txnid, pgno, btree_format.PAGE_BRANCH, 0, n, 0, 0)
    return _finish(head, body, page_size)


def encode_overflow(data: bytes, pgno: int, next_pgno: int, txnid: int, page_size: int) -> bytes:
    """One overflow page carrying ``data`` (at most page_size - 32 bytes)."""
    head = btree_format.HEADER.pack(0, txnid, pgno, btree_format.PAGE_OVERFLOW, 0, 0, len(data),
                                    next_pgno)
    return _finish(head, data, page_size)


def verify_header(page: bytes, pgno: int, txnid: int | None, where_path: object) -> tuple[
        int, int, int, int, int, int]:
    """Check checksum, page number and (if given) txnid; return the header fields
    (txnid, type, flags, nkeys, aux, next). Raises CorruptionError naming the page."""
    where = f"page {pgno}"
    if len(page) < btree_format.HEADER_SIZE:
        raise CorruptionError("page is past the end of the file", path=where_path, where=where)
    cs, ptxn, ppgno, ptype, flags, nkeys, aux, nxt = btree_format.HEADER.unpack_from(page)
    if cs != checksum(page):
        raise CorruptionError("page checksum mismatch", path=where_path, where=where)
    if ppgno != pgno:
        raise CorruptionError(f"page header names page {ppgno}", path=where_path, where=where)
    if txnid is not None and ptxn != txnid:
        raise CorruptionError(f"page txnid {ptxn} differs from its parent's record {txnid}",
                              path=where_path, where=where)
    return ptxn, ptype, flags, nkeys, aux, nxt


def _frozen(items: list[T] | tuple[T, ...]) -> list[T]:
    """``items`` as a tuple, typed as the list a dirty node holds.

    Why: decoded nodes live in the page cache, shared by every reader; as tuples of bytes
    and ints the garbage collector untracks them, so a full collection no longer walks the
    whole cache (measured: 250 ms pauses at 250k cached objects, gone), and a write that
    forgot to ``copy()`` a clean node fails loudly instead of corrupting a shared one.
    """
    return cast("list[T]", tuple(items))


def decode_node(page: bytes, pgno: int, txnid: int | None, where_path: object = None) -> Node:
    """Validate and decode a leaf or branch page. Raises CorruptionError naming ``pgno``."""
    _t, ptype, flags, n, _aux, _nxt = verify_header(page, pgno, txnid, where_path)
    size = len(page)
    try:
        if ptype == btree_format.PAGE_LEAF:
            lens = struct.unpack_from(f"<{2 * n}H", page, btree_format.HEADER_SIZE)
            offs = list(accumulate([ln & 0x7FFF for ln in lens],
                                   initial=btree_format.HEADER_SIZE + 4 * n))
            if offs[-1] > size:
                raise ValueError("entries run past the page")
            keys = [page[offs[i]:offs[i + 1]] for i in range(n)]
            vals: list[Value] = [page[offs[i]:offs[i + 1]] for i in range(n, 2 * n)]
            if flags & 1:
                for i in range(n):
                    if lens[n + i] & btree_format.VAL_OVERFLOW:
                        raw = vals[i]
                        assert type(raw) is bytes
                        vals[i] = OverflowRef.decode(raw)
            return Leaf(_frozen(keys), _frozen(vals), offs[-1])
        if ptype == btree_format.PAGE_BRANCH:
            if n < 1:
                raise ValueError("branch without children")
            end = btree_format.HEADER_SIZE + btree_format.CHILD_SIZE * n
            recs = list(btree_format.CHILD.iter_unpack(page[btree_format.HEADER_SIZE:end]))
            kids: list[Ref | Node] = [(r[0], r[1]) for r in recs]
            counts = [r[2] for r in recs]
            hashes = [r[3] for r in recs]
            klens = struct.unpack_from(f"<{n - 1}H", page, end)
            offs = list(accumulate(klens, initial=end + 2 * (n - 1)))
            if offs[-1] > size:
                raise ValueError("keys run past the page")
            keys = [page[offs[i]:offs[i + 1]] for i in range(n - 1)]
            return Branch(_frozen(keys), _frozen(kids), _frozen(counts), _frozen(hashes),
                          offs[-1])
    except (struct.error, ValueError) as exc:
        raise CorruptionError(f"undecodable page: {exc}", path=where_path,
                              where=f"page {pgno}") from exc
    raise CorruptionError(f"page type {ptype} where a tree page was expected", path=where_path,
                          where=f"page {pgno}")
