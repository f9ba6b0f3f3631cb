"""Crash safety: a writer subprocess killed with SIGKILL at every commit failpoint and at
random moments; the reopened database passes check() and holds exactly the last committed
transaction's state."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_clean, opened
from workload import TABLES, model_after

from lamina.core.failpoints import NAMES
from support.waiting import wait_for

WORKLOAD = Path(__file__).with_name("workload.py")
BTREE_FAILPOINTS = [n for n in NAMES if n.startswith("btree.")]


def run_writer(directory: Path, log: Path, *, failpoint: str | None = None,
               limit: int | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("LAMINA_FAILPOINT", None)
    if failpoint:
        env["LAMINA_FAILPOINT"] = failpoint
    args = [sys.executable, str(WORKLOAD), str(directory), str(log)]
    if limit is not None:
        args.append(str(limit))
    return subprocess.Popen(args, env=env, stderr=subprocess.PIPE)


def logged(log: Path) -> int:
    lines = log.read_text().split() if log.exists() else []
    return int(lines[-1]) if lines else 0


def state_of(directory: Path) -> tuple[int, dict[str, dict[bytes, bytes]]]:
    """(transactions committed, contents) after reopening; asserts check() is clean."""
    with opened(directory, page_size=1024) as store:
        assert_clean(store)
        with store.begin_read() as r:
            if r.catalog_get("t") is None:
                return 0, {t: {} for t in TABLES}
            n = int(r.table("t").get(b"__n") or b"0")
            contents = {t: dict(r.table(t).items()) for t in TABLES}
            contents["t"].pop(b"__n", None)
            return n, contents


@pytest.mark.parametrize("name", BTREE_FAILPOINTS)
def test_kill_at_failpoint(tmp_path: Path, name: str) -> None:
    d, log = tmp_path / "db", tmp_path / "log"
    proc = run_writer(d, log, failpoint=f"{name}:4")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    done = logged(log)
    assert done == 3  # the 4th commit died at the failpoint
    n, contents = state_of(d)
    # Only after the meta is written and synced is the dying commit durable.
    assert n == (done + 1 if name == "btree.after_meta_write" else done)
    assert contents == model_after(n)
    # The database keeps working after the crash: the writer resumes and finishes.
    proc = run_writer(d, log, limit=n + 5)
    assert proc.wait(timeout=60) == 0
    n2, contents2 = state_of(d)
    assert n2 == n + 5 and contents2 == model_after(n2)


@pytest.mark.parametrize("seed", range(4))
def test_kill_at_random_moment(tmp_path: Path, seed: int) -> None:
    d, log = tmp_path / "db", tmp_path / "log"
    rnd = random.Random(seed)
    for _round in range(3):
        proc = run_writer(d, log)
        # A random moment counted in the writer's commits, not in seconds (a busy machine
        # may not even have started the writer after a second): kill as soon as the log
        # shows 1..40 more commits, which lands anywhere in or between the next commits.
        target = logged(log) + rnd.randint(1, 40)
        wait_for(lambda t=target: logged(log) >= t, f"the writer to log {target} commits",
                 proc=proc, max_interval=0.001)
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        done = logged(log)
        n, contents = state_of(d)
        # The commit in flight may or may not have become durable before the kill.
        assert n in (done, done + 1), (n, done)
        assert contents == model_after(n)
        if n > done:
            log.write_text(log.read_text() + f"{n}\n")
