"""Where a repository keeps its objects: the storage protocol, and a local directory.

The protocol is shaped after object stores; :class:`LocalStorage` (here) and
:class:`~lamina.repository.s3storage.S3Storage` implement it, and one conformance suite
(tests/repository/test_storage_conformance.py) holds both to it. The repository uses
nothing else (no local paths of objects, no file locks):

* keys are ``/``-separated names of printable ASCII components (no ``.``/``..``, no
  leading dot — a leading dot is reserved for an implementation's temporary objects);
* every put is atomic: readers see the old object or the new one, whole, never a part;
  an existing key is replaced (one atomic swap); a :meth:`Storage.writer` streams an
  object of unknown length and publishes it only on ``commit``;
* ``list`` returns only complete objects (a put in progress is never listed);
* conditional writes: :meth:`Storage.create_if_absent` (exactly one of racing creators
  wins), :meth:`Storage.replace_if` and :meth:`Storage.delete_if` (compare-and-swap on the
  version token :meth:`Storage.read_versioned` returns) — what the lease locks of
  :mod:`lamina.repository.lease` are built on;
* reads: whole (``get_bytes``), ranged (``get_range``), or as an image location
  (``image``: a local path, or an :class:`~lamina.backup.image_reader.ImageSource` read by
  ranged reads) that the image reader seeks in;
* there is no rename: moving data between keys is a put plus a delete.

``staging_dir`` is a local scratch directory (prune writes a synthetic full there before
it is put).

Concurrency: every method is safe to call from several threads and processes; ordering
between processes is the repository lock's job (:mod:`lamina.repository.lock`).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import io
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import xxhash

from lamina.backup.image_reader import ImageLocation, ReadableStream
from lamina.core import fileio
from lamina.errors import (
    AlreadyExistsError,
    NotFoundError,
    StorageError,
    UsageError,
    storage_error,
)

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

    def writer(self, key: str) -> ObjectWriter:
        """A stream that becomes ``key`` on ``commit`` (nothing is visible before, nor
        after ``abort``). Raises StorageError."""
        ...

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """The whole object (at most ``limit`` + 1 bytes are read, so a caller can refuse
        an oversized one). Raises NotFoundError, StorageError."""
        ...

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the object (fewer at its end). Raises
        NotFoundError, StorageError."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable binary stream of the object. Raises NotFoundError,
        StorageError."""
        ...

    def image(self, key: str) -> ImageLocation:
        """Where the image reader finds the object: a local path, or an image source of
        ranged reads. Raises NotFoundError, StorageError."""
        ...

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """Publish ``data`` as ``key`` only if no object is there: True if this call
        created it, False if one exists (of racing callers exactly one gets True).
        Raises StorageError."""
        ...

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, str]:
        """The object (at most ``limit`` + 1 bytes of it, as :meth:`get_bytes`) and a
        version token of the whole object that changes whenever it is replaced. Raises
        NotFoundError, StorageError."""
        ...

    def replace_if(self, key: str, token: str, data: bytes) -> bool:
        """Replace ``key`` by ``data`` only if its version is still ``token``: True if
        replaced, False if it changed or is gone. Raises StorageError."""
        ...

    def delete_if(self, key: str, token: str) -> bool:
        """Delete ``key`` only if its version is still ``token`` (True), else leave it
        (False; also when it is gone). Raises StorageError."""
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

    def remove_stale_temps(self, keep: tuple[str, ...] = ()) -> builtins.list[str]:
        """Remove what dead writers left (temporary files, staging files); only while no
        put is in progress (the caller holds the repository lock exclusively), except
        under the top-level directories ``keep`` (where puts go on regardless: lease
        objects of lock takers that do not hold the lock yet). Returns what was removed."""
        ...

    def check_container(self) -> None:
        """Raise NotFoundError (local: no such directory) or NoSuchBucketError (S3) when
        the repository's container does not exist; AccessDeniedError, StorageError."""
        ...

    def create_container(self) -> None:
        """Create the container (directory, bucket) if missing. Raises StorageError,
        AccessDeniedError."""
        ...


class ObjectWriter(Protocol):
    """A stream that becomes one object (see :meth:`Storage.writer`): ``write`` and
    ``flush`` (the image writer's target protocol), then ``commit`` (publish) or
    ``abort`` (discard; idempotent). Used by one thread."""

    def write(self, data: bytes, /) -> object:
        """Append ``data``."""
        ...

    def flush(self) -> object:
        """Push buffered bytes on (may do nothing)."""
        ...

    def commit(self) -> None:
        """Publish what was written as the key, atomically. Raises StorageError."""
        ...

    def abort(self) -> None:
        """Discard what was written; nothing is published. Never raises."""
        ...


def check_key(key: str) -> list[str]:
    """The components of a valid key. Raises UsageError for anything else (a key can never
    name a path outside the store, a temporary object, or a directory)."""
    parts = key.split("/")
    if not key or not all(_COMPONENT.match(p) for p in parts):
        raise UsageError(f"invalid storage key {key!r}")
    return parts


#: How the names of what writers stage in a storage's staging directory begin (a merge's
#: output and its working directory, a streamed chain combination's working directory).
STAGED_NAME_PREFIXES = ("merge-", ".merge-", ".combine-")

#: The local file serializing compare-and-swap operations of one LocalStorage.
CAS_LOCK = ".cas.lock"


class _LocalWriter:
    """An :class:`ObjectWriter` on a temporary file next to the key (renamed on commit)."""

    def __init__(self, storage: LocalStorage, key: str) -> None:
        self._storage = storage
        self._path = storage._path(key)
        storage._ensure_parent(self._path)
        self._tmp = storage._temp_for(self._path)
        try:
            self._fd: int | None = fileio.create_new(self._tmp)
        except FileExistsError as exc:
            raise storage_error(exc, "create", self._tmp) from exc
        self._offset = 0

    def write(self, data: bytes, /) -> int:
        if self._fd is None:
            raise ValueError("write to a closed writer")
        fileio.pwrite(self._fd, data, self._offset, self._tmp)
        self._offset += len(data)
        return len(data)

    def flush(self) -> None:
        """Nothing: bytes go to the file as written."""

    def commit(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise ValueError("commit of a closed writer")
        try:
            fileio.fsync(fd, self._tmp)
        except BaseException:
            with contextlib.suppress(StorageError):
                fileio.close_fd(fd, self._tmp)
            self._storage._discard(self._tmp)
            raise
        fileio.close_fd(fd, self._tmp)
        self._storage._publish(self._tmp, self._path)

    def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(StorageError):
                fileio.close_fd(fd, self._tmp)
            self._storage._discard(self._tmp)


class LocalStorage:
    """A :class:`Storage` on a local directory: ``key`` is the file ``root/key``.

    Puts write ``.NAME.tmp-XXXX`` in the key's directory, fsync it, rename it over the key
    and fsync the directory, so a crash leaves the old object or the new one. Temporary
    files start with a dot and are never listed; :meth:`remove_stale_temps` removes those a
    dead process left behind. ``create_if_absent`` hard-links a complete temporary file to
    the key (the link fails if the key exists); ``replace_if``/``delete_if`` compare the
    object's content hash (the version token) and swap under an ``flock`` of
    ``root/.cas.lock``, which every conditional change of an existing key takes.
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

    def writer(self, key: str) -> ObjectWriter:
        """A temporary file renamed over the key on commit. See :meth:`Storage.writer`."""
        return _LocalWriter(self, key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """See :meth:`Storage.get_range`."""
        with self.open(key) as f:
            try:
                f.seek(offset)
                return f.read(length)
            except OSError as exc:
                raise storage_error(exc, "read", self._path(key)) from exc

    def image(self, key: str) -> ImageLocation:
        """The object's own file. See :meth:`Storage.image`."""
        return self.local_path(key)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        """See :meth:`Storage.create_if_absent`."""
        path = self._path(key)
        self._ensure_parent(path)
        tmp = self._temp_for(path)
        self._write_temp(tmp, iter((data,)))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise storage_error(exc, "create", path) from exc
        finally:
            self._discard(tmp)
        fileio.fsync_dir(path.parent)
        return True

    def _read_token(self, key: str, limit: int | None) -> tuple[bytes, str]:
        """At most ``limit`` + 1 bytes of the object and the token of all of it (the rest
        is hashed as it is read, never held)."""
        with self.open(key) as f:
            try:
                data = f.read() if limit is None else f.read(limit + 1)
                digest = xxhash.xxh3_128(data)
                size = len(data)
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            except OSError as exc:
                raise storage_error(exc, "read", self._path(key)) from exc
        return data, f"{digest.hexdigest()}-{size}"

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, str]:
        """The token is a hash of the whole content. See :meth:`Storage.read_versioned`."""
        return self._read_token(key, limit)

    @contextlib.contextmanager
    def _cas(self) -> Iterator[None]:
        path = self.root / CAS_LOCK
        fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                raise storage_error(exc, "lock", path) from exc
            yield
        finally:
            with contextlib.suppress(StorageError):
                fileio.close_fd(fd, path)

    def _version(self, key: str) -> str | None:
        try:
            return self._read_token(key, 0)[1]
        except NotFoundError:
            return None

    def replace_if(self, key: str, token: str, data: bytes) -> bool:
        """See :meth:`Storage.replace_if`."""
        with self._cas():
            if self._version(key) != token:
                return False
            self.put_bytes(key, data)
            return True

    def delete_if(self, key: str, token: str) -> bool:
        """See :meth:`Storage.delete_if`."""
        with self._cas():
            if self._version(key) != token:
                return False
            self.delete(key)
            return True

    def check_container(self) -> None:
        """See :meth:`Storage.check_container`."""
        if not self.root.is_dir():
            raise NotFoundError(f"no repository {self.root} (no such directory)")

    def create_container(self) -> None:
        """See :meth:`Storage.create_container`."""
        if self.root.exists() and not self.root.is_dir():
            raise AlreadyExistsError(f"{self.root} exists and is not a directory")
        fileio.mkdir(self.root, parents=True, exist_ok=True)

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

    def remove_stale_temps(self, keep: tuple[str, ...] = ()) -> builtins.list[str]:
        """Remove the staging directory's files and every dot-temporary a put left behind,
        except under the top-level directories ``keep``.

        Only safe when no put or staged write is in progress outside ``keep`` (the caller
        holds the repository lock exclusively). Returns the paths removed.
        """
        removed: builtins.list[str] = []
        staging = self.root / self._staging
        if staging.is_dir():
            # A staging directory linked elsewhere (a bigger disk) is not the repository's
            # own: only what lamina's writers name there is removed, never others' files.
            linked = staging.is_symlink()
            for child in (staging / name for name in fileio.listdir(staging)
                          if not linked or name.startswith(STAGED_NAME_PREFIXES)):
                if child.is_dir() and not child.is_symlink():
                    fileio.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(StorageError):
                        fileio.unlink(child)
                removed.append(str(child))
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d not in self._private and d not in keep]
            for name in filenames:
                if name.startswith(".") and ".tmp-" in name:
                    path = Path(dirpath, name)
                    with contextlib.suppress(StorageError):
                        fileio.unlink(path)
                    removed.append(str(path))
        return removed
