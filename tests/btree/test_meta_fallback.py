"""A damaged newest meta slot: reads fall back to the previous commit, and the database says
so (issue 10, item 6).

``BtreeStore.fallback`` keeps what the open found; ``stat()`` reports it under
``btree.fallback``; ``check()`` reports a finding whose ``what`` starts with ``fallback:``
while the damage is on disk (so ``lamina check`` exits 7); every command that opens the
database prints one warning line on stderr; a writable open saves the damaged slot's page as
``data.lamina.meta<slot>-<txnid>.damaged`` before it rewrites the slot; a read-only open
writes nothing. Damage to the *older* slot loses nothing and is no fallback.
"""

from __future__ import annotations

import os
from pathlib import Path

import lamina
from lamina.engines.btree import format as BF
from support import cli, expect_damaged

PS = 4096


def build(d: Path) -> int:
    """Two commits: ``a`` alone, then ``b`` added. Returns the last txnid."""
    with lamina.open(d) as db:
        db.create_table("t")
        db.put("t", b"a", b"1")
        db.put("t", b"b", b"2")
        return db.store.current_meta().txnid


def flip(path: Path, offset: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def snapshot_dir(d: Path) -> dict[str, bytes]:
    """Every file of the directory but the lock file, with its bytes."""
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if n != "LOCK"}


def test_newest_slot_damage_is_reported_and_saved_before_it_is_reused(tmp_path: Path) -> None:
    d = tmp_path / "db"
    txnid = build(d)
    slot = txnid % 2
    data = d / BF.DATA_FILE_NAME
    flip(data, slot * PS + 100)  # inside the catalog root: only the checksum notices
    (d / "LOCK").unlink()
    damaged_page = data.read_bytes()[slot * PS:(slot + 1) * PS]
    before = snapshot_dir(d)

    # Read-only: the previous commit, reported, nothing written.
    with lamina.open(d, create=False, readonly=True) as db:
        assert db.get("t", b"a") == b"1" and db.get("t", b"b") is None
        fb = db.store.fallback
        assert fb is not None
        assert (fb.slot, fb.lost_txnid, fb.current_slot, fb.current_txnid) == (
            slot, txnid, 1 - slot, txnid - 1)
        assert fb.saved is None and "checksum" in fb.reason
        assert db.stat()["btree"]["fallback"] == fb.to_json()
        report = db.check()
        falls = [f for f in report.findings if f.what.startswith("fallback:")]
        assert [f.where for f in falls] == [f"meta {slot}"], report.findings
        assert f"txnid {txnid}" in falls[0].what and BF.DATA_FILE_NAME in falls[0].what
    assert snapshot_dir(d) == before

    # The CLI: check exits 7 naming file, slot and txnid; any command warns once.
    proc = cli.run("check", str(d))
    assert proc.returncode == 7, (proc.stdout, proc.stderr)
    assert f"FINDING meta {slot}: fallback: {BF.DATA_FILE_NAME} meta slot {slot}" in proc.stdout
    warning = proc.stderr.splitlines()
    assert len(warning) == 1 and f"meta slot {slot}, holding txnid {txnid}" in warning[0]
    proc = cli.run("get", str(d), "t", "a")
    assert proc.returncode == 0 and proc.stdout == "1\n" and proc.stderr.count("\n") == 1
    assert snapshot_dir(d) == before

    # A writable open saves the damaged page aside (durably, byte for byte), then repairs.
    with lamina.open(d, create=False) as db:
        saved = d / f"{BF.DATA_FILE_NAME}.meta{slot}-{txnid}.damaged"
        assert saved.read_bytes() == damaged_page
        fb = db.store.fallback
        assert fb is not None and fb.saved == saved
        assert db.stat()["btree"]["fallback"]["saved"] == saved.name
        report = db.check()
        assert report.ok, report.findings  # repaired: the evidence is the saved file
        assert report.stats["fallback"]["saved"] == saved.name
        db.put("t", b"c", b"3")  # txnid again: written into the slot that was damaged
        assert db.store.current_meta().txnid == txnid
    assert data.read_bytes()[slot * PS:(slot + 1) * PS] != damaged_page
    assert saved.read_bytes() == damaged_page

    # Later opens see two valid slots: no fallback, no second copy.
    with lamina.open(d, create=False) as db:
        assert db.store.fallback is None and "fallback" not in db.stat()["btree"]
        assert db.check().ok and db.get("t", b"c") == b"3"
    assert sorted(n for n in os.listdir(d) if n.endswith(".damaged")) == [saved.name]


def test_older_slot_damage_is_no_fallback(tmp_path: Path) -> None:
    d = tmp_path / "db"
    txnid = build(d)
    older = 1 - txnid % 2
    data = d / BF.DATA_FILE_NAME
    flip(data, older * PS + 100)
    (d / "LOCK").unlink()
    damaged_page = data.read_bytes()[older * PS:(older + 1) * PS]
    with lamina.open(d, create=False, readonly=True) as db:
        assert db.get("t", b"b") == b"2"  # the newest commit: nothing lost
        assert db.store.fallback is None and "fallback" not in db.stat()["btree"]
        report = db.check()
        assert [(f.where, f.what.split(":")[0]) for f in report.findings] == [
            (f"meta {older}", "invalid meta page")]
    with lamina.open(d, create=False) as db:  # repaired, the damaged page kept all the same
        assert db.store.fallback is None and db.check().ok
    saved = d / f"{BF.DATA_FILE_NAME}.meta{older}-{txnid - 1}.damaged"
    assert saved.read_bytes() == damaged_page


def test_fallback_with_a_damaged_txnid_field(tmp_path: Path) -> None:
    """The flipped bit is in the damaged slot's own txnid: its commit seq (newer than the
    current one's) still tells a lost newest commit from a damaged older slot."""
    d = tmp_path / "db"
    txnid = build(d)
    slot = txnid % 2
    flip(d / BF.DATA_FILE_NAME, slot * PS + 16 + 5)  # a high byte of the txnid
    (d / "LOCK").unlink()
    expect_damaged(d, "the newest meta slot is damaged and only opened read-only")
    with lamina.open(d, create=False, readonly=True) as db:
        fb = db.store.fallback
        assert fb is not None and fb.slot == slot and fb.lost_txnid == txnid
        assert not db.check().ok


def test_readonly_open_while_a_writer_is_active_does_not_guess(tmp_path: Path) -> None:
    """With the writer lock taken (a write transaction open in this process), a read-only
    open cannot tell damage from a meta write in flight, so it reports no fallback from its
    open; check() still shows the invalid slot."""
    d = tmp_path / "db"
    txnid = build(d)
    with lamina.open(d, create=False) as writer_db, writer_db.write():
        flip(d / BF.DATA_FILE_NAME, (txnid % 2) * PS + 100)
        with lamina.open(d, create=False, readonly=True) as db:
            assert db.store.fallback is None
            report = db.check()
            assert any(f.where == f"meta {txnid % 2}" for f in report.findings)
        flip(d / BF.DATA_FILE_NAME, (txnid % 2) * PS + 100)  # undo before the commit


def test_damage_while_open_is_repaired_from_the_published_meta(tmp_path: Path) -> None:
    """While the database is open, readers use the meta published in the lock file, so a
    damaged newest slot loses nothing yet; a writable open repairs the slot with that
    published commit (not the older one on disk), so the commit survives every process
    closing the database."""
    d = tmp_path / "db"
    txnid = build(d)
    slot = txnid % 2
    data = d / BF.DATA_FILE_NAME
    with lamina.open(d, create=False, readonly=True) as first:
        flip(data, slot * PS + 100)
        damaged_page = data.read_bytes()[slot * PS:(slot + 1) * PS]
        assert first.get("t", b"b") == b"2"
        assert not any(f.what.startswith("fallback:") for f in first.check().findings)
        with lamina.open(d, create=False) as second:
            assert second.store.fallback is None
            assert second.get("t", b"b") == b"2"
    assert (d / f"{BF.DATA_FILE_NAME}.meta{slot}-{txnid}.damaged").read_bytes() == damaged_page
    with lamina.open(d, create=False, readonly=True) as db:  # a fresh lock file: from disk
        assert db.store.current_meta().txnid == txnid and db.store.fallback is None
        assert db.get("t", b"b") == b"2" and db.check().ok
