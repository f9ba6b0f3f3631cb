"""The Python API contract (issue 10, item 13): ``python -m lamina``, what ``help(lamina)``
shows, one rule for non-bytes keys and values in every method, opening a missing database
read-only, a nested write transaction in one thread, and the CLI's ``--lock-timeout`` on
put/get/delete/append and ``lamina info`` given a database directory.

The key rule: keys, values, bounds, prefixes and rows are bytes. Any bytes-like object
(``bytes``, ``bytearray``, ``memoryview``) is accepted and copied to ``bytes``; anything else
— ``str`` included — raises :class:`~lamina.errors.UsageError` (exit code 2) naming the
argument, in every method, whatever the table holds (an empty table too, where a lookup
never compares keys and so used to answer ``None`` silently).
"""

from __future__ import annotations

import pydoc
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina.database import Database
from lamina.errors import LockedError, NotADatabaseError, NotFoundError, UsageError
from support import cli

#: How long a test waits for a thread that must finish at once (a guard, never a pause).
GUARD = 30.0


# ---------------------------------------------------------------------- python -m lamina
def test_python_dash_m_lamina_is_the_lamina_command(tmp_path: Path) -> None:
    lamina_m = (sys.executable, "-m", "lamina")
    proc = subprocess.run([*lamina_m, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: lamina ")
    assert "put" in proc.stdout and "backup" in proc.stdout
    db = str(tmp_path / "db")
    run = [*lamina_m, "create-table", db, "t"]
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    run = [*lamina_m, "put", db, "t", "k", "v"]
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    proc = subprocess.run([*lamina_m, "get", db, "t", "k"], capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode, proc.stdout) == (0, "v\n")
    # Exit codes pass through: a missing key is 3.
    missing = subprocess.run([*lamina_m, "get", db, "t", "nope"], capture_output=True,
                             timeout=120)
    assert missing.returncode == 3


# ---------------------------------------------------------------------- help(lamina)
def test_help_lamina_lists_the_api() -> None:
    text = pydoc.plain(pydoc.render_doc(lamina))
    # The module docstring says what the package is.
    assert re.search(r"NAME\n\s+lamina - .*embedded storage.*back(ed)? up", text), text[:400]
    classes = text.split("\nCLASSES\n", 1)[1].split("\nFUNCTIONS\n", 1)[0]
    functions = text.split("\nFUNCTIONS\n", 1)[1].split("\nDATA\n", 1)[0]
    assert re.search(r"^    class Database\b", classes, re.M), classes[:2000]
    assert re.search(r"^    class TableInfo\b", classes, re.M)
    assert re.search(r"^    class LaminaError\b", classes, re.M)
    for name in ("open", "restore", "verify"):
        assert re.search(rf"^    {name}\(", functions, re.M), (name, functions)


def test_exports_are_explicit_and_documented() -> None:
    assert {"open", "restore", "verify", "Database", "TableInfo", "LaminaError",
            "errors", "__version__"} <= set(lamina.__all__)
    assert set(lamina.__all__) <= set(dir(lamina))
    for name in lamina.__all__:
        obj = getattr(lamina, name)
        if name != "__version__":
            assert (obj.__doc__ or "").strip(), f"lamina.{name} has no docstring"
    assert lamina.open is lamina.database.open
    assert lamina.Database is Database
    from lamina import online
    assert lamina.restore is online.restore and lamina.verify is online.verify


def test_listing_the_package_loads_no_engine() -> None:
    # The exports stay lazy: importing lamina (and dir() of it) loads no engine, so a
    # crash-test child importing lamina.core stays small.
    code = ("import sys, lamina; names = dir(lamina); "
            "assert 'open' in names and 'Database' in names, names; "
            "loaded = [m for m in sys.modules if m.startswith(('lamina.engines', "
            "'lamina.database', 'lamina.online'))]; assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------- the key rule
@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Database]:
    with lamina.open(tmp_path / "db", lock_timeout=60.0) as handle:
        handle.create_table("empty")
        handle.create_table("full")
        handle.create_table("fresh")
        handle.create_table("rows", engine="archive")
        handle.put("full", b"k", b"v")
        yield handle


def _read(db: Database, table: str, op: Callable[[Any], Any]) -> Any:
    with db.read() as txn:
        return op(txn.table(table))


def _write(db: Database, table: str, op: Callable[[Any], Any]) -> Any:
    with db.write() as txn:
        return op(txn.table(table))


def _seek(db: Database, table: str, key: Any, in_write: bool) -> bool:
    def op(t: Any) -> bool:
        with t.cursor() as cur:
            return bool(cur.seek(key))
    return bool((_write if in_write else _read)(db, table, op))


def _appender(db: Database, row: Any) -> None:
    with db.archive("rows").writer() as w:
        w.append(row)


#: (argument the message must name, call with a non-bytes argument) for every method that
#: takes a key, value, bound, prefix or row. ``T`` is the table name.
def _cases(T: str) -> list[tuple[str, Callable[[Database], Any]]]:
    return [
        ("key", lambda db: db.get(T, "k")),
        ("key", lambda db: db.put(T, "k", b"v")),
        ("value", lambda db: db.put(T, b"k", "v")),
        ("key", lambda db: db.delete(T, "k")),
        ("key", lambda db: _read(db, T, lambda t: t.get("k"))),
        ("key", lambda db: _read(db, T, lambda t: "k" in t)),
        ("key", lambda db: _write(db, T, lambda t: t.get("k"))),
        ("key", lambda db: _write(db, T, lambda t: "k" in t)),
        ("start", lambda db: _read(db, T, lambda t: t.items("a"))),
        ("stop", lambda db: _read(db, T, lambda t: t.items(None, "z"))),
        ("start", lambda db: _read(db, T, lambda t: t.items("a", reverse=True))),
        ("stop", lambda db: _read(db, T, lambda t: t.items(b"a", "z", reverse=True))),
        ("prefix", lambda db: _read(db, T, lambda t: t.prefix("k"))),
        ("lo", lambda db: _read(db, T, lambda t: t.count("a"))),
        ("hi", lambda db: _read(db, T, lambda t: t.count(b"a", "z"))),
        ("key", lambda db: _seek(db, T, "k", in_write=False)),
        ("key", lambda db: _seek(db, T, "k", in_write=True)),
        ("key", lambda db: _write(db, T, lambda t: t.put("k", b"v"))),
        ("value", lambda db: _write(db, T, lambda t: t.put(b"k", "v"))),
        ("key", lambda db: _write(db, T, lambda t: t.delete("k"))),
        ("key", lambda db: _seek(db, T, 7, in_write=False)),
        ("key", lambda db: _read(db, T, lambda t: t.get(7))),
        ("key", lambda db: db.put(T, None, b"v")),
    ]


@pytest.mark.parametrize("table", ["empty", "full"])
@pytest.mark.parametrize("index", range(len(_cases("t"))))
def test_non_bytes_keys_and_values_raise_usage_error(db: Database, table: str,
                                                     index: int) -> None:
    what, call = _cases(table)[index]
    before = _read(db, table, lambda t: list(t.items()))
    with pytest.raises(UsageError) as info:
        call(db)
    assert type(info.value) is UsageError and info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(f"{what} must be bytes, not "), message
    assert _read(db, table, lambda t: list(t.items())) == before  # nothing changed
    assert db.write(timeout=0).commit() >= 0  # and no transaction was left open


@pytest.mark.parametrize("what, items", [
    ("key", [("a", b"x")]),
    ("value", [(b"a", "x")]),
    ("key", [(b"a", b"x"), ("b", b"y")]),
    ("value", [(b"a", b"x"), (b"b", 1)]),
])
def test_bulk_load_non_bytes_raises_usage_error(db: Database, what: str,
                                               items: list[tuple[Any, Any]]) -> None:
    with pytest.raises(UsageError, match=f"^{what} must be bytes, not "):
        _write(db, "fresh", lambda t: t.bulk_load(items))
    assert _read(db, "fresh", len) == 0
    assert _write(db, "fresh", lambda t: t.bulk_load([(b"a", b"x")])) == 1


@pytest.mark.parametrize("call", [
    lambda db: db.append("rows", "row"),
    lambda db: db.append_many("rows", [b"ok", "row"]),
    lambda db: db.archive("rows").append("row"),
    lambda db: db.archive("rows").append_many(["row"]),
    lambda db: _appender(db, "row"),
    lambda db: db.append("rows", 5),
], ids=["db.append", "db.append_many", "table.append", "table.append_many",
        "writer.append", "int"])
def test_archive_rows_follow_the_same_rule(db: Database, call: Callable[[Database], Any]) -> None:
    with pytest.raises(UsageError, match="rows are bytes, not "):
        call(db)
    assert db.archive("rows").count() == 0


def test_bytes_like_keys_are_accepted_everywhere(db: Database) -> None:
    for kind in (bytearray, memoryview):
        key, value = kind(b"b"), kind(b"w")
        db.put("full", key, value)  # type: ignore[arg-type]
        assert db.get("full", key) == b"w"  # type: ignore[arg-type]
        with db.read() as txn:
            t = txn.table("full")
            assert key in t  # type: ignore[operator]
            assert t.count(kind(b"a"), kind(b"z")) == 2  # type: ignore[arg-type]
            assert list(t.items(kind(b"b"), kind(b"c"))) == [(b"b", b"w")]  # type: ignore[arg-type]
            assert list(t.items(kind(b"a"), kind(b"c"), reverse=True)) == [(b"b", b"w")]  # type: ignore[arg-type]
            assert list(t.prefix(kind(b"b"))) == [(b"b", b"w")]  # type: ignore[arg-type]
            with t.cursor() as cur:
                assert cur.seek(kind(b"b")) and cur.key() == b"b"  # type: ignore[arg-type]
        assert db.delete("full", key) is True  # type: ignore[arg-type]
    with db.write() as txn:
        loaded = txn.table("fresh").bulk_load(
            [(bytearray(b"a"), memoryview(b"1")), (memoryview(b"b"), bytearray(b"2"))])  # type: ignore[list-item]
    assert loaded == 2
    with db.read() as txn:
        items = list(txn.table("fresh").items())
    assert items == [(b"a", b"1"), (b"b", b"2")]
    assert all(type(k) is bytes and type(v) is bytes for k, v in items)
    assert db.append("rows", bytearray(b"r")) == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------------- open read-only
def test_open_missing_readonly_raises_not_found_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(NotFoundError, match="does not exist"):
        lamina.open(missing, readonly=True)
    with pytest.raises(NotFoundError):
        lamina.open(missing, create=True, readonly=True)
    with pytest.raises(NotFoundError):
        lamina.open(missing, create=False, readonly=True)
    assert not missing.exists()


def test_open_empty_directory_readonly_is_not_a_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotADatabaseError):
        lamina.open(empty, readonly=True)
    assert list(empty.iterdir()) == []


# ---------------------------------------------------------------------- nested writes
def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new thread and return what it returned or raise what it raised; the
    thread must finish within GUARD seconds (every lock below waits 60 s, so a call that
    waits for a lock instead of failing at once fails this guard)."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as exc:  # handed to the test thread
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), "the call waited for a lock instead of failing at once"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


@pytest.mark.parametrize("nested", [
    lambda db: db.write(),
    lambda db: db.write(timeout=120),
    lambda db: db.put("t", b"k", b"v"),
    lambda db: db.delete("t", b"k"),
    lambda db: db.create_table("other"),
    lambda db: db.drop_table("t"),
], ids=["write", "write-timeout", "put", "delete", "create_table", "drop_table"])
def test_nested_write_in_the_same_thread_fails_at_once(
        tmp_path: Path, nested: Callable[[Database], Any]) -> None:
    with lamina.open(tmp_path / "db", lock_timeout=60.0) as db:
        db.create_table("t")

        def scenario() -> None:
            with db.write() as txn:
                txn.table("t").put(b"a", b"1")
                with pytest.raises(UsageError, match="already holds the write transaction"):
                    nested(db)
                txn.table("t").put(b"b", b"2")  # the outer transaction goes on

        _in_thread(scenario)
        assert db.get("t", b"a") == b"1" and db.get("t", b"b") == b"2"
        assert [t.name for t in db.tables()] == ["t"]
        db.put("t", b"c", b"3")  # once it ended, the thread may write again
        assert db.get("t", b"c") == b"3"


def test_nested_write_through_a_second_handle_fails_at_once(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db", lock_timeout=60.0) as db, \
            lamina.open(tmp_path / "db", lock_timeout=60.0) as other:
        db.create_table("t")

        def scenario() -> None:
            with db.write(), pytest.raises(UsageError, match="already holds the write"):
                other.put("t", b"k", b"v")

        _in_thread(scenario)
        other.put("t", b"k", b"v")
        assert db.get("t", b"k") == b"v"


def test_write_after_an_aborted_or_committed_one_in_the_same_thread(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db", lock_timeout=60.0) as db:
        db.create_table("t")

        def scenario() -> None:
            with pytest.raises(RuntimeError), db.write() as txn:
                txn.table("t").put(b"gone", b"x")
                raise RuntimeError("abort it")
            txn = db.write()
            txn.table("t").put(b"a", b"1")
            txn.commit()
            txn = db.write()
            txn.abort()
            with db.write() as txn:
                txn.table("t").put(b"b", b"2")

        _in_thread(scenario)
        assert [k for k, _ in _read(db, "t", lambda t: list(t.items()))] == [b"a", b"b"]


def test_other_threads_still_wait_for_the_writer(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db", lock_timeout=60.0) as db:
        db.create_table("t")
        with db.write() as txn:
            txn.table("t").put(b"a", b"1")
            # Another thread is not nested: it waits (here 0.2 s), then LockedError.
            with pytest.raises(LockedError):
                _in_thread(lambda: db.write(timeout=0.2))
        done = threading.Event()
        with db.write():
            # ...and gets the lock once the holder lets go.
            def put() -> None:
                db.put("t", b"w", b"2")
                done.set()

            waiter = threading.Thread(target=put, daemon=True)
            waiter.start()
        waiter.join(GUARD)
        assert done.is_set() and db.get("t", b"w") == b"2"


# ---------------------------------------------------------------------- CLI
@pytest.fixture()
def shop(tmp_path: Path) -> str:
    path = str(tmp_path / "shop.db")
    cli.run_ok("create-table", path, "users")
    cli.run_ok("create-table", path, "events", "--engine", "archive")
    cli.run_ok("put", path, "users", "alice", "admin")
    return path


def _waited(stderr: str) -> float:
    """The wait a LockedError message reports ("... (waited 0.25s)"): the option's value,
    not the 5 s default (a bound, so the test measures no time itself)."""
    found = re.search(r"locked by another process \(waited ([0-9.]+)s\)", stderr)
    assert found, stderr
    return float(found.group(1))


@pytest.mark.parametrize("args", [
    ("put", "users", "bob", "user"),
    ("delete", "users", "alice"),
])
def test_lock_timeout_bounds_the_wait_for_the_writer(shop: str, args: tuple[str, ...]) -> None:
    with lamina.open(shop) as db, db.write():
        command, *rest = args
        proc = cli.run(command, shop, *rest, "--lock-timeout", "0.25", timeout=GUARD)
        assert proc.returncode == 8, proc.stderr
        assert _waited(proc.stderr) <= 0.25, proc.stderr
    cli.run_ok(*args[:1], shop, *args[1:], "--lock-timeout", "10")


def test_lock_timeout_bounds_the_wait_for_an_archive_writer(shop: str) -> None:
    with lamina.open(shop) as db, db.archive("events").writer():
        proc = cli.run("append", shop, "events", "x", "--lock-timeout", "0.25", timeout=GUARD)
        assert proc.returncode == 8, proc.stderr
        assert _waited(proc.stderr) <= 0.25, proc.stderr
    proc = cli.run_ok("append", shop, "events", "x", "--lock-timeout", "10")
    assert proc.stdout == "appended row 1\n"


def test_get_takes_lock_timeout_and_never_waits_for_the_writer(shop: str) -> None:
    with lamina.open(shop) as db, db.write():
        proc = cli.run("get", shop, "users", "alice", "--lock-timeout", "0", timeout=GUARD)
        assert (proc.returncode, proc.stdout) == (0, "admin\n"), proc.stderr


@pytest.mark.parametrize("command", [
    ("put", "users", "k", "v"), ("get", "users", "alice"), ("delete", "users", "alice"),
    ("append", "events", "row"),
])
def test_lock_timeout_option_is_checked(shop: str, command: tuple[str, ...]) -> None:
    name, *rest = command
    for bad in ("-1", "nan", "soon"):
        code, _, err = cli.invoke(name, shop, *rest, "--lock-timeout", bad)
        assert code == 2, (command, bad, err)
    code, out, _ = cli.invoke(name, "--help")
    assert code == 0 and "--lock-timeout" in out


def test_info_of_a_database_directory_points_to_stat(shop: str) -> None:
    code, out, err = cli.invoke("info", shop)
    assert code == 5, err
    assert out == ""
    assert "not a Lamina image" in err and "database" in err
    assert f"lamina stat {shop}" in err
    code, _, err = cli.invoke("info", shop, "--json")
    assert code == 5, err


def test_info_of_another_directory_is_not_an_image(tmp_path: Path) -> None:
    code, _, err = cli.invoke("info", str(tmp_path))
    assert code == 5, err
    assert "not a Lamina image" in err and "directory" in err
