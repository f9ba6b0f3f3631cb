"""Archive engine benchmark: insert and full scan of log-like rows, against its peers.

Compares, in one run and on the same rows:

* Lamina archive tables with codecs zstd (default level, and level 3), zlib (level 6) and
  none, in commits of ``--commit`` rows, each commit durable (data fdatasync + meta fsync)
  unless ``--no-sync``; zstd once more without syncs (like for like with the gzip stream);
  then ``optimize()`` and the size after it;
* a gzip stream at zlib level 6 (what MySQL's ARCHIVE engine writes), one line per row,
  one write per commit-sized batch and no flush or fsync until the end (its best case);
* ``sqlite3``: one ``INTEGER PRIMARY KEY, BLOB`` table, one transaction per commit,
  default journal and synchronous settings.

Prints a table and writes ``bench/results/archive.json``. ``--rows N`` for a quick run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable

RESULTS = Path(__file__).with_name("results") / "archive.json"

_SERVICES = ["api-gateway", "auth", "billing", "search", "checkout", "inventory", "mailer"]
_LEVELS = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
_PATHS = ["/v1/orders", "/v1/orders/{id}", "/v1/users/{id}", "/v1/cart", "/healthz",
          "/v1/search?q={word}", "/v1/payments/{id}/capture", "/static/app.{id}.js"]
_WORDS = ["shoes", "laptop", "coffee", "garden", "lamp", "bike", "novel", "camera", "tent"]
_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "okhttp/4.12.0",
           "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2)", "python-requests/2.31"]
_REGIONS = ["eu-west-1", "eu-central-1", "us-east-2"]
_MESSAGES = [
    "{method} {path} status={status} bytes={size} latency_ms={lat} ua=\"{agent}\" "
    "span={span}",
    "user {user} login ok from {ip} session={session}",
    "cache miss key=product:{id} backend=redis-{shard} took {lat}ms",
    "retrying upstream call to {service} attempt={attempt} after timeout {lat}ms",
    "order {id} state change PENDING -> {state} amount={amount} currency=EUR",
]


def _zipf(rng: random.Random, n: int) -> int:
    """A popular-first id in 1..n (heavy head, long tail), as ids in real logs are."""
    return min(n, int(rng.paretovariate(1.1)))


def log_lines(n: int, seed: int = 42) -> Iterator[bytes]:
    """``n`` deterministic log-like lines of ~200 bytes with realistic repetition.

    Like real service logs: a few templates dominate, users/products/paths follow a heavy
    head (Zipf-like), a user keeps its session and address, sizes depend on the path, and
    every line still carries unique parts (timestamp, request number, span id, latency).
    """
    rng = random.Random(seed)
    ts = 1_700_000_000.0
    weights = [60, 10, 15, 5, 10]
    for i in range(n):
        ts += rng.expovariate(2000.0)
        tpl = _MESSAGES[rng.choices(range(len(_MESSAGES)), weights=weights)[0]]
        user = _zipf(rng, 20_000)
        path_i = _zipf(rng, len(_PATHS)) - 1
        item = _zipf(rng, 50_000)
        path = _PATHS[path_i].format(id=item, word=_WORDS[item % len(_WORDS)])
        msg = tpl.format(
            method=rng.choice(["GET", "GET", "GET", "POST", "PUT", "DELETE"]), path=path,
            status=rng.choice([200] * 20 + [201, 204, 304, 400, 404, 500]),
            size=(path_i + 1) * 1733 + rng.randrange(64), lat=int(rng.lognormvariate(3, 0.9)),
            agent=_AGENTS[user % len(_AGENTS)], user=user,
            ip=f"10.{user % 251}.{user % 241}.{user % 239 + 1}",
            session=f"{(user * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}",
            span=f"{rng.getrandbits(32):08x}", id=item,
            shard=item % 8, service=rng.choice(_SERVICES), attempt=rng.randrange(1, 4),
            state=rng.choice(["PAID", "SHIPPED", "CANCELLED"]),
            amount=f"{(item * 37) % 99_999 / 100:.2f}")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + \
            f".{int(ts * 1000) % 1000:03d}Z"
        host = rng.randrange(1, 13)
        yield (f"{stamp} {rng.choice(_LEVELS):5} [{rng.choice(_SERVICES)}] "
               f"host=web-{host:02d}.{_REGIONS[host % 3]} pid={rng.randrange(1000, 1010)} "
               f"thread=worker-{rng.randrange(16)} req={i:09d} {msg}").encode()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_lamina(rows: list[bytes], spec: str, commit: int, sync: bool, root: Path,
                 ) -> dict[str, Any]:
    spec, _, mode = spec.partition("/")
    sync = sync and mode != "nosync"
    codec, _, level = spec.partition(":")
    d = root / f"lamina-{codec}-{level}-{mode}"
    d.mkdir()
    lf = LockFile.open(d, init=lambda lf: lf.set_commit_seq(0))
    ArchiveTable.create(d, "logs", 1, codec=codec, level=int(level) if level else None,
                        sync=sync)
    t = ArchiveTable.open(d, "logs", 1, lf, sync=sync)

    def insert() -> None:
        for i in range(0, len(rows), commit):
            t.append_many(rows[i:i + commit])

    def scan() -> int:
        n = 0
        for _row_id, _row in t.scan():
            n += 1
        return n

    t_ins, _ = timed(insert)
    t_scan, n = timed(scan)
    assert n == len(rows)
    st = t.stat()
    size = sum(st["files"].values())
    t_opt, _ = timed(t.optimize)
    opt = t.stat()
    t.close()
    lf.close()
    label = f"lamina {codec} {st['level']}" + ("" if sync else " nosync")
    return {"engine": label, "sync": sync, "insert_s": t_ins,
            "scan_s": t_scan, "bytes": size, "blocks": st["blocks"], "ratio": st["ratio"],
            "optimize_s": round(t_opt, 3), "bytes_optimized": sum(opt["files"].values()),
            "blocks_optimized": opt["blocks"]}


def bench_gzip(rows: list[bytes], commit: int, root: Path) -> dict[str, Any]:
    path = root / "stream.gz"

    def insert() -> None:
        # One write per commit-sized batch: the stream's best case (no per-row call).
        with gzip.open(path, "wb", compresslevel=6) as f:
            for i in range(0, len(rows), commit):
                f.write(b"\n".join(rows[i:i + commit]) + b"\n")

    def scan() -> int:
        n = 0
        with gzip.open(path, "rb") as f:
            for _line in f:
                n += 1
        return n

    t_ins, _ = timed(insert)
    t_scan, n = timed(scan)
    assert n == len(rows)
    return {"engine": "gzip stream (zlib 6)", "insert_s": t_ins, "scan_s": t_scan,
            "bytes": path.stat().st_size}


def bench_sqlite(rows: list[bytes], commit: int, sync: bool, root: Path) -> dict[str, Any]:
    path = root / "bench.sqlite"
    con = sqlite3.connect(path)
    if not sync:
        con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE logs (id INTEGER PRIMARY KEY, row BLOB NOT NULL)")

    def insert() -> None:
        for i in range(0, len(rows), commit):
            with con:
                con.executemany("INSERT INTO logs (row) VALUES (?)",
                                ((r,) for r in rows[i:i + commit]))

    def scan() -> int:
        n = 0
        for _id, _row in con.execute("SELECT id, row FROM logs ORDER BY id"):
            n += 1
        return n

    t_ins, _ = timed(insert)
    t_scan, n = timed(scan)
    assert n == len(rows)
    con.close()
    return {"engine": "sqlite3", "insert_s": t_ins, "scan_s": t_scan,
            "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--commit", type=int, default=1000, help="rows per commit")
    p.add_argument("--codecs", default="zstd,zstd/nosync,zstd:3,zlib,none",
                   help="comma list of CODEC[:LEVEL][/nosync] (default level when omitted; "
                        "/nosync: commits without fsync, like the gzip stream)")
    p.add_argument("--no-sync", action="store_true", help="skip fsyncs (Lamina and sqlite)")
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    p.add_argument("--json", type=Path, default=RESULTS)
    a = p.parse_args(argv)

    rows = list(log_lines(a.rows))
    raw = sum(map(len, rows))
    root = Path(tempfile.mkdtemp(prefix="lamina-bench-", dir=a.dir))
    results = []
    try:
        for codec in a.codecs.split(","):
            results.append(bench_lamina(rows, codec, a.commit, not a.no_sync, root))
        results.append(bench_gzip(rows, a.commit, root))
        results.append(bench_sqlite(rows, a.commit, not a.no_sync, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for r in results:
        r["insert_rows_s"] = round(a.rows / r["insert_s"])
        r["scan_rows_s"] = round(a.rows / r["scan_s"])
        r["bytes_per_row"] = round(r["bytes"] / a.rows, 2)
        r["insert_s"] = round(r["insert_s"], 3)
        r["scan_s"] = round(r["scan_s"], 3)

    print(f"{a.rows:,} rows, {raw / a.rows:.0f} bytes/row avg ({raw / 1e6:.1f} MB raw), "
          f"commits of {a.commit}, sync={'off' if a.no_sync else 'on'}")
    head = f"{'engine':<22}{'insert rows/s':>15}{'scan rows/s':>14}{'bytes on disk':>16}" \
           f"{'bytes/row':>11}{'after optimize':>16}"
    print(head)
    print("-" * len(head))
    for r in results:
        optimized = f"{r['bytes_optimized']:,}" if "bytes_optimized" in r else "-"
        print(f"{r['engine']:<22}{r['insert_rows_s']:>15,}{r['scan_rows_s']:>14,}"
              f"{r['bytes']:>16,}{r['bytes_per_row']:>11}{optimized:>16}")
    doc = {"benchmark": "archive", "rows": a.rows, "raw_bytes": raw, "commit_rows": a.commit,
           "sync": not a.no_sync, "python": sys.version.split()[0],
           "platform": platform.platform(), "cpus": os.cpu_count(), "results": results}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
