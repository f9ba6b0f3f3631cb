"""The one file layer every engine uses, so tests can count and fail file I/O.

All data-path reads, writes, syncs and opens of engine files go through these functions.
``COUNTERS`` counts calls per operation; the backup tests assert that a driver's
``lock()`` performs zero of them. OS errors become :class:`~lamina.errors.StorageError`
naming the path, so "disk full" is one clear line.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from lamina.errors import storage_error

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


def fsync_dir(path: str | Path) -> None:
    """Make a rename or create inside directory ``path`` durable."""
    COUNTERS["fsync_dir"] += 1
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        raise storage_error(exc, "sync directory", path) from exc
    finally:
        os.close(fd)


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


def stat(path: str | Path) -> os.stat_result:
    """``os.stat``; FileNotFoundError passes through."""
    COUNTERS["stat"] += 1
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise storage_error(exc, "stat", path) from exc


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
