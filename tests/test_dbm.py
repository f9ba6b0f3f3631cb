"""lamina.dbm behaves as the standard library's dbm modules do (compared with dbm.dumb)."""

from __future__ import annotations

import dbm.dumb
import os
import shelve
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lamina.dbm


def test_flags(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with pytest.raises(lamina.dbm.error):
        lamina.dbm.open(path, "r")
    with pytest.raises(lamina.dbm.error):
        lamina.dbm.open(path, "w")
    with pytest.raises(lamina.dbm.error):
        lamina.dbm.open(path, "x")
    with lamina.dbm.open(path, "c") as d:
        d[b"a"] = b"1"
        d["é"] = "2"
    with lamina.dbm.open(path, "r") as d:
        assert d[b"a"] == b"1" and d["é".encode()] == b"2"
        with pytest.raises(lamina.dbm.error):
            d[b"b"] = b"3"
        with pytest.raises(lamina.dbm.error):
            del d[b"a"]
    with lamina.dbm.open(path, "w") as d:
        d[b"b"] = b"3"
        assert sorted(d.keys()) == [b"a", b"b", "é".encode()]
    with lamina.dbm.open(path, "n") as d:
        assert len(d) == 0


def test_mapping_behaviour_and_closed_errors(tmp_path: Path) -> None:
    d = lamina.dbm.open(tmp_path / "d", "c")
    d[b"k"] = b"v"
    assert b"k" in d and "k" in d and b"z" not in d and 3 not in d
    assert d.get(b"k") == b"v" and d.get(b"z") is None
    assert d.setdefault(b"s", b"default") == b"default" and d[b"s"] == b"default"
    with pytest.raises(KeyError):
        d[b"missing"]
    with pytest.raises(KeyError):
        del d[b"missing"]
    with pytest.raises(TypeError):
        d[1] = b"x"  # type: ignore[index]
    assert set(d) == {b"k", b"s"} and len(d) == 2
    d.close()
    with pytest.raises(lamina.dbm.error):
        d[b"k"]
    with pytest.raises(lamina.dbm.error):
        d[b"k"] = b"v"
    with pytest.raises(lamina.dbm.error):
        len(d)


def test_shelve_works(tmp_path: Path) -> None:
    path = tmp_path / "shelf"
    with shelve.Shelf(lamina.dbm.open(path, "c")) as shelf:
        shelf["window"] = {"w": 800, "h": 600}
        shelf["list"] = [1, 2, 3]
    with shelve.Shelf(lamina.dbm.open(path, "r")) as shelf:
        assert shelf["window"] == {"w": 800, "h": 600}
        assert sorted(shelf.keys()) == ["list", "window"]


keys = st.binary(min_size=1, max_size=12)
ops = st.lists(st.tuples(st.sampled_from(["set", "del", "get"]), keys, st.binary(max_size=30)),
               max_size=25)


@settings(max_examples=25)
@given(ops)
def test_same_as_dbm_dumb(tmp_path_factory: pytest.TempPathFactory, ops) -> None:
    base = tmp_path_factory.mktemp("cmp")
    ours = lamina.dbm.open(base / "lamina", "c")
    theirs = dbm.dumb.open(str(base / "dumb"), "c")  # noqa: SIM115 - closed in finally
    try:
        for op, key, value in ops:
            if op == "set":
                ours[key] = value
                theirs[key] = value
            elif op == "del":
                outcome = []
                for d in (ours, theirs):
                    try:
                        del d[key]
                        outcome.append("ok")
                    except KeyError:
                        outcome.append("missing")
                assert outcome[0] == outcome[1]
            else:
                assert ours.get(key) == theirs.get(key)
        assert sorted(ours.keys()) == sorted(theirs.keys())
        assert len(ours) == len(theirs)
    finally:
        ours.close()
        theirs.close()


def test_whichdb_recognizes_lamina_and_delegates(tmp_path: Path) -> None:
    path = tmp_path / "d"
    assert lamina.dbm.whichdb(path) is None
    lamina.dbm.open(path, "c").close()
    for name in (path, str(path), bytes(path), str(path).encode()):
        assert lamina.dbm.whichdb(name) == "lamina.dbm"
    (tmp_path / "plain").mkdir()
    assert lamina.dbm.whichdb(tmp_path / "plain") is None
    dbm.dumb.open(str(tmp_path / "dumb"), "c").close()
    assert lamina.dbm.whichdb(tmp_path / "dumb") == "dbm.dumb"
    (tmp_path / "junk").write_bytes(b"not a database")
    assert lamina.dbm.whichdb(tmp_path / "junk") == ""


def test_bytes_paths_and_flag_n_replaces(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with lamina.dbm.open(bytes(path), "c") as d:
        d[b"k"] = b"v"
    with lamina.dbm.open(bytes(path), "r") as d:
        assert d[b"k"] == b"v"
    with lamina.dbm.open(path, "n") as d:  # an existing Lamina database: emptied
        assert len(d) == 0
    junk = tmp_path / "junk"
    junk.write_bytes(b"whatever was here")
    with lamina.dbm.open(junk, "n") as d:  # any non-directory file is replaced
        d[b"a"] = b"1"
    assert lamina.dbm.whichdb(junk) == "lamina.dbm"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(lamina.dbm.error):  # a foreign non-empty directory is never removed
        lamina.dbm.open(other, "n")
    assert (other / "keep.txt").read_text() == "mine"


def test_mode_sets_directory_bits(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        lamina.dbm.open(tmp_path / "a", "c", 0o600).close()
        lamina.dbm.open(tmp_path / "b", "c").close()
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755
