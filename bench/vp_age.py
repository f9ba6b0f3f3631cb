"""VP age at completion: ``--vp begin`` against ``--vp end`` on a large database, with a
writer running.

An "at begin" backup takes its validity point (VP) first and copies everything after it, so
when the image is complete the state it holds is already as old as the whole copy. An "at
end" backup copies the bulk first (the kernel's initial transfer) and takes the VP after
it; only what changed meanwhile is sent after the VP. The figure is **VP age at
completion** = completion wall clock - VP wall clock (``BackupResult.vp_age_ns``).

Builds a database of about ``--size-mb`` MB (85% btree table, 15% archive table), starts a
writer process that commits as fast as it can (alternately a btree put and an archive
append, ``sync=False``), then takes ``--repeat`` backups of each kind, interleaved, into
image files (``--compress``). For each: VP age, backup time, commit blocker held, the
commits the writer made between ``begin()`` and the VP (at-end: VP seq - ``begin_seq``),
and the btree pages sent after the VP. Prints a table of medians and the ratio end/begin, writes
``bench/results/vp_age.json``.

    .venv/bin/python bench/vp_age.py                   # ~1 GiB
    .venv/bin/python bench/vp_age.py --size-mb 100     # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lamina
from lamina import online
from lamina.online.facts import ImageFacts

RESULTS = Path(__file__).with_name("results") / "vp_age.json"
KINDS = ("begin", "end")

WRITER = r"""
import os, random, sys
import lamina
path, stop = sys.argv[1], sys.argv[2]
db = lamina.open(path, create=False, sync=False, lock_timeout=600)
log = db.archive("log")
rng = random.Random(3)
print("ready", flush=True)
i = 0
while not os.path.exists(stop):
    if i % 2 == 0:
        with db.write() as txn:
            txn.table("kv").put(b"key%012d" % rng.randrange(10**7), rng.randbytes(100))
    else:
        log.append(b"writer row %d " % i + rng.randbytes(60))
    i += 1
db.close()
print(i, flush=True)
"""


def build(path: Path, size_mb: int) -> dict[str, Any]:
    """A database of about ``size_mb`` MB: 85% btree ``kv``, 15% archive ``log``."""
    rng = random.Random(7)
    started = time.perf_counter()
    keys = int(size_mb * 1e6 * 0.85 / 135)
    rows = int(size_mb * 1e6 * 0.15 / 200)
    with lamina.open(path, sync=False) as db:
        db.create_table("kv")
        db.create_table("log", "archive")
        with db.write() as txn:
            txn.table("kv").bulk_load((b"key%012d" % i, rng.randbytes(100))
                                      for i in range(keys))
        for first in range(0, rows, 20_000):
            db.append_many("log", [rng.randbytes(200)
                                   for _ in range(min(20_000, rows - first))])
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return {"bytes": size, "keys": keys, "rows": rows,
            "seconds": time.perf_counter() - started}


def one_backup(db: lamina.Database, image: Path, kind: str, codec: str) -> dict[str, Any]:
    """One backup of ``kind``; its figures."""
    seq_before = db.lockfile.commit_seq()
    result = online.backup(db, image, vp=kind, codec=codec)
    facts = ImageFacts(result, "bench image")
    btree = facts.btree()
    assert btree is not None
    if btree.initial is not None:
        begin_seq = btree.initial.begin_seq
        after_vp_pages = btree.pages_sent
    else:
        begin_seq = seq_before
        after_vp_pages = btree.pages_sent
    image.unlink()
    return {"kind": kind, "vp_age_ms": result.vp_age_ns / 1e6,
            "backup_s": result.elapsed_ns / 1e9,
            "blocker_held_ms": result.blocker_held_ns / 1e6,
            "commits_begin_to_vp": result.vp.commit_seq - begin_seq,
            "btree_pages_after_vp": after_vp_pages, "image_bytes": result.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="approximate database size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compress", default="zstd", choices=["zstd", "zlib", "none"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lamina-bench-vp-age-"))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> None:
    path = root / "db"
    built = build(path, args.size_mb)
    print(f"built {built['bytes'] / 2**20:.0f} MiB ({built['keys']:,} keys, "
          f"{built['rows']:,} rows) in {built['seconds']:.1f} s")
    stop = root / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    writer.stdout.readline()  # ready
    runs: list[dict[str, Any]] = []
    try:
        with lamina.open(path, create=False, sync=False) as db:
            for i in range(args.repeat):
                for kind in KINDS:
                    fig = one_backup(db, root / f"img-{kind}-{i}", kind, args.compress)
                    runs.append(fig)
                    print(f"  run {i + 1} --vp {kind}: VP age {fig['vp_age_ms']:.0f} ms, "
                          f"backup {fig['backup_s']:.2f} s, "
                          f"{fig['commits_begin_to_vp']} commits begin->VP", flush=True)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=600)
    writer_commits = int(out.split()[-1]) if out.split() else 0
    table: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        table[kind] = {key: statistics.median(r[key] for r in mine)
                       for key in ("vp_age_ms", "backup_s", "blocker_held_ms",
                                   "commits_begin_to_vp", "btree_pages_after_vp")}
    ratio = table["end"]["vp_age_ms"] / table["begin"]["vp_age_ms"]
    print()
    print(f"{'--vp':<6} {'VP age at completion':>21} {'backup':>9} {'blocker held':>13} "
          f"{'commits begin->VP':>18} {'btree pages after VP':>21}")
    for kind in KINDS:
        t = table[kind]
        print(f"{kind:<6} {t['vp_age_ms']:>18.1f} ms {t['backup_s']:>7.2f} s "
              f"{t['blocker_held_ms']:>10.3f} ms {t['commits_begin_to_vp']:>18.0f} "
              f"{t['btree_pages_after_vp']:>21.0f}")
    print(f"VP age ratio end/begin: {ratio:.3f} (medians of {args.repeat}; database "
          f"{built['bytes'] / 2**20:.0f} MiB, writer committed {writer_commits:,} times)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"size_mb": args.size_mb, "db_bytes": built["bytes"], "repeat": args.repeat,
              "compress": args.compress, "medians": table, "vp_age_ratio_end_begin": ratio,
              "writer_commits": writer_commits, "runs": runs,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
