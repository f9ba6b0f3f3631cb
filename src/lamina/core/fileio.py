"""The one file layer every engine uses, so tests can count and fail file I/O.

All data-path reads, writes, syncs and opens of engine files go through these functions.
``COUNTERS`` counts calls per operation; the backup tests assert that a driver's
``lock()`` performs zero of them. OS errors become :class:`~lamina.errors.StorageError`
naming the path, so "disk full" is one clear line.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from lamina.errors import StorageError, storage_error

#: Calls made through this module, by operation name ("open", "pread", "pwrite", ...).
COUNTERS: Counter[str] = Counter()


def open_fd(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` with counting and error translation; returns the descriptor."""
    COUNTERS["open"] += 1
    try:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(exc, "open", path) from exc


def close_fd(fd: int, path: object = "") -> None:
    """``os.close`` with counting and error translation (StorageError naming ``path``).

    The descriptor is released even when the close reports an error (Linux semantics), so
    never call it twice for one descriptor; callers that must not raise (clean-up paths)
    suppress StorageError.
    """
    COUNTERS["close"] += 1
    try:
        os.close(fd)
    except OSError as exc:
        raise storage_error(exc, "close", path) from exc


def pread(fd: int, size: int, offset: int, path: object = "") -> bytes:
    """Read up to ``size`` bytes at ``offset``; fewer only at end of file."""
    COUNTERS["pread"] += 1
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int, path: object = "") -> None:
    """Write all of ``data`` at ``offset`` (loops on short writes)."""
    COUNTERS["pwrite"] += 1
    view = memoryview(data)
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    except OSError as exc:
        raise storage_error(exc, "write", path) from exc


def map_readonly(fd: int, size: int, path: object = "") -> mmap.mmap:
    """A read-only shared memory map of the first ``size`` bytes of the file at ``fd``
    (``size`` > 0, at most the file's size); StorageError (e.g. out of address space)
    naming ``path``. The map stays valid after ``fd`` is closed."""
    COUNTERS["mmap"] += 1
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise storage_error(exc, "map", path) from exc


def fsync(fd: int, path: object = "") -> None:
    """``fsync`` the descriptor (data and metadata)."""
    COUNTERS["fsync"] += 1
    try:
        os.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, "sync", path) from exc


def fdatasync(fd: int, path: object = "") -> None:
    """``fdatasync`` where the platform has it, else ``fsync``."""
    COUNTERS["fdatasync"] += 1
    try:
        if hasattr(os, "fdatasync"):
            os.fdatasync(fd)
        else:  # pragma: no cover - macOS
            os.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, "sync", path) from exc


def file_size(fd: int) -> int:
    """Current size of the open file in bytes."""
    COUNTERS["fstat"] += 1
    return os.fstat(fd).st_size


def truncate(fd: int, size: int, path: object = "") -> None:
    """Cut or extend the file to ``size`` bytes."""
    COUNTERS["truncate"] += 1
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise storage_error(exc, "truncate", path) from exc


#: ``posix_fallocate`` errors that mean "not supported here", not "no space".
_NO_FALLOCATE = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def reserve(fd: int, size: int, path: object = "") -> None:
    """Give bytes ``[0, size)`` of the file real blocks, extending it to ``size`` if shorter
    (never shrinking it), so that stores through a memory map of them cannot fault.

    A sparse range that is mapped and written raises SIGBUS on a full disk; this raises a
    StorageError ("disk full") instead. Uses ``posix_fallocate``; where the file system does
    not support it, writes zeros over the whole range, so call it only on a file no other
    process is using (its content afterwards is unspecified).
    """
    COUNTERS["reserve"] += 1
    try:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise
        zeros = bytes(min(size, 1 << 16))
        offset = 0
        while offset < size:
            n = os.pwrite(fd, zeros[: size - offset], offset)
            if n <= 0:  # pragma: no cover - a regular file reports ENOSPC instead
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            offset += n
    except OSError as exc:
        raise storage_error(exc, "reserve space for", path) from exc


def fsync_dir(path: str | Path) -> None:
    """Make a rename or create inside directory ``path`` durable."""
    COUNTERS["fsync_dir"] += 1
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(exc, "sync directory", path) from exc


def rename(src: str | Path, dst: str | Path) -> None:
    """Atomically rename ``src`` over ``dst`` (same file system)."""
    COUNTERS["rename"] += 1
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise storage_error(exc, "rename", src) from exc


def link(src: str | Path, dst: str | Path) -> None:
    """Create hard link ``dst`` to ``src``; FileExistsError passes through."""
    COUNTERS["link"] += 1
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        raise storage_error(exc, "link", dst) from exc


def unlink(path: str | Path, *, missing_ok: bool = True) -> None:
    """Remove ``path`` (a missing file is fine when ``missing_ok``)."""
    COUNTERS["unlink"] += 1
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError as exc:
        raise storage_error(exc, "remove", path) from exc


def mkdir(path: str | Path, mode: int = 0o777, *, parents: bool = False,
          exist_ok: bool = False) -> None:
    """``Path.mkdir`` with counting and error translation. FileExistsError passes through
    (only when not ``exist_ok``: the caller decides what an existing directory means);
    any other OS error is a StorageError naming the directory it could not create."""
    COUNTERS["mkdir"] += 1
    try:
        Path(path).mkdir(mode, parents=parents, exist_ok=exist_ok)
    except FileExistsError as exc:
        if not exist_ok:  # else a non-directory is in the way: an error like any other
            raise
        raise storage_error(exc, "create directory", path) from exc
    except OSError as exc:
        raise storage_error(exc, "create directory", path) from exc


def rmtree(path: str | Path, *, ignore_errors: bool = False) -> None:
    """Remove the directory tree ``path`` (``shutil.rmtree``; a missing tree is fine).

    The first OS error is a StorageError naming the file or directory that could not be
    removed, unless ``ignore_errors`` (best-effort clean-up: remove what can be removed).
    """
    COUNTERS["rmtree"] += 1

    def onexc(_func: object, failed: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError) or ignore_errors:
            return  # removed meanwhile / best effort
        if isinstance(exc, OSError):
            raise storage_error(exc, "remove", failed) from exc
        raise exc  # pragma: no cover - rmtree reports only OS errors

    def onerror(func: object, failed: str, info: tuple[type, BaseException, object]) -> None:
        onexc(func, failed, info[1])

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=onexc)
    else:  # pragma: no cover - Python 3.11
        shutil.rmtree(path, onerror=onerror)


def stat(path: str | Path) -> os.stat_result:
    """``os.stat``; FileNotFoundError passes through."""
    COUNTERS["stat"] += 1
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(exc, "stat", path) from exc


def exists(path: str | Path) -> bool:
    """Whether ``path`` exists, as ``Path.exists`` decides (a missing file or directory
    component, a symlink loop: False); any other OS error is a StorageError."""
    COUNTERS["stat"] += 1
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EBADF):
            return False
        raise storage_error(exc, "stat", path) from exc
    return True


def identity(fd: int, path: object = "") -> tuple[int, int]:
    """``(device, inode)`` of the open file ``fd``: which file it is, even once renamed over."""
    COUNTERS["fstat"] += 1
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise storage_error(exc, "stat", path) from exc
    return st.st_dev, st.st_ino


def listdir(path: str | Path) -> list[str]:
    """The names in directory ``path`` (``os.listdir``)."""
    COUNTERS["listdir"] += 1
    try:
        return os.listdir(path)
    except OSError as exc:
        raise storage_error(exc, "list", path) from exc


def create_new(path: str | Path, mode: int = 0o644) -> int:
    """Create ``path`` for writing, only if no file (or symbolic link) of that name exists;
    returns the descriptor. FileExistsError passes through (the caller must not overwrite,
    nor later remove, a file it did not create); other errors are StorageError."""
    COUNTERS["open"] += 1
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        raise
    except OSError as exc:
        raise storage_error(exc, "create", path) from exc


def atomic_write_file(path: str | Path, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole.

    Writes ``path.tmp``, fsyncs it, renames it over ``path`` and fsyncs the directory.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        pwrite(fd, data, 0, tmp)
        if sync:
            fsync(fd, tmp)
    finally:
        os.close(fd)
    rename(tmp, path)
    if sync:
        fsync_dir(path.parent)


def save_evidence(directory: str | Path, stem: str, suffix: str, data: bytes) -> Path:
    """Keep ``data`` (damaged bytes about to be overwritten) in ``directory`` as
    ``stem + suffix``, durably (:func:`atomic_write_file`), once: a file of that name that
    already holds exactly these bytes is kept as it is; a name holding other bytes makes the
    name take a ``-2``, ``-3``... before ``suffix``. Returns the path. Raises StorageError
    (also when 999 names are taken)."""
    for n in range(1, 1000):
        target = Path(directory) / (stem + ("" if n == 1 else f"-{n}") + suffix)
        if exists(target):
            if _holds_exactly(target, data):
                return target
            continue
        atomic_write_file(target, data, sync=True)
        return target
    raise StorageError(f"too many saved copies of {stem}{suffix} in {directory}")


def _holds_exactly(path: Path, data: bytes) -> bool:
    fd = open_fd(path, os.O_RDONLY)
    try:
        return file_size(fd) == len(data) and pread(fd, len(data), 0, path) == data
    finally:
        close_fd(fd, path)
