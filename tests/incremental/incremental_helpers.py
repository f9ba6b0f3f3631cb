"""Shared helpers of the incremental-backup tests: a database's logical state, compared
between a live database (at a backup's VP) and a restored one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lamina
from lamina.database import Database

#: A database's logical content: table name -> (engine, btree items or archive rows).
State = dict[str, tuple[str, Any]]


def state_of(db: Database) -> State:
    """Every table's engine and content (btree: key -> value; archive: rows in order)."""
    out: State = {}
    with db.read() as txn:
        for info in db.tables():
            if info.engine == "btree":
                out[info.name] = ("btree", dict(txn.table(info.name).items()))
    for info in db.tables():
        if info.engine == "archive":
            out[info.name] = ("archive", [row for _id, row in db.scan(info.name)])
    return out


def state_at(path: Path) -> State:
    """The state of the database at ``path`` (opened read-only), after checking it."""
    with lamina.open(path, create=False, readonly=True) as db:
        assert db.check().ok
        return state_of(db)


def archive_files(path: Path) -> set[str]:
    """Names of the archive files in a database directory (no retained generations)."""
    return {p.name for p in path.iterdir() if p.suffix in (".ARM", ".ARZ")}


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
