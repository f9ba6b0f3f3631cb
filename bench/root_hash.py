"""Cost of the proofs: the hash of the archive block chain and the database root hash.

In one run, side by side:

* hash throughput on 1 MiB buffers of the candidates for the block chain: hashlib BLAKE2b-256
  (what the chain uses), hashlib SHA-256 (the reference; SHA-NI where the CPU has it) and
  BLAKE3 when the ``blake3`` package is installed (reported as absent otherwise);
* the chain step on a small block (one ``extend`` of a 200-byte block: per-commit cost);
* ``Database.root_hash()`` with 1, 10 and 100 archive tables (O(tables): metadata only),
  against ``Database.check()`` of the same database (which reads every byte).

Medians of ``--runs`` runs; prints a table and writes ``bench/results/root_hash.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lamina
from lamina.engines.archive.chain import CHAIN_START, extend

RESULTS = Path(__file__).with_name("results") / "root_hash.json"


def _throughput(make: Callable[[], Any], mib: int, runs: int) -> list[float]:
    buf = os.urandom(1 << 20)
    out = []
    for _ in range(runs):
        h = make()
        t = time.perf_counter()
        for _ in range(mib):
            h.update(buf)
        h.digest()
        out.append(mib / (time.perf_counter() - t))
    return out


def _blake3() -> Callable[[], Any] | None:
    try:
        import blake3  # type: ignore[import-not-found]
    except ImportError:
        return None
    return blake3.blake3  # type: ignore[no-any-return]


def _timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=256, help="MiB hashed per run")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rows", type=int, default=2000, help="rows per archive table")
    p.add_argument("--json", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    doc: dict[str, Any] = {"python": platform.python_version(), "load": os.getloadavg(),
                           "hash_mib_s": {}, "root_hash_ms": {}, "check_ms": {}}
    candidates: dict[str, Callable[[], Any] | None] = {
        "blake2b-256 (chain)": lambda: hashlib.blake2b(digest_size=32),
        "sha256": hashlib.sha256, "blake3": _blake3()}
    print(f"{'hash':<22}{'median MiB/s':>14}{'range':>20}")
    base = None
    for name, make in candidates.items():
        if make is None:
            print(f"{name:<22}{'not installed':>14}")
            doc["hash_mib_s"][name] = None
            continue
        got = _throughput(make, a.mib, a.runs)
        med = statistics.median(got)
        base = base or med
        doc["hash_mib_s"][name] = {"median": med, "min": min(got), "max": max(got)}
        print(f"{name:<22}{med:>14.0f}{f'{min(got):.0f}-{max(got):.0f}':>20}"
              f"   x{med / base:.2f}")
    block = os.urandom(200)
    step = _timed(lambda: [extend(CHAIN_START, block) for _ in range(10000)], a.runs) / 10000
    doc["extend_200b_us"] = step * 1e6
    print(f"chain step, 200-byte block: {step * 1e6:.2f} us")
    print(f"\n{'archive tables':<16}{'root_hash ms':>14}{'check ms':>12}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp, \
            lamina.open(Path(tmp) / "db", sync=False) as db:
        made = 0
        for n in (1, 10, 100):
            while made < n:
                name = f"t{made}"
                db.create_table(name, "archive")
                db.append_many(name, [b"row %d of a log line" % i for i in range(a.rows)])
                made += 1
            rh = _timed(db.root_hash, a.runs)
            ck = _timed(db.check, max(1, a.runs // 2))
            doc["root_hash_ms"][n], doc["check_ms"][n] = rh * 1e3, ck * 1e3
            print(f"{n:<16}{rh * 1e3:>14.2f}{ck * 1e3:>12.1f}{ck / rh:>8.0f}")
    print(f"load average {doc['load'][0]:.1f}")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
