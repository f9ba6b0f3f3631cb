"""Full online backup against its physical limit and its peers, in one run.

Builds the same data three times — a Lamina database (a btree table plus an archive table),
a SQLite database and an LMDB environment — then times, with the page cache warm for all:

* ``cp`` of the Lamina files (the physical limit of a full copy),
* ``lamina backup`` with ``--compress none`` and ``zstd``, each also encrypted
  (``--encrypt``: AES-256-GCM chunks and the MACs; same run, so the ratio to the
  unencrypted row is like for like),
* Python's ``sqlite3.Connection.backup`` and LMDB's ``Environment.copy``,
* restore (from every image) and verify (plain and ``--deep``; an encrypted image's plain
  verify checks its MACs with the key, without decrypting), and one passphrase key
  derivation (Argon2id, the real parameters: paid once per image opened),

and reports each as MB/s of *database* bytes, the ratio to ``cp``, and the longest time the
commit blocker was held. Medians over ``--repeat`` runs. Prints a table, writes JSON.

Then, one run each, the incremental story beside file-level backup tools on the same
database directory: restic (Debian's ``restic``) and borg (``borgbackup``, the bench
extra; or Debian's), each skipped with a message when absent — an initial backup, the next
backup after 0.1 % and after 1 % of the keys changed (time, bytes the repository grew),
and a restore of the latest; beside Lamina's full image, its layers and the restore of the
chain. restic and borg copy the live files without a consistent cut: run while a writer
commits, they may store a torn database; Lamina's images are the state at one VP.

    .venv/bin/python bench/backup.py               # ~1 GiB
    .venv/bin/python bench/backup.py --size-mb 100 # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lamina
from lamina import online
from lamina.core.crypto.kdf import KdfParams
from lamina.core.crypto.keyfile import KeyFile
from lamina.core.crypto.keyring import Keyring, SealSpec, using
from lamina.core.crypto.masterkey import MasterKey

KEY_BYTES, VALUE_BYTES = 16, 100
ROW_TEMPLATE = (b"2026-11-21T10:00:00.%06dZ INFO svc=api req=%08x path=/v1/items/%d "
                b"status=200 latency_ms=%d")


def _key(i: int) -> bytes:
    return b"%016d" % i


def _value(i: int, rng: random.Random) -> bytes:
    return rng.randbytes(VALUE_BYTES // 2).hex().encode()[:VALUE_BYTES]


def _rows(n: int) -> list[bytes]:
    rng = random.Random(5)
    return [ROW_TEMPLATE % (i % 1_000_000, rng.getrandbits(32), rng.randrange(10_000),
                            rng.randrange(900)) for i in range(n)]


def dir_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(root: Path, keys: int, rows: int) -> dict[str, Path]:
    """Create the three databases holding the same key/values and rows."""
    rng = random.Random(1)
    values = [_value(i, rng) for i in range(keys)]
    log = _rows(rows)
    paths = {"lamina": root / "lamina.db", "sqlite": root / "sqlite.db", "lmdb": root / "lmdb"}
    with lamina.open(paths["lamina"]) as db:
        db.create_table("kv")
        db.create_table("log", engine="archive")
        with db.write() as txn:
            txn.table("kv").bulk_load((_key(i), values[i]) for i in range(keys))
        for start in range(0, rows, 10_000):
            db.append_many("log", log[start:start + 10_000])
    con = sqlite3.connect(paths["sqlite"])
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
    con.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, row BLOB)")
    con.executemany("INSERT INTO kv VALUES (?, ?)", ((_key(i), values[i]) for i in range(keys)))
    con.executemany("INSERT INTO log (row) VALUES (?)", ((r,) for r in log))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    try:
        import lmdb
    except ImportError:
        del paths["lmdb"]
    else:
        env = lmdb.open(str(paths["lmdb"]), map_size=8 << 30, max_dbs=2)
        kv, lg = env.open_db(b"kv"), env.open_db(b"log")
        with env.begin(write=True) as txn:
            cur = txn.cursor(kv)
            cur.putmulti(((_key(i), values[i]) for i in range(keys)), append=True)
            cur = txn.cursor(lg)
            cur.putmulti(((b"%016d" % i, r) for i, r in enumerate(log)), append=True)
        env.close()
    return paths


def timed(fn: Callable[[], Any], repeat: int, cleanup: Callable[[], None]) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``repeat`` runs (``cleanup`` after each); last result."""
    times, result = [], None
    for _ in range(repeat):
        cleanup()
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="approximate database size")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                        "backup.json")
    args = parser.parse_args()
    # ~85% of the bytes in the btree, the rest in the archive table (before compression).
    keys = int(args.size_mb * 0.85 * 2**20 / 135)
    rows = int(args.size_mb * 0.15 * 2**20 / 110)
    root = Path(tempfile.mkdtemp(prefix="lamina-bench-backup-"))
    try:
        run(root, keys, rows, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, keys: int, rows: int, args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    paths = build(root, keys, rows)
    print(f"built {keys:,} keys + {rows:,} rows in {time.perf_counter() - t0:.1f}s: " +
          ", ".join(f"{name} {dir_bytes(p) / 2**20:.0f} MiB" for name, p in paths.items()))
    out = root / "out"
    src_bytes = dir_bytes(paths["lamina"])
    results: list[dict[str, Any]] = []

    def clean() -> None:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()

    def record(name: str, seconds: float, nbytes: int, **extra: Any) -> None:
        results.append({"name": name, "seconds": seconds, "db_bytes": nbytes,
                        "mb_per_s": nbytes / seconds / 1e6, **extra})

    def cp() -> None:
        shutil.copytree(paths["lamina"], out)
        for f in out.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())

    secs, _ = timed(cp, args.repeat, clean)
    record("cp (physical limit, + fsync)", secs, src_bytes)
    images: dict[str, Path] = {}
    blocker_ms: list[float] = []
    master = MasterKey.generate()
    passphrase = b"bench passphrase"
    started = time.perf_counter()
    keyfile = KeyFile.create(master, passphrase, KdfParams.new())
    record("key derivation (Argon2id t=3 m=64MiB p=4)", time.perf_counter() - started, 0)
    rings = {False: Keyring(), True: Keyring(passphrase=lambda: passphrase,
                                             seal=SealSpec(master, keyfile.encode()))}
    with lamina.open(paths["lamina"], create=False) as db:
        for codec, encrypt in (("none", False), ("none", True), ("zstd", False),
                               ("zstd", True)):
            label = f"{codec}{', encrypted' if encrypt else ''}"
            image = root / f"image-{codec}{'-enc' if encrypt else ''}.lamina"

            def take(codec: str = codec, image: Path = image, encrypt: bool = encrypt) -> Any:
                with using(rings[encrypt]):
                    return online.backup(db, image, codec=codec)

            secs, res = timed(take, args.repeat, lambda image=image: image.unlink(missing_ok=True))
            blocker_ms.append(res.blocker_held_ns / 1e6)
            images[label] = image
            record(f"lamina backup ({label})", secs, src_bytes,
                   image_bytes=res.size, blocker_held_ms=res.blocker_held_ns / 1e6)
    sq_bytes = dir_bytes(paths["sqlite"])

    def sqlite_backup() -> None:
        src = sqlite3.connect(paths["sqlite"])
        dst = sqlite3.connect(out)
        src.backup(dst)
        dst.close()
        src.close()

    secs, _ = timed(sqlite_backup, args.repeat, clean)
    record("sqlite3 Connection.backup", secs, sq_bytes)
    if "lmdb" in paths:
        import lmdb
        lm_bytes = dir_bytes(paths["lmdb"])
        env = lmdb.open(str(paths["lmdb"]), max_dbs=2, readonly=True)

        def lmdb_copy() -> None:
            out.mkdir()
            env.copy(str(out))

        secs, _ = timed(lmdb_copy, args.repeat, clean)
        record("lmdb Environment.copy", secs, lm_bytes)
        env.close()
    # One keyring for every read: the key derivation is paid once (its own row above).
    with using(rings[True]):
        for codec, image in images.items():
            secs, _ = timed(lambda image=image: online.restore(image, out), args.repeat, clean)
            record(f"lamina restore ({codec})", secs, src_bytes)
            secs, _ = timed(lambda image=image: online.verify(image), args.repeat,
                            lambda: None)
            record(f"lamina verify ({codec})", secs, src_bytes)
            secs, _ = timed(lambda image=image: online.verify(image, deep=True), args.repeat,
                            lambda: None)
            record(f"lamina verify --deep ({codec})", secs, src_bytes)
    clean()
    incremental = peers_incremental(root, paths["lamina"], keys)
    cp_rate = results[0]["mb_per_s"]
    by_name = {r["name"]: r for r in results}
    print(f"\n{'operation':42} {'seconds':>8} {'MB/s':>8} {'x cp':>6}  notes")
    for r in results:
        r["ratio_to_cp"] = r["mb_per_s"] / cp_rate if r["db_bytes"] else 0.0
        notes = []
        plain = by_name.get(r["name"].replace(", encrypted", ""))
        if ", encrypted" in r["name"] and plain is not None:
            r["ratio_to_unencrypted"] = r["mb_per_s"] / plain["mb_per_s"]
            notes.append(f"{r['ratio_to_unencrypted']:.2f}x unencrypted")
        if "image_bytes" in r:
            notes.append(f"image {r['image_bytes'] / 2**20:.0f} MiB")
        if "blocker_held_ms" in r:
            notes.append(f"blocker {r['blocker_held_ms']:.3f} ms")
        print(f"{r['name']:42} {r['seconds']:8.2f} {r['mb_per_s']:8.0f} "
              f"{r['ratio_to_cp']:6.2f}  {', '.join(notes)}")
    print(f"\ncommit blocker held (max over backups): {max(blocker_ms):.3f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print_incremental(incremental)
    args.out.write_text(json.dumps({"keys": keys, "rows": rows, "repeat": args.repeat,
                                    "lamina_bytes": src_bytes, "results": results,
                                    "blocker_held_ms_max": max(blocker_ms),
                                    "incremental": incremental,
                                    "load": os.getloadavg()[0]}, indent=2))
    print(f"wrote {args.out}")


def change_keys(db_path: Path, keys: int, fraction: float, seed: int) -> int:
    """Overwrite ``fraction`` of the keys (random ones) in one commit; returns how many."""
    rng = random.Random(seed)
    n = max(1, int(keys * fraction))
    with lamina.open(db_path, create=False) as db, db.write() as txn:
        table = txn.table("kv")
        for i in rng.sample(range(keys), n):
            table.put(_key(i), b"changed %d" % seed + bytes(VALUE_BYTES - 12))
    return n


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _peer_commands(tool: str, repo: Path) -> tuple[dict[str, str], Callable[..., list[str]]]:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "",
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def restic(op: str, *a: str) -> list[str]:
        return ["restic", "--repo", str(repo), "--quiet", op, *a]

    def borg(op: str, *a: str) -> list[str]:
        return ["borg", op, *a]

    return env, restic if tool == "restic" else borg


def peers_incremental(root: Path, db_path: Path, keys: int) -> dict[str, Any]:
    """Initial backup, next backups after 0.1 % and 1 % changed keys, and restore: Lamina
    (full image, layers, chain restore) beside restic and borg on the same directory."""
    steps = [("initial", 0.0), ("after 0.1 % changed", 0.001), ("after 1 % changed", 0.01)]
    out: dict[str, Any] = {"tools": {}, "skipped": {}}
    work = root / "incremental"
    work.mkdir()
    tools = ["lamina"]
    for tool, binary in (("restic", "restic"), ("borg", "borg")):
        if shutil.which(binary) is None:
            out["skipped"][tool] = f"{binary} not installed"
            print(f"skipping {tool}: `{binary}` not found (restic: apt install restic; borg: "
                  "the bench extra or apt install borgbackup)")
        else:
            tools.append(tool)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    images: list[Path] = []
    for n, (label, fraction) in enumerate(steps):
        changed = change_keys(db_path, keys, fraction, n) if fraction else 0
        for tool in tools:
            repo = work / f"{tool}-repo"
            if tool == "lamina":
                image = work / f"lamina-{n}.lamina"
                start = time.perf_counter()
                with lamina.open(db_path, create=False) as db:
                    online.backup(db, image, **({"base": images[-1]} if images else {}))
                secs = time.perf_counter() - start
                images.append(image)
                added = image.stat().st_size
            else:
                env, cmd = _peer_commands(tool, repo)
                if n == 0:
                    _run(cmd("init") if tool == "restic"
                         else cmd("init", "--encryption=none", str(repo)), env)
                before = dir_bytes(repo)
                secs = _run(cmd("backup", str(db_path)) if tool == "restic"
                            else cmd("create", f"{repo}::b{n}", str(db_path)), env)
                added = dir_bytes(repo) - before
            rows[tool].append({"step": label, "keys_changed": changed, "seconds": secs,
                               "bytes_added": added})
    for tool in tools:
        dest = work / f"{tool}-restored"
        if tool == "lamina":
            start = time.perf_counter()
            online.restore_chain(images, dest)
            secs = time.perf_counter() - start
        else:
            env, cmd = _peer_commands(tool, work / f"{tool}-repo")
            dest.mkdir()
            secs = (_run(cmd("restore", "latest", "--target", str(dest)), env)
                    if tool == "restic"
                    else _run(cmd("extract", f"{work / 'borg-repo'}::b{len(steps) - 1}"), env,
                              cwd=dest))
        rows[tool].append({"step": "restore latest", "seconds": secs, "bytes_added": None})
    out["tools"] = rows
    shutil.rmtree(work, ignore_errors=True)
    return out


def print_incremental(incremental: dict[str, Any]) -> None:
    """The peers table: one line per tool and step."""
    print(f"\n{'tool':8} {'step':22} {'seconds':>8} {'MB added':>9}")
    for tool, steps in incremental["tools"].items():
        for r in steps:
            added = "" if r["bytes_added"] is None else f"{r['bytes_added'] / 1e6:9.1f}"
            print(f"{tool:8} {r['step']:22} {r['seconds']:8.2f} {added:>9}")
    for tool, why in incremental["skipped"].items():
        print(f"{tool:8} skipped: {why}")
    print("restic and borg copy the live files without a consistent cut (a writer's commit "
          "can tear their copy); Lamina's images are the state at one validity point.")


if __name__ == "__main__":
    main()
