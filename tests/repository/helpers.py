"""Shared helpers of the repository tests: tiny databases, a fake VP clock (the CLI runner
is ``support.cli``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import lamina
from lamina.backup import kernel
from lamina.database import Database

DAY_NS = 86_400 * 10**9


def make_db(path: Path) -> Database:
    """A tiny database with one btree table ``t``."""
    db = lamina.open(path)
    if "t" not in {t.name for t in db.tables()}:
        db.create_table("t")
    return db


def content(path: Path) -> dict[bytes, bytes]:
    """Every key and value of table ``t`` of the database at ``path``."""
    with lamina.open(path, create=False) as db, db.read() as txn:
        return dict(txn.table("t").items())


class _FakeTime:
    """The ``time`` module, except ``time_ns`` (VP wall clock, image creation time)."""

    def __init__(self, now_ns: int) -> None:
        self.now_ns = now_ns

    def time_ns(self) -> int:
        return self.now_ns

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def vp_clock(start_ns: int) -> Iterator[_FakeTime]:
    """Backups taken inside get the VP time ``clock.now_ns`` (set it before each)."""
    fake = _FakeTime(start_ns)
    with mock.patch.object(kernel, "time", fake):
        yield fake
