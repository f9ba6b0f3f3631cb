"""Backups taken while writers commit: the image is exactly the state at the validity point,
and the snapshot it reads stays pinned (its pages are never reused) until the backup ends."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from btree_backup_helpers import (
    backup,
    backup_slots,
    contents,
    open_restored,
    page_txnid,
    restore,
)
from btree_backup_writer import TABLES, value

import lamina
from lamina.core.lockfile_format import SLOT_BACKUP
from support.waiting import wait_for

HERE = Path(__file__).parent


def replay(log: Path, upto_seq: int) -> tuple[dict[str, dict[bytes, bytes]], int, int]:
    """The writer's tables after its last commit with seq <= ``upto_seq``; also how many of
    its commits are before and after that point."""
    state: dict[str, dict[bytes, bytes]] = {t: {} for t in TABLES}
    before = after = 0
    for line in log.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["seq"] > upto_seq:
            after += 1
            continue
        before += 1
        for op in rec["ops"]:
            table, key, n = op[0], op[1], op[2]
            if n < 0:
                state[table].pop(key.encode(), None)
            else:
                state[table][key.encode()] = value(key, op[3], n)
    return state, before, after


def last_logged_seq(log: Path) -> int:
    """The seq of the writer's last complete log line (0 before its first commit)."""
    try:
        text = log.read_text(encoding="utf-8")
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # the part after the last newline may be half written
    return json.loads(lines[-1])["seq"] if lines else 0


def test_image_is_exactly_the_vp_while_a_process_writes(tmp_path: Path) -> None:
    db = lamina.open(tmp_path / "db", page_size=1024, sync=False)
    for t in TABLES:
        db.create_table(t)
    log, stop = tmp_path / "writer.log", tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, str(HERE / "btree_backup_writer.py"), str(tmp_path / "db"), str(log),
         str(stop), "11"], cwd=HERE, env={**os.environ, "PYTHONPATH": str(HERE)})
    rng = random.Random(5)
    results = []

    def wait_for_seq(seq: int) -> None:
        """Wait until the writer logged a commit with seq >= ``seq`` (progress counted in
        its commits, not in seconds; 120 s is a hang guard only)."""
        wait_for(lambda: last_logged_seq(log) >= seq, f"the writer to log seq {seq}",
                 proc=writer)

    try:
        wait_for_seq(20)
        for i in range(4):
            # A random moment in the writer's stream: 1..25 commits after the last VP, so
            # every VP has commits before it and the VPs all differ.
            wait_for_seq((results[-1].vp.commit_seq if results else 20) + rng.randint(1, 25))
            results.append(backup(db, tmp_path / f"img{i}", buf_size=8192))
            assert not backup_slots(db)
        wait_for_seq(results[-1].vp.commit_seq + 1)  # the writer goes on after the last VP
    finally:
        stop.touch()
        assert writer.wait(60) == 0
    seqs = [r.vp.commit_seq for r in results]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for i, result in enumerate(results):
        want, before, after = replay(log, result.vp.commit_seq)
        assert before > 0 and after > 0, (before, after)  # the VP fell inside the stream
        restore(tmp_path / f"img{i}", tmp_path / f"r{i}")
        with open_restored(tmp_path / f"r{i}") as rdb, rdb.read() as r:
            assert r.commit_seq <= result.vp.commit_seq
            assert contents(r, TABLES) == want
    db.close()


def test_snapshot_stays_pinned_until_the_backup_ends(tmp_path: Path) -> None:
    """Churn commits between get_data calls reuse the VP's free pages but never a page of
    the VP snapshot; once the backup has ended, further churn does reuse those pages."""
    db = lamina.open(tmp_path / "db", page_size=1024, sync=False)
    db.create_table("t")
    rng = random.Random(2)

    def churn(commits: int, tag: int) -> None:
        for c in range(commits):
            with db.write() as w:
                t = w.table("t")
                for _ in range(40):
                    t.put(b"%04d" % rng.randrange(800), bytes([tag, c % 256]) * rng.choice([5, 90]))
                for _ in range(10):
                    t.delete(b"%04d" % rng.randrange(800))

    churn(30, 1)
    with db.read() as r:  # closed before the backup: only the backup will pin the VP
        vp_txnid = r.txnid
        vp_pages = dict(r.iter_pages())
        vp_free = r.free_pages()
        want = contents(r, ["t"])
    assert len(vp_free) > 20
    pinned: list[list[tuple[int, int, int, int]]] = []

    def during(done: int, _expected: int | None) -> None:
        if not pinned:  # after the first chunk: the VP is set, most pages unread
            pinned.append(backup_slots(db))
            churn(60, 2)

    result = backup(db, tmp_path / "img", buf_size=2048, progress=during)
    assert result.vp.drivers[0]["txnid"] == vp_txnid
    assert [(s[2], s[3]) for s in pinned[0]] == [(vp_txnid, SLOT_BACKUP)]
    assert not backup_slots(db)
    fd = os.open(db.store.path, os.O_RDONLY)
    try:
        def disk(pgno: int) -> bytes:
            return os.pread(fd, 1024, pgno * 1024)

        # The churn really reused the VP's free pages ...
        assert any(page_txnid(disk(p)) > vp_txnid for p in vp_free)
        # ... but left every page of the pinned snapshot alone.
        assert all(disk(p) == page for p, page in vp_pages.items())
        restore(tmp_path / "img", tmp_path / "restored")
        with open_restored(tmp_path / "restored") as rdb, rdb.read() as r:
            assert contents(r, ["t"]) == want and r.txnid == vp_txnid
        # Unpinned, the snapshot's pages are fair game for writers again.
        churn(60, 3)
        assert any(disk(p) != page for p, page in vp_pages.items())
    finally:
        os.close(fd)
    db.close()
