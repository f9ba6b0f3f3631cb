"""Lamina: embedded storage for Python that can be backed up online, incrementally and verifiably.

A Lamina database is a directory of tables: **btree** tables (a copy-on-write B+tree with
MVCC snapshots: many readers, one writer, across processes) and **archive** tables
(append-only, compressed rows). Backups are taken while writers go on, as full images or
incremental layers, and are verified (checksums, Merkle root) before anything trusts them.

Quick start::

    import lamina
    with lamina.open("mydb") as db:
        db.create_table("users")
        with db.write() as txn:
            txn.table("users").put(b"alice", b"admin")
        with db.read() as txn:
            print(txn.table("users").get(b"alice"))
        db.backup("mydb.lamina")
    lamina.verify("mydb.lamina", deep=True)
    lamina.restore("mydb.lamina", "copy.db")

The API (``__all__``):

* :func:`open` — open (by default create) a database directory; returns a :class:`Database`.
* :class:`Database` — tables, read/write transactions, archive tables, check, stat, backup.
* :class:`TableInfo` — a table as the catalog knows it (name, engine, id, created seq).
* :func:`restore` — restore a backup image into a new database directory.
* :func:`verify` — verify a backup image without restoring it.
* :class:`LaminaError` and :mod:`lamina.errors` — every error raised, each with an exit code.

Keys, values and rows are bytes (any bytes-like object); anything else, ``str`` included,
raises :class:`~lamina.errors.UsageError`. ``python -m lamina`` (or ``lamina``) is the
command line. More: :mod:`lamina.online` (backup, chains), :mod:`lamina.repository`
(directories of backups), :mod:`lamina.dbm` (a ``dbm`` module); README.md has the tour and
docs/ the design and formats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina import errors
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.database import Database, TableInfo, open
    from lamina.online import restore, verify

__version__ = "0.1.0"

__all__ = ["Database", "LaminaError", "TableInfo", "__version__", "errors", "open", "restore",
           "verify"]

#: The exports loaded on first use, and the module each lives in.
_LAZY = {"Database": "lamina.database", "TableInfo": "lamina.database",
         "open": "lamina.database", "restore": "lamina.online", "verify": "lamina.online"}


def __getattr__(name: str) -> Any:
    # Lazy so that importing lamina.core (e.g. in a crash-test child) loads no engine.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lamina' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    # dir() and help() list the lazy exports too (without loading them).
    return sorted({*globals(), *__all__})
