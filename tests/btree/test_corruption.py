"""Damage detection: a flipped byte in any in-use page is reported with its page number by
reads and by check(); a damaged meta page falls back to the other one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import assert_clean, opened

from lamina.engines.btree import BtreeStore
from lamina.errors import CorruptionError


def build(d: Path) -> tuple[set[int], int, int]:
    """A 1 KiB-page database; returns (in-use pages, page size, txnid of the last commit)."""
    with opened(d, page_size=1024) as store:
        with store.begin_write() as w:
            w.create_table("t")
            w.create_table("u")
            t = w.table("t")
            for i in range(400):
                t.put(b"key%05d" % i, b"v%d" % i * 5)
            t.put(b"huge", b"H" * 3000)  # overflow chain
            w.table("u").put(b"x", b"y")
        with store.begin_write() as w:  # free some pages so the free list is non-empty
            t = w.table("t")
            for i in range(0, 400, 3):
                t.delete(b"key%05d" % i)
        assert_clean(store)
        with store.begin_read() as r:
            pages = {p for p, _ in r.iter_pages()}
            return pages, store.page_size, r.txnid


def read_everything(store: BtreeStore) -> None:
    with store.begin_read() as r:
        for entry in r.catalog():
            t = r.table(entry.name)
            for _ in t.items():
                pass


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def test_every_in_use_page_flip_is_reported(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    pages, ps, _txnid = build(pristine)
    assert len(pages) > 20
    for n, pgno in enumerate(sorted(pages)):
        d = tmp_path / f"c{pgno}"
        shutil.copytree(pristine, d)
        (d / "LOCK").unlink()
        # Alternate between the header and the body of the page.
        flip(d / BtreeStore.DATA_FILE_NAME, pgno * ps + (9 if n % 2 else ps // 2 + 3))
        with opened(d, create=False) as store:
            report = store.check()
            assert not report.ok
            assert any(f.where == f"page {pgno}" for f in report.findings), \
                (pgno, [str(f) for f in report.findings])
            try:
                read_everything(store)
            except CorruptionError as exc:
                assert exc.where == f"page {pgno}", str(exc)
        shutil.rmtree(d)


@pytest.mark.parametrize("which", ["current", "older"])
def test_meta_flip_falls_back(tmp_path: Path, which: str) -> None:
    d = tmp_path / "db"
    _pages, ps, txnid = build(d)
    (d / "LOCK").unlink()
    current_slot = txnid % 2
    slot = current_slot if which == "current" else 1 - current_slot
    flip(d / BtreeStore.DATA_FILE_NAME, slot * ps + 40)
    with opened(d, create=False) as store, store.begin_read() as r:
        if which == "current":
            assert r.txnid == txnid - 1
            assert len(r.table("t")) == 401  # the state before the deleting commit
        else:
            assert r.txnid == txnid
            assert len(r.table("t")) == 401 - 134
    with opened(d, create=False) as store:
        assert_clean(store)  # the writable open rewrote the damaged slot
        with store.begin_write() as w:
            w.table("u").put(b"after", b"repair")
        assert_clean(store)


def test_readonly_open_reports_damaged_meta(tmp_path: Path) -> None:
    d = tmp_path / "db"
    _pages, ps, txnid = build(d)
    (d / "LOCK").unlink()
    flip(d / BtreeStore.DATA_FILE_NAME, (1 - txnid % 2) * ps + 20)
    with opened(d, create=False, readonly=True) as store:
        report = store.check()
        assert [f.where for f in report.findings] == [f"meta {1 - txnid % 2}"]
