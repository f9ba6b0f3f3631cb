"""Check every database a test leaves behind, at the test's teardown.

Like bbolt's ``internal/btesting`` (``PostTestCleanup`` -> ``MustCheck``): a test that
opened or created Lamina databases ends with each of them passing the checker, so a test
that asserts only what it is about still catches damage it did not look for.

How databases are found (both ways together, deduplicated by resolved path):

1. **Recorded opens.** :func:`install` wraps ``lamina.database.Database.__init__`` once per
   process; every successful open (any mode, any thread) records the database directory.
   The teardown check takes everything recorded since the previous test's teardown, so a
   database a module- or session-scoped fixture opened while setting up a test is
   attributed to that test.
2. **The test's ``tmp_path``.** Every directory under it that holds a ``LAMINA`` identity
   file: the databases that ``lamina`` subprocesses (``support.cli``), writer processes or
   restores created there.

A database is checked only if, at teardown, it still exists, is *complete* (holds both
``LAMINA``, written last at creation, and ``data.lamina``) and no *other* live process
holds a lock on its ``LOCK`` file (an open database always does; read from
``/proc/locks``). It is opened read-only (``lamina.open(create=False, readonly=True)``)
and ``check()`` must be ``ok``; an error while opening or checking is a finding too. The
check's own open is not recorded. A database this process still holds open (a module-scoped
fixture's) is checked all the same: the check reads its last committed state. Where
``/proc/locks`` does not exist, no database counts as held by another process. The
databases of a test whose body failed are not checked (see :mod:`support.plugin`).

Opting out, only for databases a test damages on purpose:

* ``@pytest.mark.unchecked_db("why")`` on a test: none of its databases is checked.
* :func:`expect_damaged(path, why) <expect_damaged>` inside a test: the database at
  ``path`` (and any under it) is not checked; the test's other databases still are.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IDENTITY_FILE = "LAMINA"
DATA_FILE = "data.lamina"
LOCK_FILE = "LOCK"
MARKER = "unchecked_db"


@dataclass
class _Recorder:
    """Database directories opened since the last :func:`drain`, and the opt-outs."""

    opened: dict[Path, None] = field(default_factory=dict)  # ordered set
    damaged: dict[Path, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    suspended: int = 0


_recorder = _Recorder()
_installed = False


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(path)).resolve()


def install() -> None:
    """Record every database this process opens from now on (idempotent).

    Wraps ``Database.__init__``; the wrapper calls the original unchanged and records the
    directory only when it returns (an open that raised is not a database left behind).
    """
    global _installed
    if _installed:
        return
    from lamina.database import Database

    original: Callable[..., None] = Database.__init__

    @functools.wraps(original)
    def recording_init(self: Database, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if _recorder.suspended == 0:
            with _recorder.lock:
                _recorder.opened[_resolve(self.path)] = None

    Database.__init__ = recording_init  # type: ignore[method-assign]
    _installed = True


def expect_damaged(path: str | os.PathLike[str], why: str) -> None:
    """Declare that the current test damages the database at ``path`` on purpose.

    The teardown check then skips that database and every database under ``path``; the
    test's other databases are still checked. ``why`` says what the test does to it (it is
    shown nowhere; it documents the opt-out where it is made).
    """
    if not why:
        raise ValueError("expect_damaged() needs the reason the database is damaged")
    with _recorder.lock:
        _recorder.damaged[_resolve(path)] = why


def drain() -> tuple[list[Path], dict[Path, str]]:
    """Take (and forget) the databases recorded and the opt-outs declared since the last
    call: the teardown's view of what the test opened."""
    with _recorder.lock:
        opened, damaged = list(_recorder.opened), dict(_recorder.damaged)
        _recorder.opened.clear()
        _recorder.damaged.clear()
    return opened, damaged


def is_complete_database(path: Path) -> bool:
    """True if ``path`` is a directory holding a finished database creation."""
    return (path / IDENTITY_FILE).is_file() and (path / DATA_FILE).is_file()


def databases_under(root: Path) -> list[Path]:
    """Every directory under ``root`` (``root`` included) holding a ``LAMINA`` file; does
    not follow symbolic links."""
    found = []
    for directory, _dirs, files in os.walk(root):
        if IDENTITY_FILE in files:
            found.append(_resolve(directory))
    return found


def _lock_holders(lock_path: Path) -> set[int]:
    """Pids holding a POSIX or OFD lock on ``lock_path``, from ``/proc/locks`` (-1 for an
    OFD lock); empty if the file or ``/proc/locks`` is missing."""
    try:
        st = lock_path.stat()
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders = set()
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        if len(fields) >= 6 and fields[5] == want:
            holders.add(int(fields[4]))
    return holders


def held_by_another_process(path: Path) -> bool:
    """True if a live process other than this one has the database at ``path`` open."""
    return bool(_lock_holders(path / LOCK_FILE) - {os.getpid()})


def check_database(path: Path) -> list[str]:
    """Open ``path`` read-only and run the checker: its findings, as text (empty if ok).

    The open is not recorded. An error while opening or checking is one finding.
    """
    import lamina

    with _recorder.lock:
        _recorder.suspended += 1
    try:
        with lamina.open(path, create=False, readonly=True) as db:
            report = db.check()
            return [str(f) for f in report.findings]
    except Exception as exc:
        return [f"cannot check: {type(exc).__name__}: {exc}"]
    finally:
        with _recorder.lock:
            _recorder.suspended -= 1


def _covered(path: Path, damaged: Iterable[Path]) -> bool:
    return any(path == d or d in path.parents for d in damaged)


def problems_at_teardown(roots: Iterable[Path]) -> dict[Path, list[str]]:
    """Drain the recorder, add the databases under ``roots``, and check each one that is
    complete, not opted out and not held by another process.

    Returns the findings of each database that failed (empty: all sound).
    """
    opened, damaged = drain()
    candidates: dict[Path, None] = dict.fromkeys(opened)
    for root in roots:
        if root.is_dir():
            candidates.update(dict.fromkeys(databases_under(root)))
    problems: dict[Path, list[str]] = {}
    for path in candidates:
        if _covered(path, damaged) or not is_complete_database(path):
            continue
        if held_by_another_process(path):
            continue
        findings = check_database(path)
        if findings:
            problems[path] = findings
    return problems


#: At most this many findings of one database are shown.
SHOWN_FINDINGS = 20


def format_problems(problems: dict[Path, list[str]]) -> str:
    """A failure message naming each database and its findings (the first
    :data:`SHOWN_FINDINGS` of each)."""
    lines = ["the teardown check found damage in databases this test left behind "
             f"(a test that damages one on purpose: @pytest.mark.{MARKER}(\"why\") or "
             "support.expect_damaged(path, \"why\")):"]
    for path, findings in problems.items():
        lines.append(f"  {path}:")
        lines.extend(f"    {finding}" for finding in findings[:SHOWN_FINDINGS])
        if len(findings) > SHOWN_FINDINGS:
            lines.append(f"    ... and {len(findings) - SHOWN_FINDINGS} more findings")
    return "\n".join(lines)

