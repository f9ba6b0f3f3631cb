"""``Table.bulk_load`` streams: its memory is bounded whatever the size (every full page goes
to the file as it is built, not kept until commit), and the copy-on-write contract holds
all the same: nothing is visible before commit, an abort or a crash leaves the committed
state intact (the pages written are free space), a failed load hands its pages back, and
pages already written are read back from the file by later changes in the same
transaction."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import assert_clean, opened

from lamina.engines.btree import BtreeStore
from lamina.errors import UsageError

#: A child process that bulk-loads ``MB`` megabytes of sorted rows into a new database in
#: one transaction and prints its peak RSS as JSON: ``VmHWM`` (KiB), the high-water mark of
#: this process image. Not ``ru_maxrss``: Linux carries that over fork and exec, so a child
#: of a large pytest worker would report the worker's RSS.
LOAD_SCRIPT = r"""
import json, sys, time
import lamina

def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))

path, mb = sys.argv[1], int(sys.argv[2])
value = b"v" * 900
n = mb * (1 << 20) // (15 + len(value))
start = time.monotonic()
with lamina.open(path) as db:
    db.create_table("t")
    with db.write() as w:
        loaded = w.table("t").bulk_load((b"key%012d" % i, value) for i in range(n))
print(json.dumps({"rows": n, "loaded": loaded, "seconds": time.monotonic() - start,
                  "peak_kib": peak_kib()}))
"""

#: Bulk-load rows and die (``os._exit``, no clean-up: a crash) halfway through.
CRASH_SCRIPT = r"""
import os, sys
import lamina

def rows():
    for i in range(40_000):
        if i == 30_000:
            os._exit(3)  # about 27 MB of pages already written, no commit
        yield b"key%08d" % i, b"w" * 900

with lamina.open(sys.argv[1]) as db:
    db.create_table("new")
    with db.write() as w:
        w.table("new").bulk_load(rows())
"""

MB = 300


@pytest.mark.slow
def test_bulk_load_memory_is_bounded(tmp_path: Path) -> None:
    """300 MB in one bulk load peak well under 300 MB of RSS (it was 450 MB: every page and
    its decoded node were kept until commit; 1.1 GB peaked at 1.5 GB)."""
    db = tmp_path / "db"
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(db), str(MB)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    print(f"bulk_load {MB} MB: peak RSS {got['peak_kib'] / 1024:.0f} MiB, "
          f"{got['seconds']:.1f} s")
    assert got["loaded"] == got["rows"]
    assert got["peak_kib"] < 128 * 1024, got
    assert (db / BtreeStore.DATA_FILE_NAME).stat().st_size > MB << 20
    with opened(db, create=False, readonly=True) as store, store.begin_read() as r:
        t = r.table("t")
        assert len(t) == got["rows"]
        last = b"key%012d" % (got["rows"] - 1)
        assert [k for k, _ in t.items(last)] == [last]
        assert t.get(b"key%012d" % 12345) == b"v" * 900
    # The teardown check walks the whole tree (support.checked).


def _committed(store: BtreeStore) -> tuple[int, bytes, int]:
    with store.begin_read() as r:
        return r.txnid, r.root_hash, r.meta.total_pages


def test_an_aborted_bulk_load_leaves_the_committed_state(store: BtreeStore) -> None:
    with store.begin_write() as w:
        w.create_table("keep")
        w.table("keep").put(b"k", b"v")
        w.create_table("t")
    before = _committed(store)
    data = store.path
    size = data.stat().st_size
    n = 6000
    with pytest.raises(RuntimeError, match="stop"), store.begin_write() as w:
        assert w.table("t").bulk_load((b"%06d" % i, b"x" * 800) for i in range(n)) == n
        assert len(w.table("t")) == n
        # Written as they were built: the file grew before any commit ...
        assert data.stat().st_size >= size + n * 800
        with store.begin_read() as r:  # ... and no one sees them.
            assert len(r.table("t")) == 0 and r.root_hash == before[1]
        raise RuntimeError("stop")
    assert _committed(store) == before
    assert_clean(store)  # pages past the committed count are not the checker's business
    grown = data.stat().st_size
    # The next writer reuses that space: the same load, committed, needs no more file
    # (but for its catalog and free-list pages).
    with store.begin_write() as w:
        w.table("t").bulk_load((b"%06d" % i, b"y" * 800) for i in range(n))
    assert data.stat().st_size <= grown + 8 * store.page_size
    with store.begin_read() as r:
        assert len(r.table("t")) == n and r.table("t").get(b"%06d" % 17) == b"y" * 800
        assert r.table("keep").get(b"k") == b"v"
    assert_clean(store)


def test_a_failed_bulk_load_hands_its_pages_back(store: BtreeStore) -> None:
    """Pages taken from the free list and from the file end by a load that fails midway
    (keys out of order, or the iterator raising) are free again when the transaction goes
    on and commits: no page leaks, no page is lost from the free list."""
    with store.begin_write() as w:
        w.create_table("old")
        w.table("old").bulk_load((b"%06d" % i, b"o" * 700) for i in range(3000))
        w.create_table("t")
    with store.begin_write() as w:
        w.drop_table("old")  # its pages go to the free list, reusable by the next txn

    def broken(n: int, error: OSError) -> Iterator[tuple[bytes, bytes]]:
        for i in range(n):
            yield b"%06d" % i, b"z" * 700
        raise error

    with store.begin_write() as w:
        t = w.table("t")
        unsorted = [(b"%06d" % i, b"z" * 700) for i in range(4000)] + [(b"000000", b"")]
        with pytest.raises(UsageError, match="strictly increasing"):
            t.bulk_load(iter(unsorted))
        with pytest.raises(OSError, match="source went away"):
            t.bulk_load(broken(5000, OSError("source went away")))
        assert len(t) == 0
        t.put(b"after", b"a")
    with store.begin_read() as r:
        assert dict(r.table("t").items()) == {b"after": b"a"}
    assert_clean(store)
    before = _committed(store)[2]
    with store.begin_write() as w:  # the pages handed back are reused, not the file end
        w.create_table("u")
        w.table("u").bulk_load((b"%06d" % i, b"r" * 700) for i in range(3000))
    assert _committed(store)[2] <= before + 8
    assert_clean(store)


def test_pages_written_by_a_load_are_read_back_in_the_same_transaction(
        store: BtreeStore) -> None:
    """Changes after a bulk load in the same transaction read its pages (leaves, branches,
    overflow chains) back from the file; none is taken from or put in the node cache under
    the uncommitted txnid."""
    rows = {b"%05d" % i: (b"big" * 3000 if i % 97 == 0 else b"%d" % i) for i in range(5000)}
    with store.begin_write() as w:
        w.create_table("t")
        t = w.table("t")
        assert t.bulk_load(sorted(rows.items())) == len(rows)
        for k in (b"00000", b"00097", b"02500", b"04999"):
            assert t.get(k) == rows[k]
        for i in range(0, 5000, 3):  # replaces leaves written to the file (and overflows)
            k = b"%05d" % i
            if i % 2:
                t.put(k, b"new" * (i % 5))
                rows[k] = b"new" * (i % 5)
            else:
                assert t.delete(k)
                del rows[k]
        assert dict(t.items()) == rows
    with store.begin_read() as r:
        assert dict(r.table("t").items()) == rows
    assert_clean(store)


def test_a_crash_during_a_bulk_load_leaves_the_committed_state(tmp_path: Path) -> None:
    import lamina

    db = tmp_path / "db"
    with lamina.open(db) as d:
        d.create_table("t")
        d.put("t", b"old", b"value")
        with d.read() as r:
            root = r.root_hash
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(db)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 3, proc.stderr
    with lamina.open(db) as d:
        with d.read() as r:
            assert r.root_hash != root  # "new" was created (committed) before the load
            assert len(r.table("new")) == 0
            assert dict(r.table("t").items()) == {b"old": b"value"}
        assert d.check().ok
        with d.write() as w:
            w.drop_table("t")
            w.create_table("t")
            w.table("t").bulk_load((b"k%06d" % i, b"n" * 100) for i in range(20_000))
        with d.read() as r:
            assert len(r.table("t")) == 20_000
        assert d.check().ok
