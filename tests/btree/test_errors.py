"""Bad input and misuse raise the documented error classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import opened

from lamina.engines.btree import BtreeStore, format
from lamina.errors import (
    AlreadyExistsError,
    KeyTooLargeError,
    NotADatabaseError,
    NotFoundError,
    ReadOnlyError,
    TableNotFoundError,
    TransactionClosedError,
    UsageError,
    ValueTooLargeError,
    VersionError,
)


def test_not_a_database(tmp_path: Path) -> None:
    d = tmp_path / "db"
    d.mkdir()
    (d / BtreeStore.DATA_FILE_NAME).write_bytes(b"SQLite format 3\0" + bytes(8192))
    with pytest.raises(NotADatabaseError):
        BtreeStore.read_committed_meta(d)
    with pytest.raises(NotADatabaseError), opened(d, create=False):
        pass


def test_future_version(tmp_path: Path) -> None:
    d = tmp_path / "db"
    with opened(d):
        pass
    (d / "LOCK").unlink()
    path = d / BtreeStore.DATA_FILE_NAME
    raw = bytearray(path.read_bytes())
    for slot in (0, 1):
        raw[slot * 4096 + 8] = format.VERSION + 1
    path.write_bytes(bytes(raw))
    with pytest.raises(VersionError), opened(d, create=False):
        pass


def test_missing_file_and_bad_page_size(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError), opened(tmp_path / "a", create=False):
        pass
    with pytest.raises(UsageError), opened(tmp_path / "b", page_size=3000):
        pass


def test_key_and_value_limits(store: BtreeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = format.max_key_size(store.page_size)
    with store.begin_write() as w:
        w.create_table("t")
        t = w.table("t")
        t.put(b"k" * limit, b"ok")
        with pytest.raises(KeyTooLargeError):
            t.put(b"k" * (limit + 1), b"no")
        monkeypatch.setattr(format, "MAX_VALUE_SIZE", 100_000)
        t.put(b"big", b"v" * 100_000)
        with pytest.raises(ValueTooLargeError):
            t.put(b"bigger", b"v" * 100_001)
    with store.begin_read() as r:
        assert r.table("t").get(b"big") == b"v" * 100_000
        assert r.table("t").get(b"bigger") is None


def test_use_after_end(store: BtreeStore) -> None:
    with store.begin_write() as w:
        w.create_table("t")
        t = w.table("t")
        t.put(b"a", b"1")
        c = t.cursor()
        assert c.first()
    for call in (lambda: t.get(b"a"), lambda: t.put(b"b", b"2"), lambda: len(t),
                 c.next, lambda: w.table("t"), w.commit, lambda: list(t.items())):
        with pytest.raises(TransactionClosedError):
            call()
    w.abort()  # idempotent
    r = store.begin_read()
    rt = r.table("t")
    r.close()
    with pytest.raises(TransactionClosedError):
        rt.get(b"a")
    with pytest.raises(TransactionClosedError):
        r.catalog()


def test_misuse(store: BtreeStore, tmp_path: Path) -> None:
    with store.begin_write() as w:
        w.create_table("t")
        w.create_table("arc", engine="archive")
        with pytest.raises(AlreadyExistsError):
            w.create_table("t")
        with pytest.raises(UsageError):
            w.table("arc")
        with pytest.raises(TableNotFoundError):
            w.table("nope")
        with pytest.raises(TableNotFoundError):
            w.drop_table("nope")
        with pytest.raises(UsageError):
            w.table("t").bulk_load([(b"b", b""), (b"a", b"")])
        assert len(w.table("t")) == 0
        w.table("t").put(b"x", b"y")
        with pytest.raises(UsageError):
            w.table("t").bulk_load([(b"a", b"")])
    with store.begin_read() as r:
        with pytest.raises(ReadOnlyError):
            r.table("t").put(b"a", b"b")
        with pytest.raises(ReadOnlyError):
            r.table("t").delete(b"x")
        assert [e.name for e in r.catalog()] == ["arc", "t"]
        assert r.catalog_get("arc").engine == "archive"  # type: ignore[union-attr]
    with opened(store.path.parent, create=False, readonly=True) as ro:
        with pytest.raises(ReadOnlyError):
            ro.begin_write()
        with ro.begin_read() as r:
            assert r.table("t").get(b"x") == b"y"
    with pytest.raises(UsageError), store.begin_read() as r, r.table("t").cursor() as c:
        c.key()


def test_commit_seq_and_created_seq(store: BtreeStore) -> None:
    with store.begin_write() as w:
        w.create_table("t")
        seq1 = w.commit()
    with store.begin_write() as w:
        assert w.commit() == seq1  # nothing written: unchanged
    with store.begin_write() as w:
        w.table("t").put(b"a", b"b")
        w.create_table("u")
        seq2 = w.commit()
    assert seq2 == seq1 + 1
    with store.begin_read() as r:
        assert r.commit_seq == seq2
        assert r.catalog_get("t").created_seq == seq1  # type: ignore[union-attr]
        assert r.catalog_get("u").created_seq == seq2  # type: ignore[union-attr]
        assert store.read_committed_meta(store.path.parent)[0] == seq2
    with pytest.raises(RuntimeError), store.begin_write() as w:
        w.table("t").put(b"gone", b"x")
        raise RuntimeError("abort me")
    with store.begin_read() as r:
        assert r.table("t").get(b"gone") is None
