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
from pathlib import Path

import lamina
from lamina import workload
from lamina.backup.image_reader import read_info
from support import cli
from support.workload_log import stop_workload, wait_for_workload


def test_layers_under_load_restore_to_exactly_each_vp(tmp_path: Path) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)  # created before the VPs, so every image has them
    writer = cli.start("workload", str(db_path), "--seconds", "600", "--seed", "11",
                       "--log", str(log))
    rng = random.Random(99)
    images: list[Path] = []
    extra: list[set[str]] = []  # the extra tables that exist at each image's VP
    live: set[str] = set()
    seqs: list[int] = []
    try:
        wait_for_workload(writer, log, commits=10)  # the archive table has rows
        for i in range(11):
            # A random moment in the workload's stream: 1..30 of its commits after the
            # previous VP (so every layer has a VP of its own).
            wait_for_workload(writer, log, seq=(seqs[-1] if seqs else 0) + rng.randint(1, 30))
            if i == 4:
                cli.run_ok("optimize", str(db_path), workload.ARCHIVE_TABLE)
            if i in (3, 7):
                for name, engine in ((f"extra_b{i}", "btree"), (f"extra_a{i}", "archive")):
                    cli.run_ok("create-table", str(db_path), name, "--engine", engine)
                    live.add(name)
                cli.run_ok("put", str(db_path), f"extra_b{i}", "k", f"v{i}")
                cli.run_ok("append", str(db_path), f"extra_a{i}", f"row{i}")
            if i == 9:
                for name in ("extra_b3", "extra_a3"):
                    cli.run_ok("drop-table", str(db_path), name)
                    live.discard(name)
            image = tmp_path / f"img{i:02d}.lamina"
            base = [] if i == 0 else ["--base", str(images[-1])]
            proc = cli.run_ok("backup", str(db_path), str(image), *base, "--json", "--no-progress")
            summary = json.loads(proc.stdout)
            assert summary["blocker_held_ms"] < 100
            images.append(image)
            extra.append(set(live))
            seqs.append(summary["vp_commit_seq"])
        # The writer goes on after the last VP (and makes more than 50 commits in all).
        wait_for_workload(writer, log, commits=51, seq=seqs[-1] + 1)
    finally:
        stop_workload(writer)
    infos = [read_info(p) for p in images]
    assert [i.vp.commit_seq for i in infos] == seqs
    assert seqs == sorted(seqs) and len(set(seqs)) > 5, "layers must land at different VPs"
    commits = workload.WorkloadLog.read(log).commits
    assert len(commits) > 50 and commits[-1][1] > seqs[0]
    # The archive table went as a tail, except in the layer right after the optimize.
    tails = [dict(i.vp.drivers[1])["tables"][workload.ARCHIVE_TABLE]["base_position"]
             for i in infos[1:]]
    assert tails[3] == 0 and sum(1 for t in tails if t) >= 8, tails

    proc = cli.run_ok("verify", *map(str, images), "--deep", "--json")
    assert json.loads(proc.stdout)["vp"]["commit_seq"] == seqs[-1]
    for k in range(1, len(images) + 1):
        dest = tmp_path / f"restored{k:02d}"
        proc = cli.run_ok("restore", *map(str, images[:k]), "--to", str(dest), "--json",
                          "--no-progress")
        assert json.loads(proc.stdout)["vp_commit_seq"] == seqs[k - 1]
        proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--json")
        assert proc.returncode == 0, (k, proc.stdout + proc.stderr)
        assert json.loads(proc.stdout)["at_seq"] == seqs[k - 1]
        later = [s for _n, s in commits if s > seqs[k - 1]]
        if later and k in (1, 6, 11):  # the verifier is not a rubber stamp
            proc = cli.run("workload", "verify", str(dest), "--log", str(log), "--at",
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
        assert db.lockfile.live_slots() == []  # no backup left a pin behind
