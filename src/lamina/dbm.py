"""A ``dbm``-compatible interface to a Lamina database, so ``shelve`` works on one.

``lamina.dbm.open(file, flag='r', mode=0o666)`` behaves like the standard library's
``dbm.open``: flag ``'r'`` opens an existing database read-only, ``'w'`` read-write,
``'c'`` creates it if needed, ``'n'`` always starts empty. ``file`` is the database
directory; the mapping lives in its btree table ``dbm``. Keys and values are bytes;
``str`` is accepted and stored as UTF-8. Every assignment or deletion is one committed
(durable) transaction. Operations on a closed object raise :data:`error`.

Example::

    import shelve, lamina.dbm
    with shelve.Shelf(lamina.dbm.open("prefs", "c")) as shelf:
        shelf["window"] = {"w": 800, "h": 600}
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import lamina
from lamina.database import Database
from lamina.errors import LaminaError, NotFoundError

TABLE = "dbm"

__all__ = ["LaminaDbm", "error", "open"]


class error(OSError):
    """Raised for dbm-level failures (closed object, bad flag, missing database, ...)."""


Key = bytes | str


def _as_bytes(obj: object, what: str) -> bytes:
    # Typed `object`: callers (shelve, users) pass anything; the dbm contract is TypeError.
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes or str, not {type(obj).__name__}")


class LaminaDbm(MutableMapping[bytes, bytes]):
    """A dbm object over one Lamina database directory (see the module docstring)."""

    def __init__(self, db: Database, readonly: bool) -> None:
        self._db: Database | None = db
        self._readonly = readonly

    def _database(self) -> Database:
        if self._db is None:
            raise error("DBM object has already been closed")
        return self._db

    def __getitem__(self, key: Key) -> bytes:
        raw = _as_bytes(key, "key")
        try:
            value = self._database().get(TABLE, raw)
        except LaminaError as exc:
            raise error(str(exc)) from exc
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Key, value: Key) -> None:
        raw_key, raw_value = _as_bytes(key, "key"), _as_bytes(value, "value")
        if self._readonly:
            raise error("database is open read-only")
        try:
            self._database().put(TABLE, raw_key, raw_value)
        except LaminaError as exc:
            raise error(str(exc)) from exc

    def __delitem__(self, key: Key) -> None:
        raw = _as_bytes(key, "key")
        if self._readonly:
            raise error("database is open read-only")
        try:
            found = self._database().delete(TABLE, raw)
        except LaminaError as exc:
            raise error(str(exc)) from exc
        if not found:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes | str):
            return False
        return self._database().get(TABLE, _as_bytes(key, "key")) is not None

    def keys(self) -> list[bytes]:  # type: ignore[override]
        """All keys, in key order (a list, like the standard dbm modules)."""
        with self._database().read() as txn:
            return [k for k, _ in txn.table(TABLE).items()]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def __len__(self) -> int:
        with self._database().read() as txn:
            return len(txn.table(TABLE))

    def sync(self) -> None:
        """No-op: every write is already committed durably."""
        self._database()

    def close(self) -> None:
        """Close the database; further use raises :data:`error`. Idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> LaminaDbm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def open(file: str | os.PathLike[str], flag: str = "r", mode: int = 0o666) -> LaminaDbm:
    """Open a Lamina database as a dbm object (flags ``r``, ``w``, ``c``, ``n``).

    ``mode`` sets the permission bits of a newly created database (masked by the umask).
    Raises :data:`error` for a bad flag, a missing database with ``r``/``w``, or a file that
    is not a Lamina database.
    """
    base_flag = flag[:1]
    if base_flag not in ("r", "w", "c", "n"):
        raise error(f"flag must be one of 'r', 'w', 'c', or 'n', not {flag!r}")
    path = Path(file)
    if base_flag == "n" and path.exists():
        if path.is_dir() and (path / "LAMINA").exists():
            shutil.rmtree(path)
        elif path.exists():
            raise error(f"{path} exists and is not a Lamina database")
    creating = base_flag in ("c", "n") and not path.exists()
    try:
        db = lamina.open(path, create=base_flag in ("c", "n"), readonly=base_flag == "r")
    except NotFoundError as exc:
        raise error(f"need 'c' or 'n' flag to open new db: {exc}") from exc
    except LaminaError as exc:
        raise error(str(exc)) from exc
    try:
        if creating:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(path, (mode | 0o111) & 0o777 & ~umask)
        if TABLE not in {t.name for t in db.tables()}:
            if base_flag == "r":
                raise error(f"{path} has no {TABLE!r} table")
            db.create_table(TABLE)
    except BaseException:
        db.close()
        raise
    return LaminaDbm(db, readonly=base_flag == "r")
