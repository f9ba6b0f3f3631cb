"""Subprocess side of the archive process tests (crash, concurrency, lock contention).

Usage: ``worker.py MODE DIR [options]``. Prints one line per event and flushes, so the
parent knows exactly which commits completed before a kill.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable


def seed(directory: Path):  # type: ignore[no-untyped-def]
    def init(lf: LockFile) -> None:
        seqs = [ArchiveTable.read_last_commit_seq(directory, p.stem)
                for p in directory.glob("*.ARM")]
        lf.set_commit_seq(max(seqs, default=0))

    return init


def batch_rows(batch: int, size: int) -> list[bytes]:
    return [b"batch %d row %d " % (batch, j) + b"x" * ((batch * 7 + j * 13) % 90)
            for j in range(size)]


def say(*parts: object) -> None:
    print(*parts, flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["write", "hold", "read", "optimize"])
    p.add_argument("dir", type=Path)
    p.add_argument("--table", default="t")
    p.add_argument("--id", type=int, default=1)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--first-batch", type=int, default=0)
    p.add_argument("--size", type=int, default=10)
    p.add_argument("--optimize-every", type=int, default=0)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--until-rows", type=int, default=None,
                   help="read: stop once a scan saw this many rows (--seconds: hang guard)")
    p.add_argument("--no-sync", action="store_true")
    a = p.parse_args()
    lf = LockFile.open(a.dir, init=seed(a.dir))
    table = ArchiveTable.open(a.dir, a.table, a.id, lf, sync=not a.no_sync,
                              readonly=a.mode == "read")
    if a.mode == "write":
        for i in range(a.first_batch, a.first_batch + a.batches):
            say("BEGIN", i)
            with table.writer(timeout=30) as w:
                w.append_many(batch_rows(i, a.size))
                seq = w.commit()
            say("COMMITTED", i, seq)
            if a.optimize_every and (i + 1) % a.optimize_every == 0:
                say("OPTIMIZE", i)
                table.optimize(block_target=4096, timeout=30)
                say("OPTIMIZED", i)
        say("DONE")
    elif a.mode == "optimize":
        stats = table.optimize(timeout=30)
        say("OPTIMIZED", stats["generation"])
    elif a.mode == "hold":
        with table.writer():
            say("LOCKED")
            sys.stdin.readline()  # hold until the parent closes our stdin
    elif a.mode == "read":
        # Invariants a reader checks: whole commits only, rows exactly as written.
        deadline = time.monotonic() + a.seconds
        checks = 0
        top = 0
        counts: set[int] = set()
        while time.monotonic() < deadline:
            n = table.count()
            if n % a.size:
                say("ERROR partial commit in count", n)
                return 1
            seen = 0
            for row_id, row in table.scan():
                batch, j = divmod(row_id - 1, a.size)
                if row != batch_rows(batch, a.size)[j]:
                    say("ERROR row", row_id, row[:40])
                    return 1
                seen += 1
            if seen % a.size or seen < n:
                say("ERROR partial commit in scan", seen, n)
                return 1
            top = max(top, seen)
            counts.add(seen)
            checks += 1
            if a.until_rows is not None and seen >= a.until_rows:
                break
        say("OK", checks, top, len(counts))
    table.close()
    lf.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
