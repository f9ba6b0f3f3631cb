"""One way for a test to wait: on a condition, polled, with a hang guard that only bounds
a wait that would otherwise never end (a busy machine makes a wait longer, never wrong).

``wait_for(condition, what)`` returns ``condition()``'s first truthy value; it fails the
test (naming ``what``) if ``proc`` ended first or after ``guard`` seconds. The poll
interval grows from 1 ms to 20 ms so a short wait is short and a long one costs little.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

#: The hang guard: far beyond any wait on a loaded 2-core machine.
GUARD_SECONDS = 300.0


def wait_for(condition: Callable[[], T], what: str, *,
             proc: subprocess.Popen[Any] | None = None,
             guard: float = GUARD_SECONDS, max_interval: float = 0.02) -> T:
    """Poll ``condition()`` until it returns a truthy value and return that value (polls
    at most ``max_interval`` apart: small when the moment it turns true matters). Fails
    the test if ``proc`` (when given) exits first, or after ``guard`` seconds."""
    deadline = time.monotonic() + guard
    delay = min(0.001, max_interval)
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: {err!r}")
        if time.monotonic() >= deadline:
            pytest.fail(f"gave up waiting for {what} after {guard:g} s (hang guard)")
        time.sleep(delay)  # the one polling sleep of the suite's condition waits
        delay = min(delay * 2, max_interval)


__all__ = ["GUARD_SECONDS", "wait_for"]
