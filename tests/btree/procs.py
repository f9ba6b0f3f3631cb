"""Child-process bodies for the multi-process tests (run with the "spawn" context)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from helpers import opened

from lamina.engines.btree import ReadTxn


def digest(txn: ReadTxn) -> str:
    """A hash of every table's full contents in a snapshot."""
    h = hashlib.blake2b(digest_size=16)
    for entry in txn.catalog():
        h.update(entry.name.encode() + b"\0")
        for k, v in txn.table(entry.name).items():
            h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(4, "little") + v)
    return h.hexdigest()


def snapshot_reader(directory: str, min_checks: int, min_distinct: int, queue: Any) -> None:
    """Open snapshots repeatedly while a writer commits; each must never change while it
    is open. Reads until it checked ``min_checks`` snapshots of at least ``min_distinct``
    transactions (counted, not timed: a busy machine only makes it take longer; 120 s is
    a hang guard). Puts (snapshots checked, distinct txnids seen, problems) on the queue."""
    problems: list[str] = []
    checked = 0
    txnids: set[int] = set()
    deadline = time.monotonic() + 120
    with opened(Path(directory), create=False) as store:
        while (checked < min_checks or len(txnids) < min_distinct) and (
                time.monotonic() < deadline):
            with store.begin_read() as r:
                first = digest(r)
                time.sleep(0.02)  # let the writer commit (and free pages) meanwhile
                again = digest(r)
                if first != again:
                    problems.append(f"snapshot {r.txnid} changed under its reader")
                if r.catalog_get("t") is not None:
                    n = int(r.table("t").get(b"__n") or b"0")
                    from workload import model_after

                    want = model_after(n)
                    got = {t: dict(r.table(t).items()) for t in want}
                    got["t"].pop(b"__n", None)
                    if got != want:
                        problems.append(f"snapshot {r.txnid} is not the state after txn {n}")
                txnids.add(r.txnid)
                checked += 1
    queue.put((checked, len(txnids), problems))


def pinning_reader(directory: str, ready: Any, go: Any, result: Any) -> None:
    """Pin a snapshot, report its digest, wait, re-verify it, report again, and exit."""
    with opened(Path(directory), create=False) as store, store.begin_read() as r:
        before = digest(r)
        result.put(("pinned", r.txnid, before))
        ready.set()
        go.wait(120)
        result.put(("after", r.txnid, digest(r)))


def hold_writer(directory: str, ready: Any, release: Any) -> None:
    """Hold the btree writer lock until told to stop."""
    with opened(Path(directory), create=False) as store:
        w = store.begin_write()
        ready.set()
        release.wait(60)
        w.abort()


def pin_forever(directory: str, ready: Any) -> None:
    """Pin a snapshot and sleep (the test kills this process with SIGKILL)."""
    with opened(Path(directory), create=False) as store, store.begin_read():
        ready.set()
        time.sleep(600)
