"""The checker reads table leaves from their bytes (no node objects): keys of one length
are cut in one batch, keys of mixed lengths one by one; either way a leaf whose keys were
reordered and re-checksummed is reported (key order and the Merkle hash), and a clean
database of either shape checks clean."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import lamina
from lamina.engines.btree import DATA_FILE_NAME
from lamina.engines.btree import format as BF
from lamina.engines.btree.page import checksum

PS = 1024


def _keys(shape: str) -> list[bytes]:
    if shape == "fixed":
        return [b"%08d" % i for i in range(600)]
    return [b"k" + b"%d" % i * (1 + i % 3) for i in range(600)]


def _build(path: Path, shape: str) -> None:
    with lamina.open(path, page_size=PS) as db:
        db.create_table("t")
        with db.write() as w:
            for k in _keys(shape):
                w.table("t").put(k, b"v" * 20)
            w.table("t").put(b"zz-big", b"B" * 3000)  # an overflow value in a leaf


def _swap_first_keys(data: Path) -> int:
    """Swap the first two keys of a table leaf (and their lengths; its checksum fixed);
    returns the page number."""
    raw = bytearray(data.read_bytes())
    for pgno in range(BF.FIRST_DATA_PAGE, len(raw) // PS):
        page = raw[pgno * PS:(pgno + 1) * PS]
        _c, _t, _p, ptype, _f, n, _a, _x = BF.HEADER.unpack_from(page)
        if ptype != BF.PAGE_LEAF or n < 2:
            continue
        k0, k1 = struct.unpack_from("<2H", page, BF.HEADER_SIZE)
        first = BF.HEADER_SIZE + 4 * n
        a, b = bytes(page[first:first + k0]), bytes(page[first + k0:first + k0 + k1])
        if not (a.startswith(b"k") or a[:1].isdigit()):
            continue
        page[first:first + k0 + k1] = b + a
        struct.pack_into("<2H", page, BF.HEADER_SIZE, k1, k0)
        struct.pack_into("<Q", page, 0, checksum(bytes(page)))
        raw[pgno * PS:(pgno + 1) * PS] = page
        data.write_bytes(bytes(raw))
        return pgno
    raise AssertionError("no leaf to damage")


@pytest.mark.parametrize("shape", ["fixed", "mixed"])
def test_clean_database_checks_clean(tmp_path: Path, shape: str) -> None:
    _build(tmp_path / "db", shape)
    with lamina.open(tmp_path / "db", create=False) as db:
        report = db.check()
        assert report.ok, report.findings
        assert report.stats["pages_by_type"]["overflow"] == BF.overflow_pages(3000, PS)


@pytest.mark.unchecked_db("the test reorders a leaf's keys on purpose")
@pytest.mark.parametrize("shape", ["fixed", "mixed"])
def test_reordered_leaf_is_reported(tmp_path: Path, shape: str) -> None:
    _build(tmp_path / "db", shape)
    pgno = _swap_first_keys(tmp_path / "db" / DATA_FILE_NAME)
    os.sync()
    with lamina.open(tmp_path / "db", create=False, readonly=True) as db:
        report = db.check()
    found = {(f.where, f.what) for f in report.findings}
    assert (f"page {pgno}", "keys out of order") in found, report.findings
    assert (f"page {pgno}", "Merkle hash differs from the parent's record") in found
