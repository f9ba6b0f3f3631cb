"""What each backup driver costs the writers: commit latency while a backup runs.

A writer process commits small transactions as fast as it can — alternately one btree put
into the big btree table and one archive append to the big archive table (``sync=False``:
no meta fsync, but each btree commit still fdatasyncs its pages, so fsync tails show) — and
records when each commit ended and how long it took. Meanwhile another process runs
``lamina backup`` of the database (about ``--size-mb`` MB) with the native, snapshot or
default driver; a run without a backup is the baseline, and ``native@50`` is the native
driver throttled to 50 MB/s (``--max-rate``) and ``native+nice`` the native driver in a
backup process run under ``nice -n 10``. Each scenario runs ``--repeat`` times; the
table shows the median of each figure. For each run, over the backup's window: the
writer's commits/s, p50, p99 and max commit latency, and the longest gap between two
commits. Writes ``bench/results/stall.json``, prints a table, and plots latency over time
per driver into ``docs/img/stall.png`` (matplotlib, the ``bench`` extra).

    .venv/bin/python bench/stall.py                 # ~500 MB (a few minutes)
    .venv/bin/python bench/stall.py --size-mb 50    # quick
"""

from __future__ import annotations

import argparse
import json
import os
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

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ["none", "native", "native@50", "snapshot", "default"]  # also: native+nice
VALUE_BYTES = 900  # 4 + key + value fits a 4 KiB leaf four times (no overflow pages)

WRITER = r"""
import json, os, random, sys, time
import lamina
path, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
db = lamina.open(path, create=False, sync=False, lock_timeout=600)
log = db.archive("log")
rng = random.Random(1)
t0 = time.perf_counter()
ends, lats = [], []
i = 0
print("ready", flush=True)
while not os.path.exists(stop):
    start = time.perf_counter()
    if i % 2 == 0:
        with db.write() as txn:
            txn.table("kv").put(b"hot%08d" % rng.randrange(1_000_000), b"v" * 100)
    else:
        log.append(b"writer row %d" % i)
    end = time.perf_counter()
    ends.append(end - t0)
    lats.append(end - start)
    i += 1
db.close()
with open(out, "w") as f:
    json.dump({"ends": ends, "lats": lats}, f)
"""


def build(path: Path, size_mb: int) -> dict[str, Any]:
    """A database of about ``size_mb`` MB: 70% btree table ``kv``, 30% archive ``log``."""
    rng = random.Random(7)
    started = time.perf_counter()
    btree_rows = int(size_mb * 1e6 * 0.7 / 1024)  # 4 entries per 4 KiB leaf
    archive_rows = int(size_mb * 1e6 * 0.3 / 1000)
    with lamina.open(path, sync=False) as db:
        db.create_table("kv")
        db.create_table("log", "archive", codec="none")
        with db.write() as txn:
            txn.table("kv").bulk_load((b"key%012d" % i, rng.randbytes(VALUE_BYTES))
                                      for i in range(btree_rows))
        batch = 20_000
        for first in range(0, archive_rows, batch):
            db.append_many("log", [rng.randbytes(1000)
                                   for _ in range(min(batch, archive_rows - first))])
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return {"bytes": size, "btree_rows": btree_rows, "archive_rows": archive_rows,
            "seconds": time.perf_counter() - started}


def run(db: Path, work: Path, driver: str, idle: float,
        image_dir: Path | None = None) -> dict[str, Any]:
    """One run: writer, then (after a warm-up) a backup with ``driver`` (or an idle window
    of ``idle`` seconds for ``none``), then a cool-down."""
    tag = f"{driver}-{time.monotonic_ns()}"  # each run its own files (a stale stop file
    out, stop = work / f"writer-{tag}.json", work / f"stop-{tag}"  # would end the next writer)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(out), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    writer.stdout.readline()  # ready
    t0 = time.perf_counter()
    time.sleep(1.5)
    begin = time.perf_counter() - t0
    summary: dict[str, Any] = {}
    if driver == "none":
        time.sleep(idle)
    else:
        image = (image_dir or work) / f"img-{driver}"
        name, _, rate = driver.partition("@")
        throttle = ["--max-rate", rate] if rate else []
        nice = ["nice", "-n", "10"] if name.endswith("+nice") else []
        name = name.removesuffix("+nice")
        proc = subprocess.run([*nice, sys.executable, "-m", "lamina.cli", "backup", str(db),
                               str(image), "--driver", name, *throttle, "--json",
                               "--no-progress"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"backup with {driver} failed: {proc.stderr}")
        summary = json.loads(proc.stdout)
        image.unlink()
    end = time.perf_counter() - t0
    time.sleep(1.0)
    stop.touch()
    writer.wait(timeout=600)
    data = json.loads(out.read_text())
    # The writer's clock started just before "ready": close enough to ours (a few ms).
    ends, lats = data["ends"], data["lats"]
    window = [(e, lat) for e, lat in zip(ends, lats) if begin <= e <= end]
    w_lats = sorted(lat for _e, lat in window)
    gaps = [b - a for a, b in zip([begin] + [e for e, _l in window],
                                  [e for e, _l in window] + [end])]
    return {
        "driver": driver, "window_s": end - begin, "commits": len(window),
        "commits_per_s": len(window) / (end - begin) if end > begin else 0.0,
        "p50_ms": 1e3 * statistics.median(w_lats) if w_lats else None,
        "p99_ms": 1e3 * w_lats[int(0.99 * (len(w_lats) - 1))] if w_lats else None,
        "max_ms": 1e3 * max(w_lats) if w_lats else None,
        "max_gap_ms": 1e3 * max(gaps) if gaps else None,
        "blocker_held_ms": summary.get("blocker_held_ms"),
        "backup_bytes": summary.get("bytes"), "backup_raw_bytes": summary.get("raw_bytes"),
        "series": {"t": [e - begin for e in ends], "lat_ms": [1e3 * x for x in lats],
                   "window": [0.0, end - begin]},
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every figure over ``runs``; the plotted series is the run whose max latency
    is the median one (a typical run, not the luckiest or the worst)."""
    figures = ["window_s", "commits", "commits_per_s", "p50_ms", "p99_ms", "max_ms",
               "max_gap_ms", "blocker_held_ms"]
    out = dict(sorted(runs, key=lambda r: r["max_ms"] or 0.0)[len(runs) // 2])
    for key in figures:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    out["runs"] = [{k: r[k] for k in figures} for r in runs]
    return out


def plot(results: list[dict[str, Any]], path: Path, size_mb: int) -> None:
    """Latency over time, one panel per run, the backup window shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.2 * len(results)), sharex=True)
    for ax, r in zip(axes, results):
        s = r["series"]
        ax.plot(s["t"], s["lat_ms"], ",", alpha=0.6)
        ax.axvspan(*s["window"], color="orange", alpha=0.15,
                   label="backup" if r["driver"] != "none" else "window")
        ax.set_yscale("log")
        ax.set_ylabel("commit ms")
        ax.set_title(f"{r['driver']}: max {r['max_ms']:.1f} ms, longest gap "
                     f"{r['max_gap_ms']:.1f} ms, {r['commits_per_s']:.0f} commits/s",
                     fontsize=9, loc="left")
    axes[-1].set_xlabel("seconds since the backup started")
    fig.suptitle(f"Writer commit latency during a backup of a {size_mb} MB database")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stall.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "stall.png")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="write backup images here (e.g. a tmpfs, to take the image's "
                             "disk writes out of the measurement)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamina-stall-", dir=args.workdir))
    try:
        db = work / "db"
        print(f"building a {args.size_mb} MB database in {db} ...", flush=True)
        built = build(db, args.size_mb)
        print(f"  {built['bytes'] / 1e6:.0f} MB in {built['seconds']:.1f}s", flush=True)
        results = []
        idle = 3.0
        for driver in args.drivers.split(","):
            runs = []
            for i in range(args.repeat):
                print(f"run: {driver} ({i + 1}/{args.repeat}) ...", flush=True)
                runs.append(run(db, work, driver, idle, args.image_dir))
            r = median_run(runs)
            if driver == "native":
                idle = r["window_s"]
            results.append(r)
        header = (f"{'driver':<10} {'window s':>8} {'commits/s':>9} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'max ms':>8} {'max gap ms':>10} {'VP ms':>6}")
        print(header)
        for r in results:
            vp = r["blocker_held_ms"]
            print(f"{r['driver']:<10} {r['window_s']:>8.2f} {r['commits_per_s']:>9.0f} "
                  f"{r['p50_ms']:>7.3f} {r['p99_ms']:>7.3f} {r['max_ms']:>8.2f} "
                  f"{r['max_gap_ms']:>10.2f} {'-' if vp is None else f'{vp:.3f}':>6}")
        plot(results, args.plot, args.size_mb)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        slim = [{k: v for k, v in r.items() if k != "series"} for r in results]
        args.out.write_text(json.dumps({"size_mb": args.size_mb, "database": built,
                                        "cpus": os.cpu_count(), "runs": slim},
                                       indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.out} and {args.plot}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
