"""Engine benchmark: Lamina btree vs Python sqlite3 vs LMDB, in one run.

Workload (per engine, fresh directory each repetition):
  * bulk load N keys (16-byte keys, 100-byte values) in sorted order, one transaction
  * 200k random point reads (of existing keys) in one read transaction
  * a full range scan in key order

Prints a table of medians (and ratios to sqlite3; > 1 means faster than sqlite3) and
writes JSON to bench/results/engine.json.

Usage: python bench/engine.py [--keys N] [--reads N] [--reps R] [--no-sync]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from lamina.core.lockfile import LockFile  # noqa: E402
from lamina.engines.btree import BtreeStore  # noqa: E402

try:
    import lmdb
except ImportError:  # pragma: no cover
    lmdb = None  # type: ignore[assignment]


def make_items(n: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(42)
    keys = sorted({rnd.randbytes(16) for _ in range(int(n * 1.01) + 10)})[:n]
    return [(k, rnd.randbytes(100)) for k in keys]


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_lamina(d: Path, items: list[tuple[bytes, bytes]], probes: list[bytes],
                 sync: bool) -> dict[str, float]:
    def init(lf: LockFile) -> None:
        seq, meta = BtreeStore.read_committed_meta(d)
        lf.set_commit_seq(seq)
        lf.publish_btree_meta(meta)

    lf = LockFile.open(d, init=init)
    store = BtreeStore.open(d, lf, create=True, readonly=False, sync=sync)
    try:
        def load() -> None:
            with store.begin_write() as w:
                w.create_table("t")
                w.table("t").bulk_load(items)

        out = {"bulk_load": timed(load)}

        def reads() -> None:
            with store.begin_read() as r:
                get = r.table("t").get
                for k in probes:
                    if get(k) is None:
                        raise AssertionError("missing key")

        out["point_reads"] = timed(reads)

        def scan() -> None:
            with store.begin_read() as r:
                n = sum(1 for _ in r.table("t").items())
                assert n == len(items)

        out["range_scan"] = timed(scan)
        out["file_bytes"] = os.path.getsize(d / BtreeStore.DATA_FILE_NAME)
        return out
    finally:
        store.close()
        lf.close()


def bench_sqlite(d: Path, items: list[tuple[bytes, bytes]], probes: list[bytes],
                 sync: bool) -> dict[str, float]:
    con = sqlite3.connect(d / "db.sqlite", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={'FULL' if sync else 'OFF'}")
    con.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def load() -> None:
        con.execute("BEGIN")
        con.executemany("INSERT INTO t VALUES (?, ?)", items)
        con.execute("COMMIT")

    out = {"bulk_load": timed(load)}

    def reads() -> None:
        cur = con.cursor()
        q = "SELECT v FROM t WHERE k = ?"
        con.execute("BEGIN")
        for k in probes:
            if cur.execute(q, (k,)).fetchone() is None:
                raise AssertionError("missing key")
        con.execute("COMMIT")

    out["point_reads"] = timed(reads)

    def scan() -> None:
        n = sum(1 for _ in con.execute("SELECT k, v FROM t ORDER BY k"))
        assert n == len(items)

    out["range_scan"] = timed(scan)
    con.close()
    out["file_bytes"] = sum(f.stat().st_size for f in d.iterdir())
    return out


def bench_lmdb(d: Path, items: list[tuple[bytes, bytes]], probes: list[bytes],
               sync: bool) -> dict[str, float]:
    assert lmdb is not None
    env = lmdb.open(str(d), map_size=1 << 32, sync=sync, metasync=sync)

    def load() -> None:
        with env.begin(write=True) as txn, txn.cursor() as c:
            c.putmulti(items, append=True)

    out = {"bulk_load": timed(load)}

    def reads() -> None:
        with env.begin() as txn:
            get = txn.get
            for k in probes:
                if get(k) is None:
                    raise AssertionError("missing key")

    out["point_reads"] = timed(reads)

    def scan() -> None:
        with env.begin() as txn, txn.cursor() as c:
            n = sum(1 for _ in c)
            assert n == len(items)

    out["range_scan"] = timed(scan)
    env.close()
    out["file_bytes"] = (d / "data.mdb").stat().st_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-sync", action="store_true", help="disable fsync in every engine")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = ap.parse_args()
    sync = not args.no_sync

    items = make_items(args.keys)
    rnd = random.Random(7)
    probes = [items[rnd.randrange(len(items))][0] for _ in range(args.reads)]
    engines: dict[str, Callable[..., dict[str, float]]] = {
        "lamina": bench_lamina, "sqlite3": bench_sqlite}
    if lmdb is not None:
        engines["lmdb"] = bench_lmdb
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for rep in range(args.reps):
        for name, fn in engines.items():
            d = Path(tempfile.mkdtemp(prefix=f"lamina-bench-{name}-"))
            try:
                runs[name].append(fn(d, items, probes, sync))
            finally:
                shutil.rmtree(d, ignore_errors=True)
        print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr)

    metrics = ["bulk_load", "point_reads", "range_scan"]
    med = {name: {m: statistics.median(r[m] for r in rs) for m in [*metrics, "file_bytes"]}
           for name, rs in runs.items()}
    ops = {"bulk_load": args.keys, "point_reads": args.reads, "range_scan": args.keys}
    base = med["sqlite3"]
    print(f"\n{args.keys:,} keys (16 B keys, 100 B values), {args.reads:,} point reads, "
          f"median of {args.reps}, sync={'on' if sync else 'off'}")
    header = f"{'engine':<9}" + "".join(f"{m:>26}" for m in metrics) + f"{'file MB':>10}"
    print(header)
    print("-" * len(header))
    for name, m in med.items():
        cells = []
        for metric in metrics:
            rate = ops[metric] / m[metric]
            ratio = base[metric] / m[metric]
            cells.append(f"{m[metric]:8.3f}s {rate / 1000:7.0f}k/s {ratio:5.2f}x")
        print(f"{name:<9}" + "".join(f"{c:>26}" for c in cells)
              + f"{m['file_bytes'] / 1e6:10.1f}")
    print("(ratio = sqlite3 time / engine time: > 1 is faster than sqlite3)")
    result = {
        "benchmark": "engine",
        "params": {"keys": args.keys, "reads": args.reads, "reps": args.reps,
                   "key_bytes": 16, "value_bytes": 100, "sync": sync},
        "platform": {"python": platform.python_version(), "machine": platform.machine(),
                     "system": platform.system(), "sqlite": sqlite3.sqlite_version,
                     "lmdb": ".".join(map(str, lmdb.version())) if lmdb else None},
        "median_seconds": med,
        "ratio_to_sqlite3": {name: {m: base[m] / v[m] for m in metrics}
                             for name, v in med.items()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
