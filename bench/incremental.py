"""Incremental backup (layers) against a full backup and a page-scan baseline, in one run.

Builds a btree database of ``--size-mb`` (default 1 GiB: ~1M keys of 900-byte values, four
per 4 KiB leaf), takes a full image, then for 0.1%, 1% and 10% of the keys, changed at
random and as one clustered key range, takes:

* a layer as Lamina takes it: the Merkle walk from the VP root that descends only into
  children whose recorded txnid is newer than the base's (cost ~ pages changed);
* the same layer found the XtraBackup / LMDB way: a sequential scan of the whole data file
  reading every page's txnid (``ScanBtreeBackupEngine`` below; same stream, same pages:
  its pages hash must equal the walk's);

and reports their time and size against the full backup, each twice: with the data file in
the page cache (warm), and with it evicted first (cold: ``posix_fadvise(DONTNEED)`` on the
benchmark's own file only, after closing the database so no page stays mapped) -- the case
where a scan has to read the whole file from the device. Then it changes 1% of the keys ten
times, with a layer after each, and times the one-pass restore of that full + 10-layer
chain against the restore of one full image of the same state (both end-to-end: assembly,
root hash, checker; images warm). One run per point (the points are many). Prints a table,
writes JSON and a PNG plot.

    .venv/bin/python bench/incremental.py                 # ~1 GiB, a few minutes
    .venv/bin/python bench/incremental.py --size-mb 64    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lamina
from lamina import online
from lamina.backup.kernel import BackupResult, run_backup
from lamina.core.driver import BackupDriver, BackupFlags, DriverGroup, TableSpec
from lamina.database import Database
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.engines.btree.backup_driver import BtreeBackupDriver
from lamina.engines.btree.facts import base_txnid_of
from lamina.engines.btree.txn import ReadTxn
from lamina.online import layers

KEY_BYTES, VALUE_BYTES = 16, 900  # 4 entries per 4 KiB leaf, values stored inline
PAGE_SIZE = 4096
PERCENTS = (0.1, 1.0, 10.0)
PATTERNS = ("random", "clustered")
SCAN_CHUNK = 1 << 20
HERE = Path(__file__).resolve().parent


def _key(i: int) -> bytes:
    return b"%016d" % i


def _value(rng: random.Random) -> bytes:
    return rng.randbytes(VALUE_BYTES // 2).hex().encode()  # compressible about 2:1


# ---------------------------------------------------------------------- scan baseline
class ScanBtreeBackupDriver(BtreeBackupDriver):
    """A layer driver that finds changed pages by reading the whole data file sequentially
    and looking at every page's txnid (skipping the snapshot's free pages)."""

    def changed_pages(self, txn: ReadTxn, base_txnid: int) -> Iterator[tuple[int, bytes]]:
        free = txn.free_pages()
        pager = self._store._pager
        ps, total = pager.page_size, txn.meta.total_pages
        fd = pager.fd
        unpack = struct.Struct("<Q").unpack_from
        for start in range(0, total * ps, SCAN_CHUNK):
            chunk = os.pread(fd, min(SCAN_CHUNK, total * ps - start), start)
            first = start // ps
            for i in range(len(chunk) // ps):
                pgno = first + i
                if pgno < 2 or pgno in free:
                    continue
                if unpack(chunk, i * ps + 8)[0] > base_txnid:
                    yield pgno, chunk[i * ps:(i + 1) * ps]


class ScanBtreeBackupEngine(BtreeBackupEngine):
    """``btree`` engine whose layers use :class:`ScanBtreeBackupDriver`."""

    def get_backup(self, tables: Sequence[TableSpec], flags: BackupFlags) -> BackupDriver:
        assert self.store is not None and flags.layer
        return ScanBtreeBackupDriver(self.store, tables,
                                     base_txnid=base_txnid_of(flags.base_facts))


def scan_layer(db: Database, target: Path, base: Path) -> BackupResult:
    """A layer of ``db`` on ``base`` whose btree pages are found by the scan."""
    ref, facts = layers.layer_base(db, base)
    groups = layers.layer_groups(online.plan_groups(db, None), ref, facts)
    groups = [DriverGroup(ScanBtreeBackupEngine(db.store), g.tables, g.flags)
              if g.engine.name == "btree" else g for g in groups]
    return run_backup(groups, target, commit_blocker=db.lockfile,
                      commit_seq=db.lockfile.commit_seq, database_id=db.identity.db_id,
                      base=ref)


# ---------------------------------------------------------------------- workload
def build(path: Path, n_keys: int, seed: int) -> None:
    rng = random.Random(seed)
    with lamina.open(path, page_size=PAGE_SIZE, sync=False) as db:
        db.create_table("data")
        with db.write() as txn:
            txn.table("data").bulk_load((_key(i), _value(rng)) for i in range(n_keys))


def change(db: Database, keys: Sequence[int], rng: random.Random) -> None:
    """Overwrite ``keys`` with same-size values, 5,000 per transaction."""
    for start in range(0, len(keys), 5000):
        with db.write() as txn:
            t = txn.table("data")
            for k in keys[start:start + 5000]:
                t.put(_key(k), _value(rng))


def pick(n_keys: int, pct: float, pattern: str, rng: random.Random) -> list[int]:
    count = max(1, round(n_keys * pct / 100))
    if pattern == "random":
        return sorted(rng.sample(range(n_keys), count))
    first = rng.randrange(0, n_keys - count + 1)
    return list(range(first, first + count))


def _figures(result: BackupResult) -> dict[str, Any]:
    return {"seconds": result.elapsed_ns / 1e9, "bytes": result.size,
            "pages": result.manifest.vp.drivers[0]["pages_sent"],
            "pages_hash": result.manifest.vp.drivers[0]["pages_hash"]}


def timed_backup(db: Database, target: Path, base: Path | None = None) -> dict[str, Any]:
    return _figures(db.backup(target, base=base))


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (the file must not be mapped)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_layer(db_path: Path, target: Path, base: Path, scan: bool) -> dict[str, Any]:
    """A layer taken right after the data file was evicted from the page cache (the image
    is measured, then deleted: it is a fork of the chain)."""
    evict(db_path / "data.lamina")
    with lamina.open(db_path, create=False, sync=False) as db:
        result = scan_layer(db, target, base) if scan else db.backup(target, base=base)
    target.unlink()
    return _figures(result)


# ---------------------------------------------------------------------- main
def run(size_mb: int, workdir: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    n_keys = max(1000, size_mb * (1 << 20) // PAGE_SIZE * 4)
    db_path = workdir / "db"
    t0 = time.perf_counter()
    build(db_path, n_keys, seed)
    build_s = time.perf_counter() - t0
    out: dict[str, Any] = {"size_mb": size_mb, "keys": n_keys, "value_bytes": VALUE_BYTES,
                           "page_size": PAGE_SIZE, "build_seconds": build_s, "layers": []}
    with lamina.open(db_path, create=False, sync=False) as db:
        stat = db.stat()["btree"]
        out.update(total_pages=stat["total_pages"], data_file_bytes=stat["file_size"],
                   depth=stat["depth"])
        full = timed_backup(db, workdir / "full.img")
    out["full"] = full
    evict(db_path / "data.lamina")
    with lamina.open(db_path, create=False, sync=False) as db:
        out["full_cold"] = cold = timed_backup(db, workdir / "full-cold.img")
    (workdir / "full-cold.img").unlink()
    print(f"  full backup: {full['seconds']:.2f}s warm, {cold['seconds']:.2f}s cold", flush=True)
    prev = workdir / "full.img"
    for pct in PERCENTS:
        for pattern in PATTERNS:
            keys = pick(n_keys, pct, pattern, rng)
            name = f"{pct:g}%-{pattern}"
            with lamina.open(db_path, create=False, sync=False) as db:
                change(db, keys, rng)
                walk = timed_backup(db, workdir / f"walk-{name}.img", base=prev)
                scan = _figures(scan_layer(db, workdir / f"scan-{name}.img", prev))
            (workdir / f"scan-{name}.img").unlink()
            walk_cold = cold_layer(db_path, workdir / f"cw-{name}.img", prev, scan=False)
            scan_cold = cold_layer(db_path, workdir / f"cs-{name}.img", prev, scan=True)
            for other in (scan, walk_cold, scan_cold):  # the same pages, found two ways
                assert other["pages_hash"] == walk["pages_hash"], "walk and scan differ"
            out["layers"].append({
                "percent": pct, "pattern": pattern, "changed_keys": len(keys),
                "pages": walk["pages"], "walk": walk, "scan": scan,
                "walk_cold": walk_cold, "scan_cold": scan_cold,
                "walk_vs_full": walk["seconds"] / full["seconds"],
                "scan_vs_full": scan["seconds"] / full["seconds"],
                "walk_cold_vs_full_cold": walk_cold["seconds"] / cold["seconds"],
                "scan_cold_vs_full_cold": scan_cold["seconds"] / cold["seconds"],
                "size_vs_full": walk["bytes"] / full["bytes"]})
            print(f"  {name:>14}: {len(keys):>8} keys, {walk['pages']:>7} pages, walk "
                  f"{walk['seconds']:.3f}s/{walk_cold['seconds']:.3f}s cold, scan "
                  f"{scan['seconds']:.3f}s/{scan_cold['seconds']:.3f}s cold", flush=True)
            prev = workdir / f"walk-{name}.img"
    with lamina.open(db_path, create=False, sync=False) as db:
        # A fresh chain: full + 10 layers of 1% random each; then one full of that state.
        images = [workdir / "chain-00.img"]
        db.backup(images[0])
        layer_seconds = []
        for i in range(1, 11):
            change(db, pick(n_keys, 1.0, "random", rng), rng)
            images.append(workdir / f"chain-{i:02d}.img")
            layer_seconds.append(timed_backup(db, images[-1], base=images[-2])["seconds"])
        single = workdir / "single.img"
        db.backup(single)
    t0 = time.perf_counter()
    online.restore_chain(images, workdir / "r-chain")
    chain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    online.restore(single, workdir / "r-single")
    single_s = time.perf_counter() - t0
    with lamina.open(workdir / "r-chain", create=False) as a, \
            lamina.open(workdir / "r-single", create=False) as b, a.read() as ta, \
            b.read() as tb:
        assert ta.root_hash == tb.root_hash
    out["restore"] = {
        "chain_images": len(images), "chain_bytes": sum(p.stat().st_size for p in images),
        "single_bytes": single.stat().st_size, "chain_seconds": chain_s,
        "single_seconds": single_s, "ratio": chain_s / single_s,
        "layer_seconds": layer_seconds}
    return out


def report(res: dict[str, Any]) -> None:
    full, cold = res["full"], res["full_cold"]
    print(f"\nDatabase: {res['data_file_bytes'] / 2**20:.0f} MiB data file, {res['keys']:,} "
          f"keys, {res['total_pages']:,} pages of {res['page_size']} B, depth {res['depth']}")
    print(f"Full backup: {full['seconds']:.2f}s warm, {cold['seconds']:.2f}s cold; "
          f"{full['bytes'] / 2**20:.1f} MiB image\n")
    print(f"{'':36}{'--- warm page cache ---':^28} {'--- data file evicted ---':^28}")
    head = (f"{'changed':>8} {'pattern':>9} {'pages':>7} {'MiB':>7} "
            f"{'walk s':>7} {'/full':>6} {'scan s':>7} {'/full':>6} "
            f"{'walk s':>7} {'/full':>6} {'scan s':>7} {'/full':>6}")
    print(head)
    print("-" * len(head))
    for row in res["layers"]:
        w, s, wc, sc = row["walk"], row["scan"], row["walk_cold"], row["scan_cold"]
        print(f"{row['percent']:>7g}% {row['pattern']:>9} {row['pages']:>7,} "
              f"{w['bytes'] / 2**20:>7.2f} {w['seconds']:>7.3f} {row['walk_vs_full']:>6.1%} "
              f"{s['seconds']:>7.3f} {row['scan_vs_full']:>6.1%} {wc['seconds']:>7.3f} "
              f"{row['walk_cold_vs_full_cold']:>6.1%} {sc['seconds']:>7.3f} "
              f"{row['scan_cold_vs_full_cold']:>6.1%}")
    r = res["restore"]
    print("\nRestore, end to end (assembly + root hash + checker):")
    print(f"  full + {r['chain_images'] - 1} layers (1% random each, "
          f"{r['chain_bytes'] / 2**20:.0f} MiB read): {r['chain_seconds']:.2f}s")
    print(f"  one full image of the same state ({r['single_bytes'] / 2**20:.0f} MiB): "
          f"{r['single_seconds']:.2f}s")
    print(f"  ratio chain / single: {r['ratio']:.2f}")


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    for ax, pattern in zip(axes, PATTERNS, strict=True):
        rows = [r for r in res["layers"] if r["pattern"] == pattern]
        xs = [r["percent"] for r in rows]
        for key, label, style in (("walk", "layer: Merkle walk", "-"),
                                  ("scan", "layer: txnid scan of the file", "--")):
            ax.plot(xs, [r[key]["seconds"] for r in rows], style, marker="o", color="C0"
                    if key == "walk" else "C1", label=f"{label}, warm cache")
            ax.plot(xs, [r[key + "_cold"]["seconds"] for r in rows], style, marker="s",
                    color="C2" if key == "walk" else "C3", label=f"{label}, file evicted")
        ax.axhline(res["full"]["seconds"], color="black", linewidth=1,
                   label=f"full backup, warm ({res['full']['seconds']:.1f}s)")
        ax.axhline(res["full_cold"]["seconds"], color="gray", linewidth=1, linestyle=":",
                   label=f"full backup, evicted ({res['full_cold']['seconds']:.1f}s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"keys changed since the base image (%), {pattern}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("backup time (s)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Incremental backup (layer) of a {res['data_file_bytes'] / 2**30:.2f} GiB "
                 "btree database")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="Where to build (default: a temporary directory, removed after).")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "incremental.json")
    ap.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "img" / "incremental.png")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-inc-", dir=args.workdir))
    try:
        res = run(args.size_mb, work, args.seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    plot(res, args.plot)
    print(f"\nwrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
