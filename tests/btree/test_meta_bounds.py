"""Declared sizes of the data file are bounded before they are used (issue 10, item 4).

A meta page whose record is valid (checksum and all) but names more pages than the file
holds is refused: it can never size the checker's page loop, a page bitmap or the next
allocation. A free-list record naming a page outside the snapshot is refused before a
writer hands it out. Each case runs the real ``lamina`` command in a child process under
an address-space limit (1 GiB) and a file-size limit (64 MiB), so "bounded" means: the
command ends with a clean error and grows no file, instead of minutes of work, gigabytes of
memory or a terabyte-sized sparse file.
"""

from __future__ import annotations

import resource
import signal
import subprocess
from pathlib import Path

import lamina
from lamina.engines.btree import format as BF
from lamina.engines.btree.freelist import decode_free_value, encode_free_value
from lamina.engines.btree.page import Leaf, decode_node, encode_leaf, page_hash
from support import cli, expect_damaged

HUGE = 1 << 31  # pages: 8 TiB at 4 KiB
MEMORY = 1 << 30
FILE_LIMIT = 64 << 20
PS = 4096


def limits() -> None:
    """Child process limits: 1 GiB of address space, no file past 64 MiB (EFBIG)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def lamina_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return cli.run(*args, preexec_fn=limits, timeout=120)


def build(d: Path) -> int:
    """A database with a btree table and two commits; returns the last txnid."""
    with lamina.open(d) as db:
        db.create_table("t")
        with db.write() as txn:
            t = txn.table("t")
            for i in range(300):
                t.put(b"k%05d" % i, b"v" * 40)
        with db.write() as txn:
            t = txn.table("t")
            for i in range(0, 300, 2):
                t.delete(b"k%05d" % i)  # frees pages: the free list is not empty
        return db.store.current_meta().txnid


def read_slot(data: Path, slot: int) -> BF.Meta:
    raw = data.read_bytes()[slot * PS: slot * PS + BF.META_SIZE]
    return BF.Meta.decode(raw)


def write_slot(data: Path, meta: BF.Meta) -> None:
    """Write ``meta`` (checksummed) into its slot of the data file."""
    with open(data, "r+b") as f:
        f.seek(meta.slot * PS)
        f.write(meta.encode())


def with_total(meta: BF.Meta, total: int) -> BF.Meta:
    return BF.Meta(meta.page_size, meta.txnid, meta.commit_seq, meta.slot, total,
                   meta.next_table_id, meta.catalog, meta.freelist, meta.commit_ns)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    err = proc.stderr
    assert err.count("\n") == 1 and err.startswith("lamina: "), err
    return err


def test_meta_naming_more_pages_than_the_file_is_refused(tmp_path: Path) -> None:
    """Both slots name 2^31 pages (valid checksums): check, stat, get and put all end at
    once with CorruptionError (exit 4), and the data file does not grow."""
    d = tmp_path / "db"
    build(d)
    data = d / BF.DATA_FILE_NAME
    for slot in (0, 1):
        write_slot(data, with_total(read_slot(data, slot), HUGE))
    (d / "LOCK").unlink()
    expect_damaged(d, "both meta pages declare 2^31 pages")
    size = data.stat().st_size
    for args in (("check", str(d)), ("stat", str(d)), ("get", str(d), "t", "k00001"),
                 ("put", str(d), "t", "new", "value")):
        proc = lamina_cmd(*args)
        assert proc.returncode == 4, (args, proc.returncode, proc.stdout, proc.stderr)
        assert "no valid meta page" in one_line(proc)
        assert data.stat().st_size == size, args
        assert data.stat().st_blocks * 512 <= size + (1 << 20)


def test_newest_meta_naming_more_pages_falls_back(tmp_path: Path) -> None:
    """Only the newest slot names 2^31 pages: it is an invalid slot like any other, so the
    database reads the previous commit and says so (check exits 7 with a fallback
    finding); a put commits on top of the previous commit, saving the bad slot aside
    first, and grows the file by a few pages only."""
    d = tmp_path / "db"
    txnid = build(d)
    data = d / BF.DATA_FILE_NAME
    newest = read_slot(data, txnid % 2)
    write_slot(data, with_total(newest, HUGE))
    (d / "LOCK").unlink()
    size = data.stat().st_size
    proc = lamina_cmd("check", str(d))
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    assert f"FINDING meta {txnid % 2}: fallback: " in proc.stdout
    assert f"names {HUGE} pages" in proc.stdout
    proc = lamina_cmd("put", str(d), "t", "new", "value")
    assert proc.returncode == 0, proc.stderr
    assert data.stat().st_size < size + 64 * PS
    saved = d / f"{BF.DATA_FILE_NAME}.meta{txnid % 2}-{txnid}.damaged"
    assert saved.read_bytes()[:BF.META_SIZE] == with_total(newest, HUGE).encode()
    with lamina.open(d, create=False, readonly=True) as db:
        assert db.check().ok
        assert db.get("t", b"new") == b"value"
        assert db.store.current_meta().txnid == txnid  # the previous commit + 1


def _rewrite_free_list(d: Path, change: int) -> None:
    """Put page number ``change`` into the first free-list record of the (one-leaf) free
    list of both meta slots' snapshot, re-encoding the leaf and both metas (valid
    checksums and hashes): only the page number is wrong."""
    data = d / BF.DATA_FILE_NAME
    metas = [read_slot(data, s) for s in (0, 1)]
    current = max(metas, key=lambda m: m.txnid)
    root = current.freelist
    assert root.depth == 1, "the test needs a one-leaf free list"
    raw = data.read_bytes()[root.pgno * PS:(root.pgno + 1) * PS]
    node = decode_node(raw, root.pgno, root.txnid)
    assert isinstance(node, Leaf)
    vals = list(node.vals)
    first = vals[0]
    assert isinstance(first, bytes)
    pages = decode_free_value(first)
    pages[0] = change
    vals[0] = encode_free_value(pages)
    page = encode_leaf(Leaf(list(node.keys), vals, node.size), root.pgno, root.txnid, PS)
    with open(data, "r+b") as f:
        f.seek(root.pgno * PS)
        f.write(page)
    freelist = BF.RootDesc(root.pgno, root.depth, root.txnid, root.count, page_hash(page))
    for m in metas:
        write_slot(data, BF.Meta(m.page_size, current.txnid, current.commit_seq, m.slot,
                                 current.total_pages, current.next_table_id, current.catalog,
                                 freelist, current.commit_ns))


def test_free_list_page_outside_the_snapshot_is_never_handed_out(tmp_path: Path) -> None:
    """A free-list record naming page 2^32 - 1: the checker reports it, and a writer
    refuses it (CorruptionError) instead of writing a page 16 TiB into the file."""
    d = tmp_path / "db"
    build(d)
    (d / "LOCK").unlink()
    _rewrite_free_list(d, (1 << 32) - 1)
    expect_damaged(d, "a free-list record names a page outside the file")
    data = d / BF.DATA_FILE_NAME
    size = data.stat().st_size
    proc = lamina_cmd("check", str(d))
    assert proc.returncode == 7 and "free page number out of range" in proc.stdout, proc.stdout
    proc = lamina_cmd("put", str(d), "t", "new", "value")
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    assert "lists page 4294967295" in one_line(proc)
    assert data.stat().st_size == size


def test_the_file_holds_every_page_a_meta_names(tmp_path: Path) -> None:
    """In process: the rule is ``total_pages <= file size // page size``; a normal
    database always satisfies it (a commit extends the file before its meta is written),
    one page short is refused."""
    d = tmp_path / "db"
    txnid = build(d)
    data = d / BF.DATA_FILE_NAME
    newest = read_slot(data, txnid % 2)
    assert newest.total_pages * PS <= data.stat().st_size
    files_pages = data.stat().st_size // PS
    write_slot(data, with_total(newest, files_pages))  # exactly what the file holds: fine
    (d / "LOCK").unlink()
    with lamina.open(d, create=False, readonly=True) as db:
        assert db.store.current_meta().txnid == txnid
        assert db.store.fallback is None
    write_slot(data, with_total(newest, files_pages + 1))  # one page more: refused
    (d / "LOCK").unlink()
    expect_damaged(d, "the newest meta names one page more than the file holds")
    with lamina.open(d, create=False, readonly=True) as db:
        assert db.store.current_meta().txnid == txnid - 1
        fb = db.store.fallback
        assert fb is not None and fb.slot == txnid % 2 and fb.lost_txnid == txnid
        assert "the file holds" in fb.reason
