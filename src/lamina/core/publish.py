"""Publishing a result under its final name, crash-safely, and removing what killed
publishers left behind (docs/architecture.md, "Publishing a restore").

Work in progress lives next to its target ``NAME`` under a temporary name that names its
owner, so that a later process can tell a live owner's work from a dead one's leftover:

* ``.NAME.restore-PID-XXXXXXXXXXXX`` a restore's directory while it is built and proven;
* ``.NAME.old-PID-XXXXXXXXXXXX``     the database a ``--force`` restore replaces, parked
  while the new one is renamed into place (same ``PID-XXXX`` token as its restore temp);
* ``.NAME.tmp-PID-XXXXXXXXXXXX``     a backup image file while it is written.

``PID`` is the owner's process id, ``X`` random hex. The owner holds an ``flock`` on the
directory (or the file) from right after creating it until it is published or removed. A
leftover is *dead* when that lock is free and, for the two names created before their lock
is taken (``restore``, ``tmp``), its pid is no live process either: a live owner is never
judged dead (a reused pid merely keeps a leftover until that process ends), and a dead
owner's lock is always free (locks die with their process).

A restore's directory never looks like a database: its identity is kept as
``LAMINA.pending`` until the publish, whose last rename makes it ``LAMINA``.
:func:`publish_directory` is the one routine that puts a restored directory in place; the
states a kill can leave and how :func:`recover` settles them are listed there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lamina.core.failpoints import failpoint
from lamina.core.identity import FILE_NAME as IDENTITY_FILE
from lamina.core.lockfile import claim_unused, release_claim
from lamina.errors import AlreadyExistsError, LockedError, storage_error

log = logging.getLogger("lamina.publish")

#: Kinds of temporary names (the word after ``.NAME.``).
RESTORE = "restore"
OLD = "old"
TMP = "tmp"
#: A restored directory's identity until the publish renames it to ``LAMINA``.
PENDING_IDENTITY = IDENTITY_FILE + ".pending"
#: How long a restore or an open waits for another process's publish to the same place.
PUBLISH_WAIT = 5.0

_TOKEN = re.compile(r"(?:(?P<pid>[0-9]+)-)?(?P<rand>[0-9a-f]{12})")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class TempName:
    """A parsed temporary name: its kind, its owner's pid (None: a name from a build that
    did not record it) and its token (``PID-XXXX``)."""

    kind: str
    pid: int | None
    token: str


def new_token() -> str:
    """A fresh owner token for this process: ``PID-XXXXXXXXXXXX``."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def temp_path(target: Path, kind: str, token: str) -> Path:
    """``.NAME.KIND-TOKEN`` next to ``target``."""
    return target.with_name(f".{target.name}.{kind}-{token}")


def parse_temp(target_name: str, name: str) -> TempName | None:
    """The temporary name ``name`` parsed, if it is one of ``target_name``'s, else None."""
    prefix = f".{target_name}."
    if not name.startswith(prefix):
        return None
    kind, sep, token = name[len(prefix):].partition("-")
    if not sep or kind not in (RESTORE, OLD, TMP):
        return None
    m = _TOKEN.fullmatch(token)
    if m is None:
        return None
    pid = m.group("pid")
    return TempName(kind, None if pid is None else int(pid), token)


def parse_any_temp(path: Path) -> TempName | None:
    """``path``'s name parsed as a temporary name of whatever target it is for."""
    m = re.fullmatch(r"\.(?P<target>.+)\.(?:restore|old|tmp)-[0-9a-f-]+", path.name)
    return None if m is None else parse_temp(m.group("target"), path.name)


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists (of any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(path: Path) -> int | None:
    """Open ``path`` (a directory or a file) and take its ``flock`` exclusively without
    waiting: the descriptor, or None if another process holds it or the path is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise storage_error(exc, "open", path) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:  # still the object we opened (not replaced by a rename meanwhile)?
        same = os.stat(path, follow_symlinks=False)
        now = os.fstat(fd)
        if (same.st_dev, same.st_ino) == (now.st_dev, now.st_ino):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, "sync directory", path) from exc
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass(frozen=True, slots=True)
class Cleaned:
    """Something a killed process left behind that this call settled: ``path`` (the
    leftover), ``pid`` (its dead owner, if recorded) and what was done with it."""

    path: Path
    pid: int | None
    action: str

    def __str__(self) -> str:
        owner = "a killed process" if self.pid is None else f"killed process {self.pid}"
        return f"{self.action} {self.path} (left behind by {owner})"


class OwnedTemp:
    """A temporary directory next to a target, created and owned (``flock``) by this
    process. :meth:`release` once: after it is published or removed."""

    def __init__(self, path: Path, token: str, fd: int) -> None:
        self.path = path
        self.token = token
        #: True once :func:`publish_directory` renamed it into place (``path`` is then the
        #: destination, which :meth:`remove` never removes).
        self.published = False
        self._fd: int | None = fd

    @classmethod
    def create_dir(cls, target: Path, kind: str = RESTORE) -> OwnedTemp:
        """Create ``.NAME.KIND-PID-XXXX`` next to ``target`` and lock it."""
        token = new_token()
        path = temp_path(target, kind, token)
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise storage_error(exc, "create directory", path) from exc
        fd = _lock(path)
        if fd is None:  # nobody else knows the name; only a vanished directory gets here
            raise storage_error(OSError(f"{path} vanished"), "lock", path)
        return cls(path, token, fd)

    def remove(self) -> None:
        """Remove the directory (still owned, not published), then release it."""
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let go of the ownership lock (idempotent)."""
        fd, self._fd = self._fd, None
        _close(fd)


def lock_file(fd: int) -> None:
    """Take the ownership ``flock`` on a temporary file just created (``fd`` open)."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


# ---------------------------------------------------------------------- leftovers
def _siblings(target: Path) -> list[tuple[Path, TempName]]:
    try:
        names = os.listdir(target.parent)
    except (FileNotFoundError, PermissionError):  # nothing there that we could settle
        return []
    except OSError as exc:
        raise storage_error(exc, "list", target.parent) from exc
    found = []
    for name in sorted(names):
        parsed = parse_temp(target.name, name)
        if parsed is not None:
            found.append((target.parent / name, parsed))
    return found


def _claim_dead(path: Path, temp: TempName) -> int | None:
    """The ownership lock of the leftover ``path`` if its owner is dead, else None."""
    # A restore temp or an image temp exists for a moment before its owner locks it: a
    # live pid (or none recorded) is never taken for dead.
    if temp.kind in (RESTORE, TMP) and (temp.pid is None or pid_alive(temp.pid)):
        return None
    return _lock(path)


def clean_leftovers(target: Path, kinds: Iterable[str]) -> list[Cleaned]:
    """Remove the leftovers of dead owners among ``target``'s temporary names of
    ``kinds`` (parked ``old`` directories only once a database is published at ``target``:
    before, they are :func:`recover`'s). Returns what was removed; never a live owner's."""
    kinds = set(kinds)
    if OLD in kinds and not (target / IDENTITY_FILE).exists():
        kinds.discard(OLD)  # not replaced by a published database (yet): keep the old one
    cleaned = []
    for path, temp in _siblings(target):
        if temp.kind not in kinds:
            continue
        fd = _claim_dead(path, temp)
        if fd is None:
            continue
        try:
            _remove(path)
        finally:
            _close(fd)
        cleaned.append(Cleaned(path, temp.pid, "removed"))
        log.info("%s", cleaned[-1])
    return cleaned


# ---------------------------------------------------------------------- publish
def _release(held: list[tuple[int, bool]]) -> None:
    """Let go of what :func:`_hold_destination` took, last first."""
    while held:
        fd, claim = held.pop()
        if claim:
            release_claim(fd)
        else:
            _close(fd)


def _hold_destination(dest: Path, fds: list[tuple[int, bool]]) -> None:
    """Check that ``dest`` may be replaced and hold it so: its directory's ``flock`` (no
    creation or other publish under way) and, for a database, its lock file's alive byte
    exclusively (no process has it open, and none opens it until we let go).

    Raises AlreadyExistsError (a symbolic link, a file, a non-empty directory without a
    ``LAMINA`` identity), LockedError (in use), StorageError."""
    rule = "--force replaces only a Lamina database or an empty directory"
    if dest.is_symlink():
        raise AlreadyExistsError(f"{dest} is a symbolic link, not a Lamina database ({rule})")
    if not dest.is_dir():
        raise AlreadyExistsError(f"{dest} is a file, not a Lamina database ({rule})")
    fd = _lock(dest)
    if fd is None:
        raise LockedError(f"{dest} is being created or restored by another process")
    fds.append((fd, False))
    if (dest / IDENTITY_FILE).is_file():
        fds.append((claim_unused(dest, f"database {dest}"), True))
        return
    try:
        empty = not any(os.scandir(dest))
    except OSError as exc:
        raise storage_error(exc, "list", dest) from exc
    if not empty:
        raise AlreadyExistsError(f"{dest} is a non-empty directory that is not a Lamina "
                                 f"database (no {IDENTITY_FILE}; {rule})")


def check_destination(dest: Path, *, replace: bool) -> None:
    """Fail early (before any work) if ``dest`` could not be published to now: it exists
    and ``replace`` is False (AlreadyExistsError), or it may not or cannot be replaced
    (see :func:`publish_directory`). Holds nothing afterwards."""
    if not os.path.lexists(dest):
        return
    if not replace:
        raise AlreadyExistsError(f"{dest} exists (use --force to replace it)")
    held: list[tuple[int, bool]] = []
    try:
        _hold_destination(dest, held)
    finally:
        _release(held)


def publish_directory(temp: OwnedTemp, dest: Path, *, replace: bool) -> None:
    """Put the finished directory ``temp`` in place as ``dest``; crash-safe at every step.

    ``dest`` must not exist unless ``replace``; then it must be a Lamina database that no
    process has open (held so until the end: openers wait) or an empty directory. The new
    directory's lock file (if any) is held too, so nobody opens it before its identity is
    in place. Steps, the failpoint after each, and what a kill there leaves (``T`` is the
    temp's token; :func:`recover` and :func:`clean_leftovers` settle it):

    1. ``restore.publish_staged``: nothing renamed: ``dest`` is the old database (or
       absent); ``.NAME.restore-T`` (identity as ``LAMINA.pending``) is a dead temp.
    2. rename ``dest`` to ``.NAME.old-T``, ``restore.publish_parked``: ``dest`` is absent;
       undone by putting ``.NAME.old-T`` back (the old database).
    3. rename the temp to ``dest``, ``restore.publish_renamed``: ``dest`` is the new
       database with its identity still ``LAMINA.pending``; finished by renaming that to
       ``LAMINA`` (the new database); ``.NAME.old-T`` is then removed.
    4. rename ``LAMINA.pending`` to ``LAMINA``, ``restore.publish_identity``: published;
       ``.NAME.old-T`` is removed by the next restore.
    5. remove ``.NAME.old-T``.

    Raises AlreadyExistsError, LockedError (``dest`` in use, naming a pid), StorageError;
    on an error before step 3 ``dest`` is as it was.
    """
    parent = dest.parent
    held: list[tuple[int, bool]] = []
    new_held: int | None = None
    old: Path | None = None
    try:
        if os.path.lexists(dest):
            if not replace:
                raise AlreadyExistsError(f"{dest} exists (use --force to replace it)")
            _hold_destination(dest, held)
        if (temp.path / "LOCK").exists():
            new_held = claim_unused(temp.path, f"restored directory {temp.path}")
        failpoint("restore.publish_staged")
        try:
            if held:
                old = temp_path(dest, OLD, temp.token)
                os.rename(dest, old)
            try:
                if old is not None:
                    _fsync_dir(parent)
                    failpoint("restore.publish_parked")
                os.rename(temp.path, dest)
            except BaseException:
                if old is not None and not os.path.lexists(dest):  # put the old one back
                    with contextlib.suppress(OSError):
                        os.rename(old, dest)
                        old = None
                raise
            temp.path = dest  # the ownership lock goes with the directory
            temp.published = True
            _fsync_dir(parent)
            failpoint("restore.publish_renamed")
            pending = dest / PENDING_IDENTITY
            if pending.exists():
                os.rename(pending, dest / IDENTITY_FILE)
                _fsync_dir(dest)
            failpoint("restore.publish_identity")
        except OSError as exc:
            raise storage_error(exc, "publish restored directory", dest) from exc
        if new_held is not None:  # the new database has its identity: openers may come
            release_claim(new_held)
            new_held = None
        if old is not None:
            _remove(old)
    finally:
        if new_held is not None:
            release_claim(new_held)
        _release(held)


def recover(dest: Path, *, timeout: float = PUBLISH_WAIT) -> list[Cleaned]:
    """Settle a publish to ``dest`` that a killed process left half done (see
    :func:`publish_directory` for the states): ``dest`` absent beside a parked
    ``.NAME.old-*`` -> the old database is put back; ``dest`` holding ``LAMINA.pending``
    and no ``LAMINA`` -> the identity is renamed into place. A live publisher's half-done
    state is waited for (``timeout`` seconds, then LockedError). Cheap when there is
    nothing to do: one ``stat`` when ``dest`` has its identity. Returns what was done.
    """
    deadline = time.monotonic() + timeout
    done: list[Cleaned] = []
    delay = 0.001
    while not _recover_once(dest, done):
        if time.monotonic() >= deadline:
            raise LockedError(f"{dest} is being replaced by a restore in another process "
                              f"(waited {timeout:g}s)")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return done


def _recover_once(dest: Path, done: list[Cleaned]) -> bool:
    """One look: True when settled (or nothing to do), False while a live owner works."""
    if (dest / IDENTITY_FILE).exists() or dest.is_symlink():
        return True
    if dest.is_dir():
        if not (dest / PENDING_IDENTITY).exists() or parse_any_temp(dest) is not None:
            return True  # not a half-published restore (a temp is never finished in place)
        fd = _lock(dest)
        if fd is None:
            return False  # its publisher is between its last two renames
        try:
            if (dest / PENDING_IDENTITY).exists() and not (dest / IDENTITY_FILE).exists():
                os.rename(dest / PENDING_IDENTITY, dest / IDENTITY_FILE)
                _fsync_dir(dest)
                done.append(Cleaned(dest, None, "finished publishing the restored database"))
                log.info("%s", done[-1])
        except OSError as exc:
            raise storage_error(exc, "finish publishing", dest) from exc
        finally:
            _close(fd)
        return True
    if os.path.lexists(dest):
        return True  # a file: not ours to settle
    olds = []
    for path, temp in _siblings(dest):
        if temp.kind == OLD:
            try:
                olds.append((os.stat(path, follow_symlinks=False).st_ctime_ns, path, temp))
            except FileNotFoundError:
                continue
    if not olds:
        return True
    _ctime, path, temp = max(olds)  # the last one parked
    fd = _lock(path)
    if fd is None:
        return False  # its publisher is between its first two renames
    try:
        os.rename(path, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        raise storage_error(exc, "put back the database replaced by a killed restore",
                            dest) from exc
    finally:
        _close(fd)
    done.append(Cleaned(path, temp.pid, f"put back as {dest} the database parked at"))
    log.info("%s", done[-1])
    return True


__all__ = [
    "OLD",
    "PENDING_IDENTITY",
    "PUBLISH_WAIT",
    "RESTORE",
    "TMP",
    "Cleaned",
    "OwnedTemp",
    "TempName",
    "check_destination",
    "clean_leftovers",
    "lock_file",
    "new_token",
    "parse_any_temp",
    "parse_temp",
    "pid_alive",
    "publish_directory",
    "recover",
    "temp_path",
]
