"""The test support package itself: the CLI runner's flavours, and the teardown check
(which databases it finds, which it skips, how a test opts out, how a failure reads)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lamina
from support import checked, cli, expect_damaged

TESTS = Path(__file__).resolve().parent.parent


def _make(path: Path) -> None:
    with lamina.open(path) as db:
        db.create_table("t")
        with db.write() as txn:
            for i in range(300):
                txn.table("t").put(b"k%05d" % i, b"v" * 50)


def _damage(path: Path) -> None:
    """Flip a byte in every page but the two meta pages."""
    data = path / "data.lamina"
    raw = bytearray(data.read_bytes())
    for pgno in range(2, len(raw) // 4096):
        raw[pgno * 4096 + 200] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_cli_flavours(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    code, _out, err = cli.invoke("create-table", db, "t")
    assert code == 0 and err == ""
    assert cli.invoke("put", db, "t", "k", "v").code == 0
    assert cli.run("get", db, "t", "k").stdout == "v\n"
    assert cli.run_bytes("get", db, "t", "k").stdout == b"v\n"
    assert cli.run_ok("get", db, "t", "k").returncode == 0
    with pytest.raises(AssertionError):
        cli.run_ok("get", db, "t", "missing")
    proc = cli.start("get", db, "t", "k")
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "v\n"
    missing = cli.run("get", str(tmp_path / "none"), "t", "k")
    assert missing.returncode == 3 and missing.stderr.startswith("lamina: ")


def test_finds_recorded_and_subprocess_databases(tmp_path: Path,
                                                 tmp_path_factory: pytest.TempPathFactory
                                                 ) -> None:
    checked.drain()
    inside, outside = tmp_path / "inside", tmp_path_factory.mktemp("elsewhere") / "db"
    _make(inside)
    _make(outside)
    cli.run_ok("create-table", str(tmp_path / "by_cli"), "t")  # only the tmp_path scan sees it
    opened, _ = checked.drain()
    assert set(opened) == {inside.resolve(), outside.resolve()}
    assert set(checked.databases_under(tmp_path)) == {inside.resolve(),
                                                      (tmp_path / "by_cli").resolve()}
    lamina.open(outside, create=False, readonly=True).close()  # recorded again
    for path in (inside, outside, tmp_path / "by_cli"):
        _damage(path)
    problems = checked.problems_at_teardown([tmp_path])
    assert set(problems) == {inside.resolve(), outside.resolve(), (tmp_path / "by_cli").resolve()}
    assert all("checksum" in " ".join(f) for f in problems.values())
    message = checked.format_problems(problems)
    assert str(inside.resolve()) in message and "unchecked_db" in message
    expect_damaged(tmp_path, "the whole tmp_path was damaged above")
    assert checked.problems_at_teardown([tmp_path]) == {}
    expect_damaged(tmp_path, "and the teardown check would find it again")


def test_skips_incomplete_and_busy_databases(tmp_path: Path) -> None:
    half = tmp_path / "half"
    _make(half)
    (half / "LAMINA").unlink()  # as if its creation died before the last step
    assert not checked.is_complete_database(half)
    busy = tmp_path / "busy"
    _make(busy)
    assert not checked.held_by_another_process(busy)
    with lamina.open(busy):  # this process holding it does not count
        assert not checked.held_by_another_process(busy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, lamina\n"
                               "db = lamina.open(sys.argv[1], create=False)\n"
                               "print('open', flush=True)\nsys.stdin.readline()\n",
         str(busy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline() == "open\n"
        assert checked.held_by_another_process(busy)
        _damage(busy)
        assert checked.problems_at_teardown([tmp_path]) == {}  # busy: skipped
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not checked.held_by_another_process(busy)
    expect_damaged(busy, "damaged above to show a busy database is skipped")


def test_expect_damaged_needs_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        expect_damaged(tmp_path, "")


INNER_TESTS = '''
import pytest
from support import cli, expect_damaged
from support.test_support import _damage, _make


def test_sound(tmp_path):
    _make(tmp_path / "db")


def test_damaged(tmp_path):
    _make(tmp_path / "db")
    _damage(tmp_path / "db")


def test_damaged_by_a_process(tmp_path):
    cli.run_ok("create-table", str(tmp_path / "db"), "t")
    _damage(tmp_path / "db")


def test_damaged_outside_tmp_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("elsewhere") / "db"
    _make(path)
    _damage(path)


@pytest.mark.unchecked_db("damages its database on purpose")
def test_marker(tmp_path):
    _make(tmp_path / "db")
    _damage(tmp_path / "db")


def test_one_opted_out(tmp_path):
    _make(tmp_path / "a")
    _make(tmp_path / "b")
    _damage(tmp_path / "a")
    _damage(tmp_path / "b")
    expect_damaged(tmp_path / "a", "damaged on purpose")


@pytest.mark.unchecked_db
def test_marker_without_reason():
    pass


def test_failed_body(tmp_path):
    _make(tmp_path / "db")
    _damage(tmp_path / "db")
    assert False, "the body fails"
'''


def test_teardown_check_through_pytest(tmp_path: Path) -> None:
    """The plugin in a pytest run of its own: what errors, what passes, what it says."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from support.plugin import check_databases_at_teardown, pytest_runtest_makereport
    """))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nmarkers =\n    unchecked_db(why): skip the teardown check\n"
        "addopts = --strict-markers\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--basetemp", str(tmp_path / "base"), "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    expect_damaged(tmp_path / "base", "the inner run's databases, damaged on purpose")

    def outcome(name: str) -> set[str]:
        return {line.split()[0] for line in out.splitlines()
                if line.split()[1:2] == [f"test_inner.py::{name}"]}

    assert outcome("test_sound") == {"PASSED"}, out
    assert outcome("test_damaged") == {"PASSED", "ERROR"}, out
    assert outcome("test_damaged_by_a_process") == {"PASSED", "ERROR"}, out
    assert outcome("test_damaged_outside_tmp_path") == {"PASSED", "ERROR"}, out
    assert outcome("test_marker") == {"PASSED"}, out
    assert outcome("test_one_opted_out") == {"PASSED", "ERROR"}, out
    assert outcome("test_marker_without_reason") == {"ERROR"}, out
    assert outcome("test_failed_body") == {"FAILED"}, out
    assert "the teardown check found damage" in out and "checksum" in out
    assert "test_one_opted_out0/b:" in out and "test_one_opted_out0/a:" not in out, out
    assert "needs the reason" in out


def test_wait_for_returns_the_first_truthy_value_and_fails_on_a_dead_process() -> None:
    import subprocess
    import sys

    from support.waiting import wait_for

    calls = iter([0, None, "", 7, 8])
    assert wait_for(lambda: next(calls), "a value") == 7
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with pytest.raises(pytest.fail.Exception, match=r"rc 3\) before never"):
        wait_for(lambda: False, "never", proc=proc)
    with pytest.raises(pytest.fail.Exception, match="hang guard"):
        wait_for(lambda: False, "never", guard=0.01)
