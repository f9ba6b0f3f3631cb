"""Continuous replication: RPO, what it costs the writer, and restoring a point.

1. **RPO and writer cost** (real processes, real time). A writer process commits about
   ``--rate`` commits/s (alternately one btree put and one archive append, ``sync=False``
   as in ``bench/stall.py``) and logs each commit's seq, end time and latency; it runs once
   alone (the baseline) and once beside ``lamina replicate --interval 1s`` (repository in
   ``--repo-dir``, by default ``/dev/shm``: another file system than the database). RPO of
   a commit = the time the first point containing it was published (the replicator's JSON
   event line) minus the commit's end time: p50, p99, max. Writer: p50, p99, max commit
   latency with and without the replicator. ``--repeat`` runs of each, alternating (the
   disk is shared: medians of the runs are reported).
2. **Restoring a point** after ``--points`` points compressed in time (the VP clock is
   simulated, a few random commits between points; one second between points, and one
   step in ten jumps 16 minutes, so that ``--points 900`` spans about a day and every level
   rolls over), replicated with the default levels (10 s, 1 min, 1 h) and level compaction
   in the repository: the newest point, the point with the longest chain and a few random
   ones are restored, against one full image of the same state and against a linear chain
   (each layer on the previous point, never compacted). Images read, bytes read, seconds,
   ratio to the full.
3. **What a point costs the database** in the same run: the raw bytes each point read from
   the database and the image bytes it sent, with level compaction (every point a layer
   on the newest) and with the design before it (the previous replicator, kept here as
   :func:`skip_list_base`: the coarse levels taken from the database on their anchors,
   so that a point re-sends up to one finest bucket of changes), and what compaction
   stored in the repository instead.

Writes ``bench/results/replicate.json`` and prints tables.

    .venv/bin/python bench/replicate.py                       # defaults (a few minutes)
    .venv/bin/python bench/replicate.py --seconds 10 --points 300   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import lamina
from lamina.backup import kernel
from lamina.repository import Repository
from lamina.repository.index import ImageRecord, Index
from lamina.repository.levels import LevelPolicy, full_due, order
from lamina.repository.points import list_points
from lamina.repository.replicate import ReplicateOptions, Replicator
from lamina.repository.timespec import parse_at

ROOT = Path(__file__).resolve().parent.parent
S = 10**9

WRITER = r"""
import json, os, random, sys, time
import lamina
path, out, stop, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
db = lamina.open(path, create=False, sync=False, lock_timeout=600)
log = db.archive("log")
rng = random.Random(1)
rows = []
i = 0
print("ready", flush=True)
next_at = time.perf_counter()
while not os.path.exists(stop):
    start = time.perf_counter()
    if i % 2 == 0:
        with db.write() as txn:
            txn.table("kv").put(b"key%012d" % rng.randrange(200_000), rng.randbytes(100))
    else:
        log.append(b"writer row %d" % i)
    end = time.perf_counter()
    rows.append((db.lockfile.commit_seq(), time.time_ns(), end - start))
    i += 1
    next_at += 1.0 / rate
    delay = next_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
db.close()
with open(out, "w") as f:
    json.dump(rows, f)
"""


def build(path: Path, size_mb: int) -> None:
    """A database of about ``size_mb`` MB: btree table ``kv`` and archive table ``log``."""
    rng = random.Random(7)
    rows = int(size_mb * 1e6 * 0.7 / 1024)
    with lamina.open(path, sync=False) as db:
        db.create_table("kv")
        db.create_table("log", "archive")
        with db.write() as txn:
            txn.table("kv").bulk_load((b"key%012d" % i, rng.randbytes(900))
                                      for i in range(rows))
        for _ in range(int(size_mb * 0.3)):
            db.append_many("log", [rng.randbytes(200) + b"x" * 800 for _ in range(1000)])


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def writer_run(db: Path, work: Path, seconds: float, rate: float,
               replicate_to: Path | None) -> dict[str, Any]:
    """One writer run of ``seconds``, alone or beside a replicator into ``replicate_to``."""
    tag = f"{'rep' if replicate_to else 'alone'}-{time.monotonic_ns()}"
    out, stop = work / f"writer-{tag}.json", work / f"stop-{tag}"
    rep = None
    events: list[dict[str, Any]] = []
    if replicate_to is not None:
        status = work / f"status-{tag}.json"
        rep = subprocess.Popen([sys.executable, "-m", "lamina.cli", "replicate", str(db),
                                "--repo", str(replicate_to), "--interval", "1s",
                                "--status-file", str(status), "--json"],
                               stdout=subprocess.PIPE, text=True)
        while not status.exists() or json.loads(status.read_text())["points"] < 1:
            time.sleep(0.05)  # the first full, before the measured window
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(out), str(stop),
                               str(rate)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    writer.stdout.readline()
    time.sleep(seconds)
    stop.touch()
    writer.wait(timeout=600)
    rows = json.loads(out.read_text())
    if rep is not None:
        last_seq = rows[-1][0]
        while json.loads(status.read_text()).get("last_vp_seq", 0) < last_seq:
            time.sleep(0.05)
        rep.send_signal(signal.SIGTERM)
        text, _ = rep.communicate(timeout=600)
        assert rep.returncode == 0, text
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
    lats = [r[2] * 1e3 for r in rows]
    result: dict[str, Any] = {
        "replicator": replicate_to is not None, "commits": len(rows),
        "commits_per_s": len(rows) / seconds, "p50_ms": pct(lats, 0.5),
        "p99_ms": pct(lats, 0.99), "max_ms": max(lats)}
    if events:
        published = sorted((e["vp_seq"], parse_at(e["time"], 0)) for e in events
                           if e["event"] in ("point", "full"))
        rpo, j = [], 0
        for seq, end_ns, _lat in rows:
            while j < len(published) and published[j][0] < seq:
                j += 1
            if j < len(published):
                rpo.append((published[j][1] - end_ns) / 1e9)
        result.update(points=len(published), rpo_p50_s=pct(rpo, 0.5),
                      rpo_p99_s=pct(rpo, 0.99), rpo_max_s=max(rpo),
                      bytes_sent=sum(e["bytes"] for e in events if "bytes" in e))
    return result


class _FakeTime:
    """``time`` with a settable ``time_ns`` (the VP clock), for compressed time."""

    def __init__(self, now: int) -> None:
        self.now = now

    def time_ns(self) -> int:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def compressed_time(start: int) -> Iterator[_FakeTime]:
    """Backups inside get the VP time ``clock.now`` (advanced by the caller)."""
    fake = _FakeTime(start)
    with mock.patch.object(kernel, "time", fake):
        yield fake


def restore_cost(repo: Repository, backup_id: str, dest: Path) -> dict[str, Any]:
    """Restore one point; images and bytes read, seconds."""
    started = time.perf_counter()
    result = repo.restore(dest, id=backup_id)
    seconds = time.perf_counter() - started
    entries = {e.record.backup_id: e for e in repo.list()[0]}
    chain = entries[result.backup_id].chain or ()
    size = sum(entries[c].record.size for c in chain)
    shutil.rmtree(dest)
    return {"images": len(result.chain), "bytes": size, "seconds": seconds,
            "chain": len(chain)}


def skip_list_base(index: Index, now_ns: int, policy: LevelPolicy) -> ImageRecord | None:
    """The base the replicator chose before level compaction (for comparison only): from
    the newest full, coarsest level first, descend into the newest point built directly on
    the current anchor while it lies in the same bucket as ``now_ns``; the point is taken on
    the last anchor reached (None: no full yet)."""
    fulls = [r for r in index.records.values() if r.error is None and not r.is_layer]
    anchor = max(fulls, key=order, default=None)
    if anchor is None:
        return None
    kids = index.children()
    for bucket in reversed(policy.levels_ns):
        newest = max(kids.get(anchor.backup_id, []), key=order, default=None)
        if newest is None or newest.vp_wall_ns // bucket != now_ns // bucket:
            return anchor
        anchor = newest
    return anchor


def restore_bench(work: Path, size_mb: int, points: int, seed: int) -> dict[str, Any]:
    """Parts 2 and 3 (see the module doc)."""
    db_path = work / "rdb"
    build(db_path, size_mb)
    rng = random.Random(seed)
    levelled = Repository.init(work / "levelled")
    linear = Repository.init(work / "linear", chain_limit=10**6)
    before = Repository.init(work / "before", chain_limit=10**6)
    full_repo = Repository.init(work / "full")
    policy = LevelPolicy()  # 10 s, 1 min, 1 h; fine window 10 min; a full a day or at 50 %
    cost = {"before": {"read": 0, "sent": 0, "layers": 0},
            "after": {"read": 0, "sent": 0, "layers": 0}}
    started = time.perf_counter()
    compact_s = 0.0
    with compressed_time(1_800_000_000 * S) as clock, \
            lamina.open(db_path, sync=False) as db:
        rep = Replicator(db, levelled, ReplicateOptions(policy=policy),
                         clock=lambda: clock.now)
        real_compact = rep._compact

        def timed_compact() -> None:
            nonlocal compact_s
            t = time.perf_counter()
            real_compact()
            compact_s += time.perf_counter() - t

        rep._compact = timed_compact  # type: ignore[method-assign]
        log = db.archive("log")
        first = True
        for i in range(points):
            for _ in range(rng.randint(1, 20)):
                with db.write() as txn:
                    txn.table("kv").put(b"key%012d" % rng.randrange(200_000),
                                        rng.randbytes(100))
                log.append(b"row %d" % i)
            clock.now += S if rng.random() >= 0.1 else 16 * 60 * S
            read, sent, layers = (rep.status.bytes_read, rep.status.bytes_sent,
                                  rep.status.layers_sent)
            rep.step()
            if rep.status.layers_sent > layers:  # a layer (fulls are not compared)
                cost["after"]["read"] += rep.status.bytes_read - read
                cost["after"]["sent"] += rep.status.bytes_sent - sent
                cost["after"]["layers"] += 1
            linear.backup(db)
            entries, _ = before.list()
            index = Index([e.record for e in entries])
            base = skip_list_base(index, clock.now, policy)
            result = before.backup(db, full=base is None,
                                   base=None if base is None else str(base.backup_id))
            if base is not None and full_due(index, base, clock.now, policy) is not None:
                before.merge_to_full(str(result.backup_id))  # as it did: in the repository
            if not first:
                cost["before"]["read"] += result.result.raw_bytes
                cost["before"]["sent"] += result.result.size
                cost["before"]["layers"] += 1
            first = False
        replicate_s = time.perf_counter() - started
        full_repo.backup(db, full=True)
    found, _ = list_points(levelled)
    newest = found[-1]
    longest = max(found, key=lambda p: (p.images, p.vp_seq))
    sample = [newest, longest, *rng.sample(found[:-1], min(4, len(found) - 1))]
    simulated = found[-1].vp_wall_ns - found[0].vp_wall_ns
    out: dict[str, Any] = {"points_taken": points, "points_kept": len(found),
                           "simulated_hours": simulated / 3600 / S,
                           "max_images": max(p.images for p in found),
                           "replicate_seconds": replicate_s, "compact_seconds": compact_s,
                           "compactions": rep.status.compactions,
                           "merged_bytes": rep.status.merged_bytes,
                           "fulls_merged": rep.status.fulls_merged,
                           "cost": cost,
                           "levelled": [restore_cost(levelled, str(p.backup_id),
                                                     work / "r") | {"vp_seq": p.vp_seq}
                                        for p in sample]}
    out["full"] = restore_cost(full_repo, str(full_repo.list()[0][0].record.backup_id),
                               work / "r")
    newest_linear = max(linear.list()[0], key=lambda e: e.record.vp_seq)
    out["linear"] = restore_cost(linear, str(newest_linear.record.backup_id), work / "r")
    out["ratio_newest_to_full"] = out["levelled"][0]["seconds"] / out["full"]["seconds"]
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric figure's median over ``runs`` (the runs themselves under ``runs``)."""
    out: dict[str, Any] = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = runs
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--points", type=int, default=900)
    parser.add_argument("--restore-size-mb", type=int, default=20)
    parser.add_argument("--repo-dir", type=Path,
                        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "replicate.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamina-replicate-", dir=args.workdir))
    repo_root = Path(tempfile.mkdtemp(prefix="lamina-replicate-repo-", dir=args.repo_dir))
    try:
        db = work / "db"
        print(f"building a {args.size_mb} MB database ...", flush=True)
        build(db, args.size_mb)
        Repository.init(repo_root / "repo")
        alone_runs, beside_runs = [], []
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}: writer alone, {args.seconds:g} s at "
                  f"{args.rate:g} commits/s, then beside lamina replicate --interval 1s ...",
                  flush=True)
            alone_runs.append(writer_run(db, work, args.seconds, args.rate, None))
            beside_runs.append(writer_run(db, work, args.seconds, args.rate,
                                          repo_root / "repo"))
        alone, beside = median_of(alone_runs), median_of(beside_runs)
        print(f"{args.points} compressed 1-second points ...", flush=True)
        restore = restore_bench(work, args.restore_size_mb, args.points, 14)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(repo_root, ignore_errors=True)
    print()
    print("| writer | commits/s | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in (("alone", alone), ("beside replicate --interval 1s", beside)):
        print(f"| {name} | {r['commits_per_s']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
              f"| {r['max_ms']:.1f} |")
    print()
    print(f"RPO over {beside['commits']} commits, {beside['points']} points: "
          f"p50 {beside['rpo_p50_s']:.2f} s, p99 {beside['rpo_p99_s']:.2f} s, "
          f"max {beside['rpo_max_s']:.2f} s; {beside['bytes_sent'] / 1e6:.1f} MB sent")
    print()
    print(f"restore after {restore['points_taken']} points over "
          f"{restore['simulated_hours']:.1f} simulated hours ({restore['points_kept']} kept, "
          f"at most {restore['max_images']} images per point; {restore['compactions']} "
          f"compaction merges stored {restore['merged_bytes'] / 1e6:.1f} MB in "
          f"{restore['compact_seconds']:.1f} s, {restore['fulls_merged']} fulls merged):")
    print("| restore | images | MB read | seconds | x full |")
    print("| --- | --- | --- | --- | --- |")
    full_s = restore["full"]["seconds"]
    rows = [("one full image", restore["full"])]
    names = ["newest point", "longest chain"] + ["random point"] * 4
    rows += [(f"{n} (seq {r['vp_seq']})", r) for n, r in zip(names, restore["levelled"],
                                                                strict=False)]
    rows += [("linear chain (no levels), newest", restore["linear"])]
    for name, r in rows:
        print(f"| {name} | {r['images']} | {r['bytes'] / 1e6:.1f} | {r['seconds']:.2f} | "
              f"{r['seconds'] / full_s:.2f} |")
    print()
    print("| per layer point, from the database | raw KB read | KB sent |")
    print("| --- | --- | --- |")
    for name, key in (("before (coarse levels from the database)", "before"),
                      ("after (every point on the newest; compaction)", "after")):
        c = restore["cost"][key]
        n = max(c["layers"], 1)
        print(f"| {name} | {c['read'] / n / 1e3:.1f} | {c['sent'] / n / 1e3:.1f} |")
    n = max(restore["cost"]["after"]["layers"], 1)
    print(f"compaction stored {restore['merged_bytes'] / n / 1e3:.1f} KB per point in the "
          "repository (read from it, never from the database)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"alone": alone, "replicate": beside, "restore": restore,
                                    "args": {k: str(v) for k, v in vars(args).items()}},
                                   indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
