"""Fixtures for the archive engine tests: a database directory, its lock file, tables."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lamina.core.lockfile import LockFile
from lamina.engines.archive import ArchiveTable

WORKER = Path(__file__).with_name("worker.py")


def seed_commit_seq(directory: Path) -> Callable[[LockFile], None]:
    """A lock-file init that seeds the commit seq from every archive table's meta."""

    def init(lf: LockFile) -> None:
        seqs = [ArchiveTable.read_last_commit_seq(directory, p.stem)
                for p in Path(directory).glob("*.ARM")]
        lf.set_commit_seq(max(seqs, default=0))

    return init


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def lockfile(db: Path) -> Iterator[LockFile]:
    lf = LockFile.open(db, init=lambda lf: lf.set_commit_seq(0))
    yield lf
    lf.close()


@pytest.fixture
def make_table(db: Path, lockfile: LockFile) -> Iterator[Callable[..., ArchiveTable]]:
    opened: list[ArchiveTable] = []

    def make(name: str = "t", table_id: int = 1, *, readonly: bool = False,
             create: bool = True, **kw: Any) -> ArchiveTable:
        if create:
            ArchiveTable.create(db, name, table_id, **kw)
        table = ArchiveTable.open(db, name, table_id, lockfile, readonly=readonly)
        opened.append(table)
        return table

    yield make
    for t in opened:
        t.close()


def spawn(*args: str, failpoint: str | None = None, **popen: Any) -> subprocess.Popen[str]:
    """Start ``worker.py`` with ``args`` in a subprocess (text stdout, line buffered)."""
    env = dict(os.environ)
    env.pop("LAMINA_FAILPOINT", None)
    if failpoint:
        env["LAMINA_FAILPOINT"] = failpoint
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, **popen)


def batch_rows(batch: int, size: int) -> list[bytes]:
    """Deterministic rows of commit number ``batch`` (same formula as worker.py)."""
    return [b"batch %d row %d " % (batch, j) + b"x" * ((batch * 7 + j * 13) % 90)
            for j in range(size)]
