"""Waiting on a running ``lamina workload`` by what it logged (commits), never by time."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from support.waiting import wait_for


def logged(log: Path) -> tuple[int, int]:
    """(commits, last commit seq) of the complete lines the workload has logged so far."""
    try:
        text = log.read_text()
    except FileNotFoundError:
        return 0, 0
    lines = text.split("\n")[1:-1]  # after the header; a line is whole once its "\n" is
    return len(lines), int(lines[-1].split()[1]) if lines else 0


def wait_for_workload(writer: subprocess.Popen[str], log: Path, *, commits: int = 1,
                       seq: int = 0) -> None:
    """Wait until the workload logged at least ``commits`` commits, the last with a seq of
    at least ``seq``: moments counted in its commits, not in seconds (a busy machine only
    makes this take longer; 120 s is a hang guard)."""
    def reached() -> bool:
        done, last = logged(log)
        return done >= commits and last >= seq

    wait_for(reached, f"the workload to log {commits} commits up to seq {seq}", proc=writer)


def stop_workload(writer: subprocess.Popen[str]) -> None:
    """SIGKILL the workload (it runs until stopped: ``--seconds`` is a hang guard), after
    checking it is still running: it never failed (a lock timeout would have ended it)."""
    alive = writer.poll() is None
    writer.kill()
    _out, err = writer.communicate(timeout=120)
    assert alive and writer.returncode == -signal.SIGKILL, (writer.returncode, err)
