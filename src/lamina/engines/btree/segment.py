"""Btree side of merging a segment of a chain into one layer: the proven walk of the pages
a layer on an older base needs.

A layer on base txnid *B* at a snapshot *S* holds exactly the pages reachable from *S*'s
roots (catalog, free list, every btree table's root in the catalog, overflow chains) whose
txnid is newer than *B* (:meth:`~lamina.engines.btree.txn.ReadTxn.walk_changed_pages`, which
a database's layer backup runs). :func:`walk_newer` is the same walk over pages that are
not in a database but handed in by page number (a chain segment's pages assembled in a
sparse file), and it proves every page it reaches against its parent's record: checksum,
page number, the txnid the parent names and the blake2b-128 the parent names (the meta's
root descriptors, each branch record, each btree table's root in the catalog: the Merkle
tree), and each overflow chain against its value's length and hash. A page that is missing
(never handed in) or differs is a CorruptionError, so a damaged segment is refused, never
merged.

Pure computation over ``read_page``; not thread-safe (one walk, one thread).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

from lamina.core.catalog import ENGINE_BTREE, CatalogEntry
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.page import (
    Branch,
    Leaf,
    OverflowRef,
    decode_node,
    page_hash,
    verify_header,
)
from lamina.errors import CorruptionError, LaminaError

#: A walk step: (page number, txnid and hash its parent records (hash None: an overflow
#: page, authenticated by its chain's value hash), 1 for the catalog tree else 0, who
#: references it).
_Step = tuple[int, int, bytes | None, int, str]


def walk_newer(read_page: Callable[[int], bytes | None], meta: btree_format.Meta,
               since_txnid: int, where: str) -> Iterator[tuple[int, bytes]]:
    """Every page of the snapshot ``meta`` written after ``since_txnid``, as (pgno, bytes),
    each once, in walk order, each proven against its parent's record (module doc).

    ``read_page(pgno)`` returns the page's bytes, or None when the page is not available
    (not in the segment): a page the walk needs and cannot read is a CorruptionError
    naming it and ``where``. Children (and overflow chains) recorded with a txnid at or
    below ``since_txnid`` are not visited: they belong to the base. Raises
    CorruptionError (a missing page, a checksum, txnid, hash or overflow mismatch, a page
    reached twice, a child newer than its parent).
    """
    seen: set[int] = set()

    def bad(what: str, pgno: int) -> CorruptionError:
        return CorruptionError(what, where=f"{where}, page {pgno}")

    def fetch(pgno: int, txnid: int, by: str) -> bytes:
        if not btree_format.FIRST_DATA_PAGE <= pgno < meta.total_pages:
            raise bad(f"{by} references a page outside the snapshot", pgno)
        if pgno in seen:
            raise bad(f"page reached twice (second: {by})", pgno)
        seen.add(pgno)
        page = read_page(pgno)
        if page is None:
            raise bad(f"page (txnid {txnid}) referenced by {by} is in none of the images "
                      "read", pgno)
        try:
            verify_header(page, pgno, txnid, None)
        except CorruptionError as exc:
            raise bad(f"{exc.what} (referenced by {by})", pgno) from exc
        return page

    stack: list[_Step] = []
    for desc, kind, by in ((meta.catalog, 1, "meta catalog root"),
                           (meta.freelist, 0, "meta free-list root")):
        if desc.pgno and desc.txnid > since_txnid:
            stack.append((desc.pgno, desc.txnid, desc.hash, kind, by))
    while stack:
        pgno, txnid, digest, kind, by = stack.pop()
        page = fetch(pgno, txnid, by)
        if digest is not None and page_hash(page) != digest:
            raise bad(f"page hash differs from {by}'s record (Merkle mismatch)", pgno)
        if kind == 0 and page[20] == btree_format.PAGE_LEAF and not page[21] & 1:
            # A table leaf without overflow values references nothing: its header and hash
            # (checked above) are all the walk needs.
            yield pgno, page
            continue
        try:
            node = decode_node(page, pgno, txnid, None)
        except CorruptionError as exc:
            raise bad(exc.what, pgno) from exc
        yield pgno, page
        if isinstance(node, Branch):
            for kid, h in zip(reversed(node.kids), reversed(node.hashes)):
                assert type(kid) is tuple
                if kid[1] > txnid:
                    raise bad(f"child {kid[0]} txnid {kid[1]} is newer than its parent", pgno)
                if kid[1] > since_txnid:
                    stack.append((kid[0], kid[1], h, kind, f"branch page {pgno}"))
            continue
        assert isinstance(node, Leaf)
        for key, v in zip(node.keys, node.vals):
            if isinstance(v, OverflowRef):
                if v.txnid > txnid:
                    raise bad("overflow chain newer than its leaf", pgno)
                if v.txnid > since_txnid:
                    yield from _overflow(fetch, bad, v, meta.page_size, f"leaf page {pgno}")
            elif kind == 1:
                try:
                    entry = CatalogEntry.decode(key, v)
                    if entry.engine != ENGINE_BTREE:
                        continue
                    d = btree_format.RootDesc.decode(entry.state, f"table {entry.name!r}")
                except LaminaError as exc:
                    raise bad(f"catalog entry does not decode: {exc}", pgno) from exc
                if d.pgno and d.txnid > since_txnid:
                    stack.append((d.pgno, d.txnid, d.hash, 0, f"table {entry.name!r}"))


def _overflow(fetch: Callable[[int, int, str], bytes],
              bad: Callable[[str, int], CorruptionError], ref: OverflowRef, page_size: int,
              by: str) -> Iterator[tuple[int, bytes]]:
    """The pages of one overflow chain, proven by its value's length and hash."""
    if not btree_format.overflow_ref_valid(ref.length, ref.npages, page_size):
        raise bad(f"overflow reference of {by}: length and page count disagree", ref.pgno)
    value = hashlib.blake2b(digest_size=btree_format.HASH_SIZE)
    length = 0
    pgno = ref.pgno
    for _ in range(ref.npages):
        if pgno == 0:
            raise bad(f"overflow chain of {by} is shorter than its reference", ref.pgno)
        page = fetch(pgno, ref.txnid, f"overflow chain of {by}")
        _c, _t, _p, ptype, _f, _n, aux, nxt = btree_format.HEADER.unpack_from(page)
        if ptype != btree_format.PAGE_OVERFLOW or aux > page_size - btree_format.HEADER_SIZE:
            raise bad(f"overflow chain of {by} reaches a page that is not an overflow page",
                      pgno)
        value.update(page[btree_format.HEADER_SIZE:btree_format.HEADER_SIZE + aux])
        length += aux
        yield pgno, page
        pgno = nxt
    if pgno != 0:
        raise bad(f"overflow chain of {by} is longer than its reference", pgno)
    if length != ref.length or value.digest() != ref.hash:
        raise bad(f"overflow value of {by}: length or hash differs from its reference",
                  ref.pgno)


__all__ = ["walk_newer"]
