"""The page iteration the backup layer builds on, plus stat()."""

from __future__ import annotations

from helpers import assert_clean

from lamina.engines.btree import BtreeStore
from lamina.engines.btree import format as F


def test_iter_pages_and_changed_walk(small_store: BtreeStore) -> None:
    s = small_store
    with s.begin_write() as w:
        w.create_table("t")
        w.table("t").bulk_load((b"%06d" % i, b"v" * 30 + b"%d" % i) for i in range(3000))
        w.table("t").put(b"999999", b"O" * 5000)
    with s.begin_read() as r:
        base = r.txnid
        full = dict(r.iter_pages())
        assert sorted(full) == list(full)  # page order
        assert set(full) == {p for p, _ in r.walk_changed_pages(0)}
        assert not (set(full) & r.free_pages())
        assert len(full) + len(r.free_pages()) == r.meta.total_pages - F.META_PAGES
    with s.begin_write() as w:
        w.table("t").put(b"001500", b"changed")
    with s.begin_read() as r:
        changed = dict(r.walk_changed_pages(base))
        assert 0 < len(changed) < 12  # a path per tree, not a scan
        for pgno, page in changed.items():
            txnid = int.from_bytes(page[8:16], "little")
            assert txnid > base, pgno
        everything = dict(r.iter_pages())
        # Every page newer than the base is found by the walk.
        newer = {p for p, pg in everything.items() if int.from_bytes(pg[8:16], "little") > base}
        assert newer == set(changed)
    st = s.stat()
    assert st["tables"]["t"]["entries"] == 3001
    assert st["tables"]["t"]["depth"] >= 3
    assert st["pages_by_type"]["overflow"] == 6  # ceil(5000 / (1024 - 32))
    assert st["page_size"] == 1024
    assert_clean(s)
