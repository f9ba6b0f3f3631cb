"""Incremental backups under load, with real processes and the ``lamina`` command.

A ``lamina workload`` process commits (btree puts/deletes over two tables atomically,
archive appends) and logs every commit's seq. Meanwhile this process takes a full backup
and then 10 layers, each on the previous image, at random moments
(``lamina backup DB IMG --base PREV``); between some of them it optimizes the archive table
(a new generation: the next layer carries it whole) and creates and drops tables of both
engines. Then every prefix of the chain is restored (``lamina restore FULL L1 .. Lk --to``)
and must hold exactly the workload state after that layer's VP commit seq (``lamina
workload verify``), with the extra tables as they were at that VP.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import lamina
from lamina import workload
from lamina.backup.image_reader import read_info

LAMINA = [sys.executable, "-m", "lamina.cli"]


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMINA, *args], capture_output=True, text=True, timeout=timeout)


def _ok(*args: str) -> subprocess.CompletedProcess[str]:
    proc = _cli(*args)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def test_layers_under_load_restore_to_exactly_each_vp(tmp_path: Path) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)  # created before the VPs, so every image has them
    writer = subprocess.Popen([*LAMINA, "workload", str(db_path), "--seconds", "9",
                               "--seed", "11", "--log", str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(99)
    images: list[Path] = []
    extra: list[set[str]] = []  # the extra tables that exist at each image's VP
    live: set[str] = set()
    try:
        time.sleep(0.4)
        for i in range(11):
            time.sleep(rng.uniform(0.05, 0.5))
            if i == 4:
                _ok("optimize", str(db_path), workload.ARCHIVE_TABLE)
            if i in (3, 7):
                for name, engine in ((f"extra_b{i}", "btree"), (f"extra_a{i}", "archive")):
                    _ok("create-table", str(db_path), name, "--engine", engine)
                    live.add(name)
                _ok("put", str(db_path), f"extra_b{i}", "k", f"v{i}")
                _ok("append", str(db_path), f"extra_a{i}", f"row{i}")
            if i == 9:
                for name in ("extra_b3", "extra_a3"):
                    _ok("drop-table", str(db_path), name)
                    live.discard(name)
            image = tmp_path / f"img{i:02d}.lamina"
            base = [] if i == 0 else ["--base", str(images[-1])]
            proc = _ok("backup", str(db_path), str(image), *base, "--json", "--no-progress")
            summary = json.loads(proc.stdout)
            assert summary["blocker_held_ms"] < 100
            images.append(image)
            extra.append(set(live))
    finally:
        _, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    infos = [read_info(p) for p in images]
    seqs = [i.vp.commit_seq for i in infos]
    assert seqs == sorted(seqs) and len(set(seqs)) > 5, "layers must land at different VPs"
    commits = workload.WorkloadLog.read(log).commits
    assert len(commits) > 50 and commits[-1][1] > seqs[0]
    # The archive table went as a tail, except in the layer right after the optimize.
    tails = [dict(i.vp.drivers[1])["tables"][workload.ARCHIVE_TABLE]["base_position"]
             for i in infos[1:]]
    assert tails[3] == 0 and sum(1 for t in tails if t) >= 8, tails

    proc = _ok("verify", *map(str, images), "--deep", "--json")
    assert json.loads(proc.stdout)["vp"]["commit_seq"] == seqs[-1]
    for k in range(1, len(images) + 1):
        dest = tmp_path / f"restored{k:02d}"
        proc = _ok("restore", *map(str, images[:k]), "--to", str(dest), "--json",
                   "--no-progress")
        assert json.loads(proc.stdout)["vp_commit_seq"] == seqs[k - 1]
        proc = _cli("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, (k, proc.stdout + proc.stderr)
        assert json.loads(proc.stdout)["at_seq"] == seqs[k - 1]
        later = [s for _n, s in commits if s > seqs[k - 1]]
        if later and k in (1, 6, 11):  # the verifier is not a rubber stamp
            proc = _cli("workload", "verify", str(dest), "--log", str(log), "--at",
                        str(later[0]))
            assert proc.returncode == 7, proc.stdout + proc.stderr
        with lamina.open(dest, create=False, readonly=True) as restored:
            names = {t.name for t in restored.tables()} - {*workload.BTREE_TABLES,
                                                           workload.ARCHIVE_TABLE}
            assert names == extra[k - 1], k
            files = {p.name for p in dest.iterdir() if p.suffix in (".ARM", ".ARZ")}
            assert files == {f"{n}.{s}" for n in names | {workload.ARCHIVE_TABLE}
                             if not n.startswith("extra_b") for s in ("ARM", "ARZ")}
    with lamina.open(db_path, create=False) as db:
        assert db.check().ok
        assert db.lockfile.live_slots() == []  # no backup left a pin behind
