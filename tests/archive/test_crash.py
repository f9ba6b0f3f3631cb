"""Crash safety: kill -9 a writer subprocess at every archive failpoint and at random moments.

The worker prints ``BEGIN i`` before commit i and ``COMMITTED i`` after it returns; after the
kill, the table must hold exactly the rows of the reported commits, plus the in-flight one
only where the kill came after its meta write.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest

from lamina.core.check import CheckReport
from lamina.core.failpoints import NAMES
from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable

from .conftest import batch_rows, seed_commit_seq, spawn

SIZE = 25
ARCHIVE_FAILPOINTS = sorted(n for n in NAMES if n.startswith("archive."))
# Where the in-flight commit is durable although the worker never reported it.
DURABLE_AT = {"archive.after_meta_write"}
# Which hit to die at: the 3rd commit; the meta write is also hit by optimize (every 2nd
# commit), so the 4th meta write is the 3rd commit's.
HIT = {"archive.mid_meta_write": 4}


def run_worker(db: Path, *args: str, failpoint: str | None = None) -> tuple[int, list[str]]:
    proc = spawn("write", str(db), *args, failpoint=failpoint)
    out, _err = proc.communicate(timeout=60)
    return proc.returncode, out.splitlines()


def committed_batches(lines: list[str]) -> tuple[list[int], int | None]:
    done = [int(line.split()[1]) for line in lines if line.startswith("COMMITTED")]
    begun = [int(line.split()[1]) for line in lines if line.startswith("BEGIN")]
    in_flight = begun[-1] if begun and (not done or begun[-1] != done[-1]) else None
    return done, in_flight


def table_rows(db: Path, *, readonly: bool) -> tuple[list[bytes], CheckReport]:
    lf = LockFile.open(db, init=seed_commit_seq(db))
    try:
        t = ArchiveTable.open(db, "t", 1, lf, readonly=readonly)
        try:
            rows = [r for _i, r in t.scan()]
            report = t.check()
            assert t.count() == len(rows)
            return rows, report
        finally:
            t.close()
    finally:
        lf.close()


def expected(batches: list[int]) -> list[bytes]:
    return [r for b in batches for r in batch_rows(b, SIZE)]


@pytest.fixture
def table_dir(db: Path) -> Path:
    ArchiveTable.create(db, "t", 1, block_target=400)
    return db


@pytest.mark.parametrize("failpoint", ARCHIVE_FAILPOINTS)
def test_kill_at_failpoint(table_dir: Path, failpoint: str) -> None:
    db = table_dir
    # Optimize every 2 commits so the optimize failpoints are reached too.
    code, lines = run_worker(db, "--batches", "8", "--size", str(SIZE), "--optimize-every",
                             "2", failpoint=f"{failpoint}:{HIT.get(failpoint, 3)}")
    assert code == -9, (code, lines)
    done, in_flight = committed_batches(lines)
    assert done, lines
    if "optimize" in failpoint:
        assert lines[-1].startswith("OPTIMIZE")
        in_flight = None  # an optimize adds no rows
    want = list(done)
    if in_flight is not None and failpoint in DURABLE_AT:
        want.append(in_flight)
    # A reader (no recovery) already sees exactly the committed rows.
    rows, report = table_rows(db, readonly=True)
    assert rows == expected(want)
    # ... and the state the kill left is the one the failpoint describes.
    if failpoint in ("archive.mid_block_write", "archive.after_data_sync",
                     "archive.mid_meta_write"):
        assert report.stats["tail_bytes"] > 0
    if failpoint == "archive.mid_meta_write":
        assert any("meta slot" in f.where for f in report.findings)
    if failpoint == "archive.optimize_before_publish":
        assert report.stats["pending_optimize"]
    if failpoint == "archive.optimize_mid_publish":
        assert any("optimize publish not finished" in f.what for f in report.findings)
    # A writer's open recovers (tail, torn slot, half publish); then the checker is clean.
    rows, report = table_rows(db, readonly=False)
    assert rows == expected(want)
    assert report.ok, [str(f) for f in report.findings]
    assert report.stats["tail_bytes"] == 0
    assert not (db / "t.ARZ.new").exists()
    # And the table keeps working: the next commits land after the recovered ones.
    code, lines2 = run_worker(db, "--batches", "2", "--size", str(SIZE), "--first-batch", "100")
    assert code == 0, lines2
    rows, report = table_rows(db, readonly=False)
    assert rows == expected([*want, 100, 101]) and report.ok


def kill_after_lines(proc: subprocess.Popen[str], n: int) -> tuple[list[str], str]:
    """Read the worker's report lines as they come; SIGKILL it right after its ``n``-th line
    (so the moment is counted in the worker's own progress, not in seconds); return every
    line it printed and its stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    while len(lines) < n:
        line = proc.stdout.readline()
        if not line:  # ended on its own: a crash of the worker, reported below
            break
        lines.append(line.rstrip("\n"))
    proc.kill()
    lines += proc.stdout.read().splitlines()  # what it printed before it died
    err = proc.stderr.read()
    proc.wait(timeout=30)
    return lines, err


def test_kill_at_random_moments(table_dir: Path) -> None:
    db = table_dir
    rng = random.Random(1234)
    want: list[int] = []
    first = 0
    for _round in range(6):
        proc = spawn("write", str(db), "--batches", "100000", "--size", str(SIZE),
                     "--first-batch", str(first), "--optimize-every", "7")
        # Lines come as BEGIN/COMMITTED pairs (OPTIMIZE/OPTIMIZED after every 7th commit):
        # killing right after a random one of lines 2..45 lands after >= 1 commit, in or
        # between commits and optimizes, whatever the machine's speed.
        lines, err = kill_after_lines(proc, rng.randint(2, 45))
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, lines, err)
        done, in_flight = committed_batches(lines)
        assert done, lines
        rows, report = table_rows(db, readonly=False)
        base = expected(want + done)
        if in_flight is not None and len(rows) > len(base):
            # killed after the meta write but before the report: that commit is durable
            assert rows == expected([*want, *done, in_flight])
            want += [*done, in_flight]
        else:
            assert rows == base
            want += done
        assert report.ok, [str(f) for f in report.findings]
        first = (max(want) if want else first) + 1
