"""Lamina: embedded storage for Python that can be backed up online, incrementally and verifiably.

Quick start::

    import lamina
    with lamina.open("mydb") as db:
        db.create_table("users")
        with db.write() as txn:
            txn.table("users").put(b"alice", b"admin")
        with db.read() as txn:
            print(txn.table("users").get(b"alice"))

See README.md for the tour and docs/ for the design and formats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina import errors
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.database import Database, TableInfo, open
    from lamina.online import restore, verify

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy so that importing lamina.core (e.g. in a crash-test child) loads no engine.
    if name in ("Database", "TableInfo", "open"):
        from lamina import database

        return getattr(database, name)
    if name in ("restore", "verify"):
        from lamina import online

        return getattr(online, name)
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")

__all__ = ["Database", "LaminaError", "TableInfo", "__version__", "errors", "open", "restore",
           "verify"]
