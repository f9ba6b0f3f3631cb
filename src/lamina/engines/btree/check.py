"""The btree checker and ``stat``: full verification of one snapshot, straight from disk.

The checker reads every page with its own decode (never the page cache) and proves:
both meta pages valid; every page number in range; every page reachable exactly once or
free exactly once (no leaks, no double use); every page checksum, page number and txnid;
every Merkle hash (each branch record's hash equals the child page's blake2b-128, the
meta's root hash equals the catalog root's); child txnid <= parent txnid <= meta txnid;
keys strictly increasing within pages and inside their parent's separator bounds; subtree
counts and depths; overflow chains (checksums, length, value hash); catalog entries and
free-list records decode. It never raises for damage: it reports findings.
"""

from __future__ import annotations

import operator
import os
import struct
from collections.abc import Callable, Sequence
from itertools import accumulate, islice, pairwise
from pathlib import Path
from typing import Any

from lamina.core import fileio
from lamina.core.catalog import ENGINE_BTREE, CatalogEntry
from lamina.core.check import CheckReport, Finding
from lamina.engines.btree import format as btree_format
from lamina.engines.btree import tree
from lamina.engines.btree.fallback import MetaFallback, detect
from lamina.engines.btree.freelist import decode_free_value
from lamina.engines.btree.page import (
    Branch,
    Leaf,
    OverflowRef,
    decode_node,
    page_hash,
    verify_header,
)
from lamina.engines.btree.pager import Pager, read_meta_slots
from lamina.engines.btree.txn import ReadTxn
from lamina.errors import DataError

#: Findings listed in a report; more are counted in ``stats['findings_not_listed']``.
MAX_FINDINGS = 1000

_first = operator.itemgetter(0)


class _Checker:
    def __init__(self, pager: Pager, meta: btree_format.Meta, report: CheckReport) -> None:
        self.pager = pager
        self.ps = pager.page_size
        self.meta = meta
        self.report = report
        self.owner: dict[int, str] = {}
        self.free: set[int] = set()
        self.by_type = {"branch": 0, "leaf": 0, "overflow": 0}
        self.tables: list[tuple[str, btree_format.RootDesc]] = []
        self.table_ids: dict[int, str] = {}

    def find(self, table: str | None, where: str, what: str, expected: object = "",
             found: object = "") -> None:
        # Bounded: a badly damaged (or hostile) file would otherwise produce one finding per
        # page; the first ones locate the damage, the rest are only counted.
        if len(self.report.findings) < MAX_FINDINGS:
            self.report.findings.append(Finding(table, where, what, str(expected), str(found)))
        else:
            self.report.stats["findings_not_listed"] = (
                self.report.stats.get("findings_not_listed", 0) + 1)

    def claim(self, pgno: int, label: str) -> bool:
        if pgno < btree_format.FIRST_DATA_PAGE or pgno >= self.meta.total_pages:
            self.find(label, f"page {pgno}", "page number outside the data pages",
                      f"{btree_format.FIRST_DATA_PAGE}..{self.meta.total_pages - 1}", pgno)
            return False
        if pgno in self.owner:
            self.find(label, f"page {pgno}", "page referenced twice", self.owner[pgno], label)
            return False
        self.owner[pgno] = label
        return True

    # ---------------------------------------------------------------- trees
    def tree(self, label: str, desc: btree_format.RootDesc,
             on_entry: Callable[[bytes, bytes | OverflowRef], None] | None = None) -> None:
        if desc.pgno == 0:
            if desc.count or desc.depth or desc.hash != btree_format.ZERO_HASH:
                self.find(label, "root", "empty tree with a non-empty descriptor")
            return
        if desc.txnid > self.meta.txnid:
            self.find(label, f"page {desc.pgno}", "root txnid newer than the snapshot",
                      f"<= {self.meta.txnid}", desc.txnid)
        count = self.visit(label, desc.pgno, desc.txnid, desc.hash, None, None, desc.depth,
                           self.meta.txnid, on_entry)
        if count is not None and count != desc.count:
            self.find(label, f"page {desc.pgno}", "tree key count differs from descriptor",
                      desc.count, count)

    def visit(self, label: str, pgno: int, txnid: int, digest: bytes, lo: bytes | None,
              hi: bytes | None, level: int, parent_txnid: int,
              on_entry: Callable[[bytes, bytes | OverflowRef], None] | None) -> int | None:
        where = f"page {pgno}"
        if not self.claim(pgno, label):
            return None
        page = self.pager.read(pgno)
        if len(page) < self.ps:
            self.find(label, where, "page is past the end of the file")
            return None
        if txnid > parent_txnid:
            self.find(label, where, "child txnid newer than its parent", f"<= {parent_txnid}",
                      txnid)
        if on_entry is None and len(page) > 21 and page[20] == btree_format.PAGE_LEAF:
            return self.leaf(label, pgno, txnid, page, digest, lo, hi, level)
        try:
            node = decode_node(page, pgno, txnid, self.pager.path)
        except DataError as exc:
            self.find(label, where, getattr(exc, "what", str(exc)))
            return None
        if page_hash(page) != digest:
            self.find(label, where, "Merkle hash differs from the parent's record",
                      digest.hex(), page_hash(page).hex())
        if isinstance(node, Leaf):
            self.by_type["leaf"] += 1
            if level != 1:
                self.find(label, where, "leaf at the wrong depth", "branch", "leaf")
            self.keys_in_order(label, where, node.keys, lo, hi)
            if not node.keys:
                self.find(label, where, "empty leaf")
            for key, val in zip(node.keys, node.vals):
                if isinstance(val, OverflowRef):
                    self.overflow(label, val, txnid)
                if on_entry is not None:
                    on_entry(key, val)
            return len(node.keys)
        assert isinstance(node, Branch)
        self.by_type["branch"] += 1
        if level <= 1:
            self.find(label, where, "branch at leaf depth")
            return None
        self.keys_in_order(label, where, node.keys, lo, hi)
        n = len(node.kids)
        for i, kid in enumerate(node.kids):
            assert type(kid) is tuple
            klo = node.keys[i - 1] if i > 0 else lo
            khi = node.keys[i] if i < n - 1 else hi
            got = self.visit(label, kid[0], kid[1], node.hashes[i], klo, khi, level - 1, txnid,
                             on_entry)
            if got is not None and got != node.counts[i]:
                self.find(label, f"page {kid[0]}", "subtree count differs from parent's record",
                          node.counts[i], got)
        return sum(node.counts)

    def leaf(self, label: str, pgno: int, txnid: int, page: bytes, digest: bytes,
             lo: bytes | None, hi: bytes | None, level: int) -> int | None:
        """A table leaf, checked from its bytes without building a node: header, entry
        bounds, key order and separators, the Merkle hash, overflow chains. Returns its key
        count (None when it does not decode)."""
        where = f"page {pgno}"
        try:
            _t, _ty, flags, n, _aux, _nxt = verify_header(page, pgno, txnid, self.pager.path)
            lens = struct.unpack_from(f"<{2 * n}H", page, btree_format.HEADER_SIZE)
        except (DataError, struct.error) as exc:
            self.find(label, where, getattr(exc, "what", f"undecodable page: {exc}"))
            return None
        first = btree_format.HEADER_SIZE + 4 * n
        klens = lens[:n]
        # Batch parsing: without overflow values no length has its flag bit, and keys of
        # one length (the common case) are cut by struct in one C loop.
        vbytes = sum(lens[n:]) if not flags & 1 else sum([ln & 0x7FFF for ln in lens[n:]])
        k = klens[0] if n else 0
        same = n > 0 and klens.count(k) == n
        kend = first + k * n if same else first + sum(klens)
        end = kend + vbytes
        if end > len(page):
            self.find(label, where, "undecodable page: entries run past the page")
            return None
        refs: list[OverflowRef] = []
        if flags & 1:
            voff = kend
            for ln in lens[n:]:
                size = ln & 0x7FFF
                if ln & btree_format.VAL_OVERFLOW:
                    if size != btree_format.OVERFLOW_REF_SIZE:
                        self.find(label, where, "undecodable page: bad overflow reference")
                        return None
                    refs.append(OverflowRef.decode(page[voff:voff + size]))
                voff += size
        if page_hash(page) != digest:
            self.find(label, where, "Merkle hash differs from the parent's record",
                      digest.hex(), page_hash(page).hex())
        self.by_type["leaf"] += 1
        if level != 1:
            self.find(label, where, "leaf at the wrong depth", "branch", "leaf")
        if not n:
            self.find(label, where, "empty leaf")
            return 0
        if same and k:
            keys: Sequence[bytes] = list(map(_first, struct.iter_unpack(f"{k}s",
                                                                         page[first:kend])))
        else:
            offs = list(accumulate(klens, initial=first))
            keys = [page[a:b] for a, b in pairwise(offs)]
        self.keys_in_order(label, where, keys, lo, hi)
        for ref in refs:
            self.overflow(label, ref, txnid)
        return n

    def keys_in_order(self, label: str, where: str, keys: Sequence[bytes], lo: bytes | None,
                      hi: bytes | None) -> None:
        if not all(map(operator.lt, keys, islice(keys, 1, None))):
            for a, b in pairwise(keys):
                if not a < b:
                    self.find(label, where, "keys out of order", f"< {b!r}", a)
                    return
        if keys and lo is not None and keys[0] < lo:
            self.find(label, where, "key below the parent's separator", f">= {lo!r}", keys[0])
        if keys and hi is not None and keys[-1] >= hi:
            self.find(label, where, "key above the parent's separator", f"< {hi!r}", keys[-1])

    def overflow(self, label: str, ref: OverflowRef, leaf_txnid: int) -> None:
        if ref.txnid > leaf_txnid:
            self.find(label, f"page {ref.pgno}", "overflow txnid newer than its leaf",
                      f"<= {leaf_txnid}", ref.txnid)
        if not btree_format.overflow_ref_valid(ref.length, ref.npages, self.ps):
            self.find(label, f"page {ref.pgno}", "overflow reference length and page count "
                      "disagree", btree_format.overflow_pages(ref.length, self.ps), ref.npages)
            return
        parts: list[bytes] = []
        pgno = ref.pgno
        for i in range(ref.npages):
            if not self.claim(pgno, label):
                return
            page = self.pager.read(pgno)
            try:
                _t, ptype, _f, _n, aux, nxt = verify_header(page, pgno, ref.txnid,
                                                            self.pager.path)
            except DataError as exc:
                self.find(label, f"page {pgno}", getattr(exc, "what", str(exc)))
                return
            if ptype != btree_format.PAGE_OVERFLOW or aux > self.ps - btree_format.HEADER_SIZE:
                self.find(label, f"page {pgno}", "bad overflow page header")
                return
            if (nxt == 0) != (i == ref.npages - 1):
                self.find(label, f"page {pgno}", "overflow chain length differs from its record")
                return
            self.by_type["overflow"] += 1
            parts.append(page[btree_format.HEADER_SIZE:btree_format.HEADER_SIZE + aux])
            pgno = nxt
        value = b"".join(parts)
        if len(value) != ref.length or page_hash(value) != ref.hash:
            self.find(label, f"page {ref.pgno}", "overflow value length or hash mismatch")

    # ---------------------------------------------------------------- record checks
    def catalog_entry(self, key: bytes, val: bytes | OverflowRef) -> None:
        if not isinstance(val, bytes):
            self.find("catalog", "entry", "catalog entry stored as an overflow value", "", key)
            return
        try:
            entry = CatalogEntry.decode(key, val)
        except DataError as exc:
            self.find("catalog", f"entry {key!r}", f"undecodable: {exc}")
            return
        if entry.table_id in self.table_ids:
            self.find("catalog", f"entry {key!r}", "table id used twice",
                      self.table_ids[entry.table_id], entry.name)
        self.table_ids[entry.table_id] = entry.name
        if entry.table_id >= self.meta.next_table_id:
            self.find("catalog", f"entry {key!r}", "table id not below the meta's next id",
                      f"< {self.meta.next_table_id}", entry.table_id)
        if entry.engine == ENGINE_BTREE:
            try:
                self.tables.append((entry.name, btree_format.RootDesc.decode(entry.state)))
            except DataError as exc:
                self.find(entry.name, "catalog entry", f"bad root descriptor: {exc}")

    def free_record(self, key: bytes, val: bytes | OverflowRef) -> None:
        if len(key) != btree_format.FREE_KEY.size or not isinstance(val, bytes):
            self.find("free list", f"record {key!r}", "malformed free-list record")
            return
        txnid, _chunk = btree_format.FREE_KEY.unpack(key)
        if txnid > self.meta.txnid:
            self.find("free list", f"record {key.hex()}", "freed by a future txnid",
                      f"<= {self.meta.txnid}", txnid)
        try:
            pages = decode_free_value(val)
        except DataError as exc:
            self.find("free list", f"record {key.hex()}", str(exc))
            return
        for pgno in pages:
            if pgno < btree_format.FIRST_DATA_PAGE or pgno >= self.meta.total_pages:
                self.find("free list", f"page {pgno}", "free page number out of range")
            elif pgno in self.free:
                self.find("free list", f"page {pgno}", "page free twice")
            else:
                self.free.add(pgno)

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        meta = self.meta
        self.tree("catalog", meta.catalog, self.catalog_entry)
        self.tree("free list", meta.freelist, self.free_record)
        for name, desc in self.tables:
            self.tree(name, desc)
        for pgno in range(btree_format.FIRST_DATA_PAGE, meta.total_pages):
            used = pgno in self.owner
            free = pgno in self.free
            if used and free:
                self.find(self.owner[pgno], f"page {pgno}", "page both in use and free")
            elif not used and not free:
                self.find(None, f"page {pgno}", "leaked page: neither reachable nor free")
        size = fileio.file_size(self.pager.fd)
        if size < meta.total_pages * self.ps:
            self.find(None, "file", "file shorter than the meta's page count",
                      meta.total_pages * self.ps, size)
        self.report.stats.update({
            "txnid": meta.txnid, "commit_seq": meta.commit_seq, "page_size": self.ps,
            "total_pages": meta.total_pages, "file_size": size,
            "pages_by_type": dict(self.by_type), "free_pages": len(self.free),
            "tables": len(self.table_ids), "root_hash": meta.root_hash.hex(),
        })


def fallback_finding(fb: MetaFallback) -> Finding:
    """The check finding of a meta fallback (``what`` starts with ``fallback:``)."""
    return Finding(None, f"meta {fb.slot}", f"fallback: {fb.describe()}",
                   f"txnid {fb.lost_txnid}", f"txnid {fb.current_txnid}")


def check_store(pager: Pager, begin_read: Callable[[], ReadTxn],
                fallback: MetaFallback | None = None) -> CheckReport:
    """Check both meta pages of ``pager``'s data file, then the whole snapshot of a read
    transaction taken with ``begin_read`` (so writers may go on meanwhile); returns the
    report. Damage is reported as findings, never raised; LockedError (no reader slot) and
    StorageError pass through.

    A fallback the slots show (the newest slot is invalid, reads use the previous
    commit) is a finding whose ``what`` starts with ``fallback:``; any other invalid slot
    an "invalid meta page" finding. The fallback the store found when it opened
    (``fallback``) is also reported in ``stats["fallback"]``: once a writable open saved
    the damaged slot aside and rewrote it, that is all that remains of it (a crash that
    tore a meta write leaves the same bytes, and a recovered database checks clean)."""
    report = CheckReport()
    try:
        found = read_meta_slots(pager.fd, pager.path)
    except DataError as exc:
        report.findings.append(Finding(None, "meta 0, meta 1", f"no usable meta page: {exc}"))
        return report
    with begin_read() as txn:
        # A fallback only if the reads use an older commit than the damaged slot held
        # (with other processes open, readers use the lock file's published meta).
        now = detect(pager.path, found.current, found.slots, found.raw,
                     reading_txnid=txn.meta.txnid)
        if now is not None:
            report.findings.append(fallback_finding(fallback if fallback is not None
                                                    and fallback.slot == now.slot else now))
        for slot, m in enumerate(found.slots):
            if not isinstance(m, btree_format.Meta) and (now is None or now.slot != slot):
                report.findings.append(Finding(None, f"meta {slot}",
                                               f"invalid meta page: {m}"))
        fb = fallback or now
        if fb is not None:
            report.stats["fallback"] = fb.to_json()
        _Checker(pager, txn.meta, report).run()
    return report


def check_pages(path: Path, meta: btree_format.Meta) -> CheckReport:
    """Check the snapshot ``meta`` describes in the page file at ``path``, which need not be
    part of a database (no lock file, no identity; its meta pages are not read): the whole
    checker above, from ``meta``'s roots. Used to prove a backup chain's assembled pages
    (``lamina verify --deep``, ``combine_chain``). Raises StorageError if the file cannot
    be opened; damage is reported as findings.
    """
    report = CheckReport()
    fd = fileio.open_fd(path, os.O_RDONLY)
    pager = Pager(path, fd, meta.page_size, readonly=True, cache_bytes=0)
    try:
        _Checker(pager, meta, report).run()
    finally:
        pager.close()
    return report


def stat_store(pager: Pager, txn: ReadTxn) -> dict[str, Any]:
    """Figures of ``txn``'s snapshot of ``pager``'s data file (walks the trees through the
    page cache; the file size is the file's now). Raises CorruptionError for a damaged
    tree, StorageError."""
    meta = txn.meta
    load = txn._load
    by_type = {"meta": btree_format.META_PAGES, "branch": 0, "leaf": 0, "overflow": 0,
               "free": 0}

    def walk(desc: btree_format.RootDesc) -> dict[str, int]:
        pages = 0
        for node, _d in tree.iter_nodes(load, tree.TreeState(desc)):
            pages += 1
            if isinstance(node, Leaf):
                by_type["leaf"] += 1
                for v in node.vals:
                    if isinstance(v, OverflowRef):
                        by_type["overflow"] += v.npages
                        pages += v.npages
            else:
                by_type["branch"] += 1
        return {"entries": desc.count, "depth": desc.depth, "pages": pages}

    tables: dict[str, Any] = {}
    catalog_stat = walk(meta.catalog)
    walk(meta.freelist)
    for entry in txn.catalog():
        if entry.engine == ENGINE_BTREE:
            tables[entry.name] = walk(btree_format.RootDesc.decode(entry.state))
        else:
            tables[entry.name] = {"engine": entry.engine}
    free = len(txn.free_pages())
    by_type["free"] = free
    btree_tables = [t for t in tables.values() if "depth" in t]
    return {
        "txnid": meta.txnid, "commit_seq": meta.commit_seq, "page_size": meta.page_size,
        "file_size": fileio.file_size(pager.fd), "total_pages": meta.total_pages,
        "free_pages": free, "pages_by_type": by_type,
        "depth": max([t["depth"] for t in btree_tables] + [catalog_stat["depth"]]),
        "entries": sum(t["entries"] for t in btree_tables),
        "catalog_entries": catalog_stat["entries"], "root_hash": meta.root_hash.hex(),
        "tables": tables,
    }

