"""Spies for "the validity point does no I/O and O(1) work" tests of every driver."""

from __future__ import annotations

import builtins
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from lamina.core import fileio

T = TypeVar("T")

# Every way Python code could touch a file during lock()/unlock().
_OS_CALLS = ["open", "pread", "read", "pwrite", "write", "fstat", "stat", "lstat", "lseek",
             "fsync", "fdatasync", "ftruncate", "close", "listdir", "scandir", "link",
             "unlink", "replace", "rename"]


@contextmanager
def io_spy() -> Iterator[Counter[str]]:
    """Count calls of builtins.open, the os functions above and fileio.COUNTERS."""
    seen: Counter[str] = Counter()
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str) -> None:
        real = getattr(owner, name)

        def spy(*a: Any, **kw: Any) -> Any:
            seen[f"{owner.__name__}.{name}"] += 1
            return real(*a, **kw)

        saved.append((owner, name, real))
        setattr(owner, name, spy)

    before = Counter(fileio.COUNTERS)
    wrap(builtins, "open")
    for name in _OS_CALLS:
        wrap(os, name)
    try:
        yield seen
    finally:
        for owner, name, real in reversed(saved):
            setattr(owner, name, real)
        for key, n in fileio.COUNTERS.items():
            if n != before.get(key, 0):
                seen[f"fileio.{key}"] += n - before.get(key, 0)


def count_calls(fn: Callable[[], T]) -> tuple[T, int]:
    """Run ``fn`` under a profiler counting every Python and C function call it makes."""
    calls = 0

    def prof(_frame: Any, event: str, _arg: Any) -> None:
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    sys.setprofile(prof)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
    return result, calls
