"""The Database facade: directories, catalog DDL (crash-atomic), handles, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lamina
from lamina.errors import (
    AlreadyExistsError,
    ClosedError,
    InvalidNameError,
    LockedError,
    NotADatabaseError,
    NotFoundError,
    ReadOnlyError,
    TableNotFoundError,
    TransactionClosedError,
    UsageError,
)


def test_create_open_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("b")
        db.create_table("a", engine="archive")
        assert [(t.name, t.engine) for t in db.tables()] == [("a", "archive"), ("b", "btree")]
        ids = {t.table_id for t in db.tables()}
        assert len(ids) == 2
    with lamina.open(path, create=False, readonly=True) as db:
        assert [t.name for t in db.tables()] == ["a", "b"]
        with pytest.raises(ReadOnlyError):
            db.create_table("c")
        with pytest.raises(ReadOnlyError):
            db.write()


def test_table_ids_are_never_reused_and_created_seq_is_the_creating_commit(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        first = db.create_table("t")
        db.put("t", b"k", b"v")
        db.drop_table("t")
        second = db.create_table("t")
        assert second.table_id != first.table_id
        assert second.created_seq > first.created_seq
        assert db.get("t", b"k") is None  # the re-created table starts empty


def test_bad_names_and_duplicates(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        for bad in ["../x", "/abs", "", "a/b", ".."]:
            with pytest.raises(InvalidNameError):
                db.create_table(bad)
        db.create_table("t")
        with pytest.raises(AlreadyExistsError):
            db.create_table("t", engine="archive")
        with pytest.raises(UsageError):
            db.create_table("u", engine="nope")
        with pytest.raises(TableNotFoundError):
            db.drop_table("missing")
        with pytest.raises(UsageError):
            db.archive("t")  # a btree table
        assert not list(tmp_path.glob("db/*..*"))


def test_not_a_database_and_missing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        lamina.open(tmp_path / "nope", create=False)
    (tmp_path / "file").write_text("hello")
    with pytest.raises(NotADatabaseError):
        lamina.open(tmp_path / "file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(NotADatabaseError):
        lamina.open(other)
    assert (other / "precious.txt").read_text() == "keep me"


def test_closed_database_and_ended_transaction(tmp_path: Path) -> None:
    db = lamina.open(tmp_path / "db")
    db.create_table("t")
    txn = db.read()
    table = txn.table("t")
    txn.close()
    with pytest.raises(TransactionClosedError):
        table.get(b"x")
    db.close()
    db.close()  # idempotent
    with pytest.raises(ClosedError):
        db.tables()


def test_write_lock_timeout_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("t")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, lamina
        db = lamina.open({str(path)!r})
        txn = db.write()
        print("holding", flush=True)
        sys.stdin.readline()
        txn.abort(); db.close()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "holding"
        with lamina.open(path, lock_timeout=0.3) as db:
            with pytest.raises(LockedError, match="locked"):
                db.put("t", b"k", b"v")
            assert db.get("t", b"k") is None  # reading is never blocked
    finally:
        holder.stdin.write("x\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    with lamina.open(path) as db:
        db.put("t", b"k", b"v")
        assert db.get("t", b"k") == b"v"


def _run_until_killed(path: Path, failpoint: str, code: str) -> int:
    env = dict(os.environ, LAMINA_FAILPOINT=failpoint)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import lamina
        db = lamina.open({str(path)!r})
    """) + textwrap.dedent(code)], env=env, timeout=60)
    return proc.returncode


def test_create_table_killed_before_catalog_commit_leaves_no_table(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("keep", engine="archive")
        db.append("keep", b"row")
    rc = _run_until_killed(path, "catalog.after_files_created",
                           "db.create_table('ghost', engine='archive')")
    assert rc == -9
    assert (path / "ghost.ARM").exists()  # the files were made, the catalog never was
    with lamina.open(path) as db:
        assert [t.name for t in db.tables()] == ["keep"]
        assert not (path / "ghost.ARM").exists() and not (path / "ghost.ARZ").exists()
        assert list(db.scan("keep")) == [(1, b"row")]
        db.create_table("ghost", engine="archive")  # the name is free again


def test_drop_table_killed_after_catalog_commit_finishes_at_open(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("gone", engine="archive")
        db.append("gone", b"row")
    rc = _run_until_killed(path, "catalog.after_commit_before_unlink", "db.drop_table('gone')")
    assert rc == -9
    with lamina.open(path) as db:
        assert db.tables() == []
        assert not (path / "gone.ARM").exists()


def test_interrupted_creation_is_started_again(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path):
        pass
    (path / "LAMINA").unlink()  # as if the creation died before its last step
    with pytest.raises(NotADatabaseError):
        lamina.open(path, create=False)
    with lamina.open(path) as db:
        db.create_table("t")


def test_archive_handle_and_conveniences(tmp_path: Path) -> None:
    with lamina.open(tmp_path / "db") as db:
        db.create_table("log", engine="archive")
        assert db.append("log", b"a") == 1
        assert db.append_many("log", [b"b", b"c"]) == [2, 3]
        assert list(db.scan("log", 2)) == [(2, b"b"), (3, b"c")]
        assert db.archive("log") is db.archive("log")
        stat = db.stat()
        assert stat["archive"]["log"]["rows"] == 3
        assert stat["commit_seq"] >= 3


def test_commit_seq_is_shared_by_both_engines_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with lamina.open(path) as db:
        db.create_table("t")
        db.create_table("log", engine="archive")
        s1 = db.put("t", b"k", b"v")
        db.append("log", b"x")
        s3 = db.put("t", b"k2", b"v")
        assert s3 > s1
        top = db.stat()["commit_seq"]
    with lamina.open(path) as db:
        assert db.stat()["commit_seq"] == top
        assert db.put("t", b"k3", b"v") == top + 1
