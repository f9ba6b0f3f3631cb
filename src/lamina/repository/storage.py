"""Where a repository keeps its objects: a small storage protocol, and a local directory.

The protocol is shaped after object stores (S3 and friends) so that one can be added
without touching the repository logic:

* keys are ``/``-separated names of printable ASCII components (no ``.``/``..``, no
  leading dot — a leading dot is reserved for an implementation's temporary objects);
* ``put_*`` is atomic: readers see the old object or the new one, whole, never a part;
  an existing key is replaced (one atomic swap);
* ``list`` returns only complete objects (a put in progress is never listed);
* there is no rename: moving data between keys is a put plus a delete.

Reading an image needs a seekable local file (the image reader seeks to the footer), so
``local_path`` returns one: the object itself here, a cached download for a remote store.
``staging_dir`` is a local directory for files being written before they are ``put`` (on
the same file system as the objects here, so a put is a rename, not a copy).

Concurrency: every method is safe to call from several threads and processes; ordering
between processes is the repository lock's job (:mod:`lamina.repository.lock`).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from lamina.backup.image_reader import ReadableStream
from lamina.core import fileio
from lamina.errors import NotFoundError, StorageError, UsageError, storage_error

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}\Z")
_COPY_BLOCK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """A stored object: key, size in bytes, and a change stamp (mtime in ns; an object
    store's last-modified time) that differs after the object is replaced."""

    key: str
    size: int
    mtime_ns: int


def _blocks(stream: ReadableStream) -> Iterator[bytes]:
    """What ``stream`` yields, in blocks, until it reports end (empty or None)."""
    while block := stream.read(_COPY_BLOCK):
        yield block


class Storage(Protocol):
    """What a repository needs from the place that stores its objects (see module doc)."""

    @property
    def url(self) -> str:
        """Where the objects are, for messages (a path, or ``s3://bucket/prefix``)."""
        ...

    def put_file(self, key: str, src: Path) -> None:
        """Publish the local file ``src`` as ``key`` atomically; ``src`` is consumed
        (moved or deleted). Raises StorageError."""
        ...

    def put_stream(self, key: str, stream: ReadableStream) -> None:
        """Publish everything ``stream`` yields as ``key`` atomically (nothing is visible
        if reading fails). Raises StorageError."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """See :meth:`Storage.put_bytes`."""
        self.put_stream(key, io.BytesIO(data))

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """The whole object (at most ``limit`` + 1 bytes are read, so a caller can refuse
        an oversized one). Raises NotFoundError, StorageError."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object. Raises NotFoundError, StorageError."""
        ...

    def local_path(self, key: str) -> Path:
        """A seekable local file holding the object, valid while the object exists.
        Raises NotFoundError, StorageError."""
        ...

    def list(self, prefix: str = "") -> list[ObjectStat]:
        """Every complete object whose key starts with ``prefix``, sorted by key."""
        ...

    def stat(self, key: str) -> ObjectStat:
        """Size and change stamp of ``key``. Raises NotFoundError, StorageError."""
        ...

    def exists(self, key: str) -> bool:
        """True if ``key`` is a complete object."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key`` (a missing key is fine: deletes are idempotent)."""
        ...

    def staging_dir(self) -> Path:
        """A local directory for files to be ``put`` later (created on demand)."""
        ...


def check_key(key: str) -> list[str]:
    """The components of a valid key. Raises UsageError for anything else (a key can never
    name a path outside the store, a temporary object, or a directory)."""
    parts = key.split("/")
    if not key or not all(_COMPONENT.match(p) for p in parts):
        raise UsageError(f"invalid storage key {key!r}")
    return parts


class LocalStorage:
    """A :class:`Storage` on a local directory: ``key`` is the file ``root/key``.

    Puts write ``.NAME.tmp-XXXX`` in the key's directory, fsync it, rename it over the key
    and fsync the directory, so a crash leaves the old object or the new one. Temporary
    files start with a dot and are never listed; :meth:`remove_stale_temps` removes those a
    dead process left behind.
    """

    def __init__(self, root: str | os.PathLike[str], *, staging: str = "tmp",
                 private: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self._staging = staging
        # Top-level directories that hold local state, not objects: never listed.
        self._private = frozenset((staging, *private))

    @property
    def url(self) -> str:
        """The directory path."""
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key))

    def _temp_for(self, path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")

    def _ensure_parent(self, path: Path) -> None:
        fileio.mkdir(path.parent, parents=True, exist_ok=True)

    @staticmethod
    def _discard(tmp: Path) -> None:
        """Best-effort removal of a temporary file of ours (clean-up must not mask the
        error that caused it; a leftover is removed by :meth:`remove_stale_temps`)."""
        with contextlib.suppress(StorageError):
            fileio.unlink(tmp)

    def _publish(self, tmp: Path, path: Path) -> None:
        try:
            fileio.rename(tmp, path)
        except StorageError:
            self._discard(tmp)
            raise
        fileio.fsync_dir(path.parent)

    def _write_temp(self, tmp: Path, blocks: Iterator[bytes]) -> None:
        """Create ``tmp`` (a fresh name), write ``blocks`` to it and fsync it; on any error
        (StorageError naming ``tmp``, or the source's own) nothing of it is left behind."""
        try:
            fd = fileio.create_new(tmp)
        except FileExistsError as exc:  # not ours: never write or remove it
            raise storage_error(exc, "create", tmp) from exc
        try:
            try:
                offset = 0
                for block in blocks:
                    fileio.pwrite(fd, block, offset, tmp)
                    offset += len(block)
                fileio.fsync(fd, tmp)
            except BaseException:
                with contextlib.suppress(StorageError):
                    fileio.close_fd(fd, tmp)
                raise
            fileio.close_fd(fd, tmp)
        except OSError as exc:  # reading the source failed
            self._discard(tmp)
            raise storage_error(exc, "write", tmp) from exc
        except BaseException:
            self._discard(tmp)
            raise

    def put_file(self, key: str, src: Path) -> None:
        """Rename ``src`` over the key when on the same file system (after an fsync),
        else copy it into a temporary file first. See :meth:`Storage.put_file`."""
        path = self._path(key)
        self._ensure_parent(path)
        try:
            fd = fileio.open_fd(src, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"no file {src} to store") from None
        try:
            fileio.fsync(fd, src)
        finally:
            fileio.close_fd(fd, src)
        try:
            fileio.rename(src, path)
        except StorageError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.EXDEV):
                raise
            # Another file system: copy instead.
            try:
                f = open(src, "rb")  # noqa: SIM115 - closed by the with below
            except OSError as open_exc:
                raise storage_error(open_exc, "open", src) from open_exc
            with f:
                self.put_stream(key, f)
            with contextlib.suppress(StorageError):
                fileio.unlink(src)
            return
        fileio.fsync_dir(path.parent)

    def put_stream(self, key: str, stream: ReadableStream) -> None:
        """See :meth:`Storage.put_stream`."""
        path = self._path(key)
        self._ensure_parent(path)
        tmp = self._temp_for(path)
        self._write_temp(tmp, _blocks(stream))
        self._publish(tmp, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        """See :meth:`Storage.put_bytes`."""
        path = self._path(key)
        self._ensure_parent(path)
        tmp = self._temp_for(path)
        self._write_temp(tmp, iter((data,)))
        self._publish(tmp, path)

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """See :meth:`Storage.get_bytes`."""
        with self.open(key) as f:
            try:
                return f.read() if limit is None else f.read(limit + 1)
            except OSError as exc:
                raise storage_error(exc, "read", self._path(key)) from exc

    def open(self, key: str) -> BinaryIO:
        """See :meth:`Storage.open`."""
        path = self._path(key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"no object {key} in {self.root}") from None
        except OSError as exc:
            raise storage_error(exc, "open", path) from exc

    def local_path(self, key: str) -> Path:
        """The object's own file. See :meth:`Storage.local_path`."""
        path = self._path(key)
        if not path.is_file():
            raise NotFoundError(f"no object {key} in {self.root}")
        return path

    def list(self, prefix: str = "") -> list[ObjectStat]:
        """Regular files under the prefix's directory, skipping dot-files (temporaries).
        See :meth:`Storage.list`."""
        directory, _, _ = prefix.rpartition("/")
        base = self.root.joinpath(*check_key(directory)) if directory else self.root
        found: list[ObjectStat] = []
        try:
            walker = list(os.walk(base))
        except OSError as exc:  # pragma: no cover - os.walk reports errors via onerror
            raise storage_error(exc, "list", base) from exc
        for dirpath, dirnames, filenames in walker:
            top = dirpath == str(self.root)
            dirnames[:] = [d for d in dirnames
                           if not d.startswith(".") and not (top and d in self._private)]
            rel_dir = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = "/".join((*rel_dir.parts, name))
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                except FileNotFoundError:  # deleted while listing
                    continue
                except OSError as exc:
                    raise storage_error(exc, "stat", os.path.join(dirpath, name)) from exc
                if os.path.isfile(os.path.join(dirpath, name)):
                    found.append(ObjectStat(key, st.st_size, st.st_mtime_ns))
        return sorted(found, key=lambda s: s.key)

    def stat(self, key: str) -> ObjectStat:
        """See :meth:`Storage.stat`."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"no object {key} in {self.root}") from None
        except OSError as exc:
            raise storage_error(exc, "stat", path) from exc
        return ObjectStat(key, st.st_size, st.st_mtime_ns)

    def exists(self, key: str) -> bool:
        """See :meth:`Storage.exists`."""
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        """Unlink and fsync the directory. See :meth:`Storage.delete`."""
        path = self._path(key)
        try:
            fileio.unlink(path, missing_ok=False)
        except FileNotFoundError:
            return
        fileio.fsync_dir(path.parent)

    def staging_dir(self) -> Path:
        """``root/tmp`` (same file system as the objects). See :meth:`Storage.staging_dir`."""
        path = self.root / self._staging
        fileio.mkdir(path, exist_ok=True)
        return path

    def remove_stale_temps(self) -> builtins.list[Path]:
        """Remove the staging directory's files and every dot-temporary a put left behind.

        Only safe when no put or staged write is in progress (the caller holds the
        repository lock exclusively). Returns the paths removed.
        """
        removed: builtins.list[Path] = []
        staging = self.root / self._staging
        if staging.is_dir():
            for child in (staging / name for name in fileio.listdir(staging)):
                if child.is_dir() and not child.is_symlink():
                    fileio.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(StorageError):
                        fileio.unlink(child)
                removed.append(child)
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d not in self._private]
            for name in filenames:
                if name.startswith(".") and ".tmp-" in name:
                    path = Path(dirpath, name)
                    with contextlib.suppress(StorageError):
                        fileio.unlink(path)
                    removed.append(path)
        return removed
