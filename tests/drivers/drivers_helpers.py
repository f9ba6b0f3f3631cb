"""Shared helpers of the driver tests: small databases, logical equality of two databases,
and a writer subprocess that reports when it is done (the CLI runner is ``support.cli``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lamina


def make_db(path: Path, *, rows: int = 2000, page_size: int = 4096) -> None:
    """A database with btree tables ``t1``, ``t2`` and archive table ``log``."""
    with lamina.open(path, page_size=page_size) as db:
        db.create_table("t1")
        db.create_table("t2")
        db.create_table("log", "archive")
        with db.write() as txn:
            t1, t2 = txn.table("t1"), txn.table("t2")
            for i in range(rows):
                t1.put(b"a%06d" % i, b"x" * (i % 97))
                t2.put(b"b%06d" % i, b"%d" % i)
        db.append_many("log", [b"row %d" % i for i in range(rows)])


def snapshot_of(path: Path) -> dict[str, object]:
    """Every table's logical content: btree items, archive rows."""
    out: dict[str, object] = {}
    with lamina.open(path, create=False, readonly=True) as db:
        for info in db.tables():
            if info.engine == "btree":
                with db.read() as txn:
                    out[info.name] = list(txn.table(info.name).items())
            else:
                out[info.name] = list(db.scan(info.name))
    return out


_HEAD = """import sys, time, lamina
db = lamina.open(sys.argv[1], create=False)
print("started", flush=True)
"""
_TAIL = """
print("done", flush=True)
db.close()
"""


def writer_proc(db: Path, code: str) -> subprocess.Popen[str]:
    """A Python subprocess running ``code`` with ``db`` open as ``db``; it prints
    ``started`` first and ``done`` when ``code`` finished."""
    script = _HEAD + textwrap.dedent(code).strip() + _TAIL
    return subprocess.Popen([sys.executable, "-c", script, str(db)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_line(proc: subprocess.Popen[str], want: str) -> None:
    """Read ``proc``'s stdout until a line equal to ``want``."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended before printing {want!r}: {err}")
        if line.strip() == want:
            return
