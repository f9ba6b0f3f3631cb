"""How backup, layer, restore and verify scale with the database size, against ``cp``.

For each size (``--sizes``, MiB; default 256, 1024 and 4096) one run: a Lamina database
of one btree table, bulk-loaded with 16-byte keys and 100-byte values, then

* ``cp -r`` of the database directory + fsync (the physical limit of a copy),
* a full backup (zstd, the default; and ``--compress none``),
* a layer on the full image after 1,000 random keys changed,
* a restore of the full (zstd) image into a new directory,
* ``verify --deep`` of the full (zstd) image,

each in a fresh process, timed inside it (the interpreter's start-up is not counted) and
with its peak RSS (``VmHWM``; file pages a process maps and touches count too). Ratios
are ``cp`` time / operation time (1.0 = as fast as ``cp``). Prints a table, writes
``bench/results/scale.json``.

    .venv/bin/python bench/scale.py                      # 256 MiB, 1 GiB, 4 GiB
    .venv/bin/python bench/scale.py --sizes 256,1024     # skip the 4 GiB run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lamina

ROOT = Path(__file__).resolve().parent.parent
KEY_BYTES, VALUE_BYTES = 16, 100
#: Bytes a bulk-loaded entry takes in 4 KiB leaves (4 + 16 + 100 per entry, 33 a leaf).
ENTRY_BYTES = 124
CHANGED_KEYS = 1000

CHILD = r"""
import json, sys, time
from lamina import online
import lamina
op, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
if op == "backup":
    with lamina.open(args[0], create=False) as db:
        kw = {"base": args[3]} if len(args) > 3 else {}
        result = online.backup(db, args[1], codec=args[2], **kw)
    extra = {"image_bytes": result.size}
elif op == "restore":
    online.restore(args[0], args[1])
    extra = {}
elif op == "verify":
    online.verify(args[0], deep=True)
    extra = {}
else:
    raise SystemExit(f"unknown op {op}")
seconds = time.perf_counter() - start
# VmHWM: this process's peak RSS (getrusage's ru_maxrss would carry the parent's over exec).
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"seconds": seconds, "peak_rss_mib": int(hwm) / 1024, **extra}))
"""


def child(*argv: str) -> dict[str, Any]:
    """Run one operation in a fresh interpreter; its own timing plus its peak RSS."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with exit {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(path: Path, size_mib: int) -> int:
    """A database of about ``size_mib`` MiB: one bulk-loaded table. Returns its keys."""
    keys = size_mib * 2**20 // ENTRY_BYTES
    rng = random.Random(1)
    with lamina.open(path, sync=False) as db:
        db.create_table("kv")
        with db.write() as txn:
            txn.table("kv").bulk_load((b"%016d" % i, rng.randbytes(VALUE_BYTES // 2).hex().encode())
                                      for i in range(keys))
    return keys


def cp(src: Path, dst: Path) -> float:
    """``cp -r`` + fsync of every file: seconds."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    for f in dst.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    return time.perf_counter() - start


def one_size(work: Path, size_mib: int) -> dict[str, Any]:
    """Every figure of one size."""
    db = work / "db"
    t0 = time.perf_counter()
    keys = build(db, size_mib)
    db_bytes = dir_bytes(db)
    print(f"{size_mib} MiB: built {keys:,} keys ({db_bytes / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s; load {os.getloadavg()[0]:.1f}", flush=True)
    out: dict[str, Any] = {"size_mib": size_mib, "keys": keys, "db_bytes": db_bytes,
                           "load_before": os.getloadavg()[0]}
    out["cp_s"] = cp(db, work / "cp")
    shutil.rmtree(work / "cp")
    full, plain = work / "full.lamina", work / "plain.lamina"
    out["backup_zstd"] = child("backup", str(db), str(full), "zstd")
    out["backup_none"] = child("backup", str(db), str(plain), "none")
    plain.unlink()
    rng = random.Random(2)
    with lamina.open(db, create=False) as handle, handle.write() as txn:
        table = txn.table("kv")
        for i in rng.sample(range(keys), CHANGED_KEYS):
            table.put(b"%016d" % i, b"changed %d" % i)
    out["layer_1000"] = child("backup", str(db), str(work / "layer.lamina"), "zstd", str(full))
    out["restore"] = child("restore", str(full), str(work / "restored"))
    shutil.rmtree(work / "restored")
    out["verify_deep"] = child("verify", str(full))
    out["load_after"] = os.getloadavg()[0]
    for key in ("backup_zstd", "backup_none", "restore", "verify_deep"):
        out[key]["x_cp"] = out["cp_s"] / out[key]["seconds"]
    shutil.rmtree(db)
    for f in work.glob("*.lamina"):
        f.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1024,4096", help="database sizes in MiB")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="lamina-bench-scale-", dir=args.workdir))
    results = []
    try:
        for size in sizes:
            results.append(one_size(work, size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'size':>6} {'cp s':>6} {'backup zstd':>16} {'backup none':>16} "
          f"{'layer 1k s':>10} {'restore':>16} {'verify --deep':>16}  peak RSS MiB "
          f"(zstd/none/layer/restore/verify)")
    for r in results:
        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['seconds']:6.2f}s {r[key]['x_cp']:5.2f}x"
        rss = "/".join(f"{r[k]['peak_rss_mib']:.0f}" for k in
                       ("backup_zstd", "backup_none", "layer_1000", "restore", "verify_deep"))
        print(f"{r['size_mib']:>6} {r['cp_s']:6.2f} {cell('backup_zstd'):>16} "
              f"{cell('backup_none'):>16} {r['layer_1000']['seconds']:10.3f} "
              f"{cell('restore'):>16} {cell('verify_deep'):>16}  {rss}")
    if len(results) > 1:
        layers = [r["layer_1000"]["seconds"] for r in results]
        print(f"layer at 1,000 changed keys, largest / smallest size: "
              f"{layers[-1] / layers[0]:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2)
                        + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
