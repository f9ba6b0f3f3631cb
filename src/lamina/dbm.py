"""A ``dbm``-compatible interface to a Lamina database, so ``shelve`` works on one.

``lamina.dbm.open(file, flag='r', mode=0o666)`` behaves like the standard library's
``dbm.open``: flag ``'r'`` opens an existing database read-only, ``'w'`` read-write,
``'c'`` creates it if needed, ``'n'`` always starts empty. ``file`` (``str``, ``bytes`` or
a path-like of either) is the database directory; the mapping lives in its btree table
``dbm``. Keys and values are bytes; ``str`` is accepted and stored as UTF-8; ``keys()``
returns a list of bytes. Every assignment or deletion is one committed (durable)
transaction. Operations on a closed object raise :data:`error`.

The standard library's ``dbm.whichdb`` knows only its own formats; :func:`whichdb` also
recognizes a Lamina database (returning ``"lamina.dbm"``). ``dbm.open``/``shelve.open``
dispatch to this module only if it is registered with the standard ``dbm`` package
(``dbm._modules["lamina.dbm"]`` and ``dbm.whichdb`` replaced by :func:`whichdb`), which
this module never does by itself; wrap a :class:`LaminaDbm` in ``shelve.Shelf`` instead.
CPython's own generic dbm and shelve tests run against this module
(tests/cpython_dbm).

Example::

    import shelve, lamina.dbm
    with shelve.Shelf(lamina.dbm.open("prefs", "c")) as shelf:
        shelf["window"] = {"w": 800, "h": 600}
"""

from __future__ import annotations

import dbm as _stdlib_dbm
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import lamina
from lamina.core import fileio
from lamina.core.identity import FILE_NAME as IDENTITY_FILE
from lamina.core.identity import MAGIC as IDENTITY_MAGIC
from lamina.database import Database
from lamina.errors import LaminaError, NotFoundError, StorageError

TABLE = "dbm"

__all__ = ["LaminaDbm", "error", "open", "whichdb"]

# Captured at import, so whichdb() still delegates to the standard one after a caller has
# installed whichdb() as dbm.whichdb.
_stdlib_whichdb = _stdlib_dbm.whichdb


class error(OSError):
    """Raised for dbm-level failures (closed object, bad flag, missing database, write to a
    read-only one, ...). A subclass of ``OSError``, so ``except dbm.error`` catches it."""


Key = bytes | str
#: What ``open`` and ``whichdb`` accept as a file name, like the standard dbm modules.
PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


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


def whichdb(file: PathArg) -> str | None:
    """Guess which dbm module opens ``file``, like :func:`dbm.whichdb`, knowing Lamina too.

    Returns ``"lamina.dbm"`` if ``file`` is a directory holding a Lamina identity file
    (checked by its magic only: the database may still fail to open); otherwise whatever
    the standard ``dbm.whichdb`` returns — ``None`` if nothing readable is there (which
    includes any other directory), ``""`` if the format is unknown, or a module name such
    as ``"dbm.gnu"``. Never raises for an unreadable path.
    """
    try:
        with (Path(os.fsdecode(file)) / IDENTITY_FILE).open("rb") as f:
            if f.read(len(IDENTITY_MAGIC)) == IDENTITY_MAGIC:
                return __name__
    except OSError:
        pass
    return _stdlib_whichdb(file)


def _clear_for_new(path: Path) -> None:
    """Make room for flag ``'n'``: remove a Lamina database or a non-directory at ``path``.

    Like the standard modules (which truncate whatever file is there), a regular file,
    whatever its contents, is replaced. A directory that is not a Lamina database is left
    alone: an empty one is then used, a non-empty one makes :func:`open` fail.
    """
    try:
        if path.is_dir() and not path.is_symlink():
            if (path / IDENTITY_FILE).exists():
                fileio.rmtree(path)
        elif path.is_symlink() or path.exists():
            fileio.unlink(path)
    except (OSError, StorageError) as exc:
        raise error(f"cannot replace {path} with a new database: {exc}") from exc


def open(file: PathArg, flag: str = "r", mode: int = 0o666) -> LaminaDbm:
    """Open a Lamina database as a dbm object (flags ``r``, ``w``, ``c``, ``n``).

    ``'r'`` opens an existing database read-only (writes raise :data:`error`), ``'w'``
    read-write; both fail if it does not exist. ``'c'`` opens read-write, creating it if
    needed. ``'n'`` always starts empty: an existing Lamina database, or any non-directory
    file, at ``file`` is replaced. Only the first character of ``flag`` counts (so the gnu
    modifiers ``'f'``, ``'s'``, ``'u'`` are accepted and ignored). ``mode`` sets the
    permission bits of a newly created database directory, masked by the umask, with a
    search (x) bit added wherever ``mode`` has the read bit (0o666 -> 0o777, 0o600 ->
    0o700); the files inside are created 0o644 (masked by the umask).
    Raises :data:`error` for a bad flag, a missing database with ``r``/``w``, a file that
    is not a Lamina database, a database with no ``dbm`` table opened ``r``, or any
    failure to open or create it.
    """
    base_flag = flag[:1]
    if base_flag not in ("r", "w", "c", "n"):
        raise error(f"flag must be one of 'r', 'w', 'c', or 'n', not {flag!r}")
    path = Path(os.fsdecode(file))
    if base_flag == "n":
        _clear_for_new(path)
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
            try:
                os.chmod(path, (mode | (mode & 0o444) >> 2) & 0o777 & ~umask)
            except OSError as exc:
                raise error(f"cannot set the mode of {path}: {exc}") from exc
        if TABLE not in {t.name for t in db.tables()}:
            if base_flag == "r":
                raise error(f"{path} has no {TABLE!r} table")
            db.create_table(TABLE)
    except BaseException:
        db.close()
        raise
    return LaminaDbm(db, readonly=base_flag == "r")
