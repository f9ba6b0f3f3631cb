"""``lamina demo``: show what Lamina does, end to end, in a temporary directory."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

import lamina
from lamina.cli.common import emit_json, human_bytes, json_option
from lamina.errors import AlreadyExistsError, CheckFailedError


def _key(i: int) -> bytes:
    return b"key:%012d" % i  # 16 bytes, sorts like i


def _value(i: int) -> bytes:
    return (b"value-%d-" % i).ljust(100, b"v")


def _log_line(i: int, rng: random.Random) -> bytes:
    level = rng.choice([b"INFO", b"INFO", b"INFO", b"WARN", b"ERROR"])
    return (b"2026-11-21T10:%02d:%02d.%03dZ %s svc=api req=%08x path=/v1/items/%d "
            b"status=%d latency_ms=%d" % (i // 60000 % 60, i // 1000 % 60, i % 1000, level,
                                          rng.getrandbits(32), rng.randrange(10000),
                                          rng.choice([200, 200, 200, 404, 500]),
                                          rng.randrange(1, 900)))


class _Steps:
    """Times each step and collects a row for the summary table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float, str]] = []

    def run(self, name: str, items: int, unit: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        rate = f"{items / elapsed:,.0f} {unit}/s" if items and elapsed > 0 else ""
        self.rows.append((name, items, elapsed, rate))
        return result


@click.command("demo")
@click.option("--keys", type=click.IntRange(min=1), default=300_000, show_default=True,
              help="Keys to load into the btree table.")
@click.option("--rows", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Rows to append to the archive table.")
@click.option("--dir", "directory", type=click.Path(), default=None,
              help="Keep the database here instead of a temporary directory.")
@json_option
def command(keys: int, rows: int, directory: str | None, as_json: bool) -> None:
    """Create a database, load and read keys and rows, check it, print a summary."""
    if directory is not None and Path(directory).exists() and any(Path(directory).iterdir()):
        raise AlreadyExistsError(f"{directory} exists; --dir names a new database directory")
    with tempfile.TemporaryDirectory(prefix="lamina-demo-") as tmp:
        path = Path(directory) if directory else Path(tmp) / "demo.db"
        report = _run(path, keys, rows)
    if as_json:
        emit_json(report)
    else:
        _print(Console(), report)


def _run(path: Path, keys: int, rows: int) -> dict[str, Any]:
    steps = _Steps()
    rng = random.Random(42)
    db = lamina.open(path)
    try:
        db.create_table("kv")
        db.create_table("events", engine="archive")

        def bulk() -> None:
            with db.write() as txn:
                txn.table("kv").bulk_load((_key(i), _value(i)) for i in range(keys))

        steps.run("btree bulk load (sorted)", keys, "keys", bulk)
        updates = min(keys, 20_000)

        def random_puts() -> None:
            for start in range(0, updates, 1_000):
                with db.write() as txn:
                    t = txn.table("kv")
                    for i in range(start, min(start + 1_000, updates)):
                        t.put(_key(rng.randrange(keys)), _value(i) + b"!")

        steps.run("btree random puts (1,000 per commit)", updates, "puts", random_puts)
        order = list(range(keys))
        rng.shuffle(order)

        def point_reads() -> int:
            found = 0
            with db.read() as txn:
                get = txn.table("kv").get
                for i in order:
                    if get(_key(i)) is not None:
                        found += 1
            return found

        found = steps.run("btree random point reads", keys, "reads", point_reads)
        if found != keys:
            raise CheckFailedError(f"demo read back {found} of {keys} keys")

        def range_scan() -> int:
            with db.read() as txn:
                return sum(1 for _ in txn.table("kv").items())

        scanned = steps.run("btree full range scan", keys, "keys", range_scan)
        with db.read() as txn:
            counted = txn.table("kv").count(_key(keys // 4), _key(keys // 2))
        steps.rows.append(("btree count(lo, hi) from subtree counts", counted, 0.0, ""))
        lines = [_log_line(i, rng) for i in range(rows)]

        def appends() -> None:
            for start in range(0, rows, 1_000):
                db.append_many("events", lines[start:start + 1_000])

        steps.run("archive appends (1,000 per commit)", rows, "rows", appends)

        def archive_scan() -> int:
            n = 0
            for row_id, row in db.scan("events"):
                if row != lines[row_id - 1]:
                    raise CheckFailedError(f"archive row {row_id} differs")
                n += 1
            return n

        steps.run("archive full scan (verified)", rows, "rows", archive_scan)
        steps.run("archive optimize", rows, "rows", lambda: db.archive("events").optimize())
        report = steps.run("checker (every page, hash, block)", 0, "", db.check)
        if not report.ok:
            raise CheckFailedError(f"checker found {len(report.findings)} problems",
                                   report.findings)
        stat = db.stat()
        with tempfile.TemporaryDirectory(prefix="lamina-demo-backup-") as work:
            backup_report = _online_backup(db, Path(work), steps)
    finally:
        db.close()

    bt = stat["btree"]
    ev = stat["archive"]["events"]
    return {"path": str(path),
            "steps": [{"step": name, "items": items, "seconds": secs, "rate": rate}
                      for name, items, secs, rate in steps.rows],
            "btree": {"table": "kv", "entries": bt.get("entries"), "scanned": scanned,
                      "depth": bt.get("depth"), "txnid": bt.get("txnid"),
                      "file_size": bt.get("file_size"), "commit_seq": stat["commit_seq"]},
            "archive": {"table": "events", "rows": ev.get("rows"),
                        "stored_bytes": ev.get("stored_bytes"), "ratio": ev.get("ratio"),
                        "generation": ev.get("generation")},
            "check": "clean", **backup_report}


def _print(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"lamina demo — {report['path']}")
    table.add_column("step")
    table.add_column("items", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("rate", justify="right")
    for step in report["steps"]:
        items = f"{step['items']:,}" if step["items"] else ""
        table.add_row(step["step"], items, f"{step['seconds']:.3f}" if step["seconds"] else "",
                      step["rate"])
    console.print(table)
    bt, ev = report["btree"], report["archive"]
    console.print(f"btree: {bt['entries']:,} entries in 'kv' (scan read {bt['scanned']:,}), "
                  f"depth {bt['depth']}, txnid {bt['txnid']}, "
                  f"file {human_bytes(bt['file_size'] or 0)}; commit seq {bt['commit_seq']}")
    console.print(f"archive 'events': {ev['rows']:,} rows, "
                  f"{human_bytes(ev['stored_bytes'] or 0)} stored "
                  f"(ratio {ev['ratio']}), generation {ev['generation']}")
    console.print("[bold green]check: clean[/bold green]")
    sizes = ", ".join(f"{b['kind']} {human_bytes(b['size'])} at seq {b['vp_commit_seq']}"
                      for b in report["backups"])
    console.print(f"online backups: {sizes}; commit blocker held at most "
                  f"{report['blocker_held_max_ms']:.3f} ms; writer committed "
                  f"{report['writer_commits']:,} transactions meanwhile")
    for r in report["restores"]:
        console.print(f"restored {r['chain']} = workload state after seq {r['at_seq']} "
                      f"({r['commits_applied']} workload commits): exact")


def _online_backup(db: lamina.Database, work: Path, steps: _Steps) -> dict[str, Any]:
    """While a workload writer commits: a full backup and two layers. Then restore the
    whole chain and its middle point, verify both deep, and prove each holds exactly the
    workload's state at its validity point."""
    import threading
    import time

    from lamina import workload
    from lamina.online import chain

    workload.ensure_tables(db)
    log_path = work / "workload.log"
    stop = threading.Event()
    done: list[int] = []
    images = [work / "full.lamina", work / "layer1.lamina", work / "layer2.lamina"]
    results = []
    with open(log_path, "w") as log:
        workload.run(db, seed=3, steps=50, log=log)  # some history before the backup

        def writer() -> None:
            step = 50
            while not stop.is_set():
                done.append(workload.run(db, seed=3, steps=20, log=log, first_step=step))
                step += 20

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            results.append(steps.run("online full backup while a writer commits", 0, "",
                                     lambda: db.backup(images[0])))
            for n in (1, 2):
                time.sleep(0.2)  # let the writer change things between the backups
                results.append(steps.run(f"online layer {n} (changed pages only)", 0, "",
                                         partial(db.backup, images[n], base=images[n - 1])))
        finally:
            stop.set()
            thread.join()
    restores = []
    for label, prefix in (("chain full+layer1+layer2", images), ("middle point full+layer1",
                                                                  images[:2])):
        dest = work / ("restored-" + str(len(prefix)))
        steps.run(f"restore {label} (one pass)", 0, "",
                  partial(chain.restore_chain, prefix, dest))
        steps.run(f"verify --deep {label}", 0, "", partial(chain.verify_chain, prefix, deep=True))
        with lamina.open(dest, create=False) as copy:
            summary = workload.verify(copy, log_path)
        restores.append({"chain": label, "at_seq": summary["at_seq"],
                         "commits_applied": summary["commits_applied"]})
    return {"backups": [{"kind": r.manifest.kind.name.lower(), "image_id": str(r.image_id),
                         "size": r.size, "vp_commit_seq": r.vp.commit_seq} for r in results],
            "blocker_held_max_ms": max(r.blocker_held_ns for r in results) / 1e6,
            "writer_commits": sum(done), "restores": restores}
