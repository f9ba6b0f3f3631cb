"""Issue 10, item 8: Ctrl-C (SIGINT) or SIGTERM during ``backup``, ``restore``,
``verify --deep``, ``prune`` (and any other command) ends it with exit 10 and one line
("cancelled"), never click's "Aborted!" and exit 1; nothing half-done is left; a backup's
history says ``cancelled``. A closed stdout (``lamina scan DB T | head -1``) ends quietly.

Every test waits for the command to be provably in the middle of its work before the
signal: a file it creates appears, a lock file it waits on is open, or it has consumed
most of what the test writes into its stdin (a pipe holds 64 KiB: once a blocking write of
megabytes returns, the command has read all but that) or produced the first part of its
stdout (it then blocks writing the rest until the test reads it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lamina
from support import cli

from .helpers import diff_trees, lines, make_big, make_shop, repo_tree

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
MiB = 1 << 20


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen[bytes] | subprocess.Popen[str],
               what: str, timeout: float = 120.0) -> None:
    """Wait (on the process, in slices of 10 ms) until ``condition()`` holds; fail if the
    process ends first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        try:
            proc.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"timed out waiting for {what}")
            continue
        _out, err = proc.communicate()
        pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {err!r}")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A 12 MB database of incompressible values and an uncompressed image of it."""
    root = tmp_path_factory.mktemp("cancel")
    db = make_big(root / "big.db", keys=100_000, value_size=120)
    image = root / "big.lamina"
    with lamina.open(db) as handle:
        handle.backup(image, codec="none")
    assert image.stat().st_size > 10 * MiB
    yield db, image


def _history(db: Path) -> list[dict[str, object]]:
    proc = cli.run("history", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, object]] = json.loads(proc.stdout)
    return rows


def _assert_cancelled(proc: subprocess.Popen[bytes], err: bytes, word: str = "cancelled") -> None:
    text = err.decode()
    assert proc.returncode == 10, (proc.returncode, text)
    assert len(lines(text)) == 1 and word in text and text.startswith("lamina: "), text
    assert "Aborted" not in text and "Traceback" not in text


@pytest.mark.parametrize("sig", SIGNALS)
def test_backup_to_a_file_is_cancelled_cleanly(big: tuple[Path, Path], tmp_path: Path,
                                               sig: signal.Signals) -> None:
    db, _ = big
    image = tmp_path / "out.lamina"
    # 12 MB at 1 MB/s: the backup runs for seconds once its temporary image exists.
    proc = cli.start("backup", str(db), str(image), "--max-rate", "1", "--compress", "none",
                     text=False)
    wait_until(lambda: any(tmp_path.glob(".out.lamina.tmp-*")), proc, "the temporary image")
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    _assert_cancelled(proc, err)
    assert not image.exists()
    assert not list(tmp_path.iterdir()), "the temporary image is removed"
    last = _history(db)[-1]
    assert last["state"] == "cancelled", last
    assert "KeyboardInterrupt" not in str(last["error"])


@pytest.mark.parametrize("sig", SIGNALS)
def test_backup_to_stdout_is_cancelled_cleanly(big: tuple[Path, Path],
                                               sig: signal.Signals) -> None:
    db, _ = big
    proc = cli.start("backup", str(db), "-", "--compress", "none", text=False)
    assert proc.stdout is not None
    first = proc.stdout.read(MiB)  # the backup is streaming (and blocks on the pipe)
    assert len(first) == MiB
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)  # reads the rest: the backup goes on, sees it
    _assert_cancelled(proc, err)
    assert _history(db)[-1]["state"] == "cancelled"


def _feed_then_signal(args: list[str], data: bytes, sig: signal.Signals,
                      while_running: Callable[[], None] | None = None
                      ) -> tuple[subprocess.Popen[bytes], bytes]:
    """Run ``lamina ARGS`` with ``data`` on stdin: write the first half (the command then
    provably reads it), signal, write the rest (it notices at its next chunk)."""
    proc = subprocess.Popen([*cli.LAMINA, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    half = len(data) // 2
    proc.stdin.write(data[:half])
    proc.stdin.flush()
    if while_running is not None:
        while_running()
    proc.send_signal(sig)
    try:
        proc.stdin.write(data[half:])
        proc.stdin.close()
    except BrokenPipeError:  # it stopped reading: that is the point
        pass
    proc.stdin = None  # closed (or broken) already; communicate() must not flush it
    _out, err = proc.communicate(timeout=120)
    return proc, err


@pytest.mark.parametrize("sig", SIGNALS)
def test_restore_is_cancelled_cleanly(big: tuple[Path, Path], tmp_path: Path,
                                      sig: signal.Signals) -> None:
    _, image = big
    dest = tmp_path / "copy.db"

    def restoring() -> None:
        assert list(tmp_path.glob(".copy.db.restore-*")), "the restore is under way"

    proc, err = _feed_then_signal(["restore", "-", "--to", str(dest)], image.read_bytes(),
                                  sig, restoring)
    _assert_cancelled(proc, err)
    assert not dest.exists()
    assert not list(tmp_path.iterdir()), "the temporary directory is removed"


@pytest.mark.parametrize("sig", SIGNALS)
def test_deep_verify_is_cancelled(big: tuple[Path, Path], sig: signal.Signals) -> None:
    _, image = big
    proc, err = _feed_then_signal(["verify", "-", "--deep"], image.read_bytes(), sig)
    _assert_cancelled(proc, err)


def _has_open(pid: int, path: Path) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("sig", SIGNALS)
def test_prune_waiting_for_the_repository_is_cancelled(tmp_path: Path, repo_url: str,
                                                       sig: signal.Signals) -> None:
    from lamina.repository import Repository

    db = make_shop(tmp_path / "shop.db")
    repo = Repository.init(repo_url)
    with lamina.open(db) as handle:
        repo.backup(handle, full=True)
        handle.put("users", b"k", b"v")
        repo.backup(handle, full=True)
    before = repo_tree(repo.url)
    from lamina.repository.lock import EXCLUSIVE_KEY

    with repo.locks.repository(exclusive=False, operation="the test"):  # a backup, say
        proc = cli.start("prune", "--repo", repo.url, "--keep-last", "1",
                         "--lock-timeout", "120", text=False)
        # The prune holds the exclusive lease, waiting for our shared one to go.
        wait_until(lambda: repo.storage.exists(EXCLUSIVE_KEY), proc,
                   "prune to wait for the repository lock")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=120)
    _assert_cancelled(proc, err)
    assert diff_trees(before, repo_tree(repo.url)) == ""


@pytest.mark.parametrize("sig", SIGNALS)
def test_workload_stops_between_commits(tmp_path: Path, sig: signal.Signals) -> None:
    """The workload stops after the commit under way: its log then describes exactly the
    database (``workload verify`` at the last logged seq passes)."""
    db, log = tmp_path / "w.db", tmp_path / "wl.log"
    proc = cli.start("workload", str(db), "--seconds", "600", "--log", str(log), text=False)
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 3, proc,
               "the workload's first commits")
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=120)
    _assert_cancelled(proc, err)
    last_seq = log.read_text().splitlines()[-1].split()[1]
    verified = cli.run("workload", "verify", str(db), "--log", str(log), "--at", last_seq)
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_closed_stdout_ends_quietly(big: tuple[Path, Path], as_json: bool) -> None:
    """``lamina scan DB T | head -1``: the reader closes the pipe after one line."""
    db, _ = big
    proc = cli.start("scan", str(db), "kv", "--hex", *(["--json"] if as_json else []),
                     text=False)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    assert first.endswith(b"\n")
    if as_json:
        assert json.loads(first)["key"] == b"key:000000000000".hex()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode in (0, 141), (proc.returncode, err)
    assert err == b""
