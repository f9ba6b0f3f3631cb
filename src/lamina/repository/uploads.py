"""Resumable uploads: an object written in numbered parts that survive the writer's death.

The protocol is an object store's multipart upload, reduced to what resuming a backup
needs (docs/format.md, "Upload staging"):

* an upload is named by a deterministic ``name`` (a backup's image id), so a later process
  finds it again without any state of its own;
* every part has the upload's fixed ``part_size`` except the last, which may be shorter;
  parts are numbered from 1 and part *n* holds bytes ``[(n-1)*part_size, n*part_size)``;
* :meth:`Upload.parts_present` tells which parts are stored, with each part's size and
  checksum (:meth:`Upload.checksum` computes the same kind of checksum of local bytes), so
  a writer regenerating the same bytes uploads only the parts that are missing;
* :meth:`Upload.put_part` stores a part durably, or not at all (a part is never seen
  half-written); :meth:`Upload.complete` publishes parts 1..N as one object at a key,
  atomically, and removes the upload; :meth:`Upload.abort` removes it.

:class:`LocalUploads` implements it on a local repository directory; an object store maps
it onto its multipart calls (create / list uploads / list parts / upload part /
complete / abort). :class:`PartWriter` is the writable stream a backup image is written to.

Concurrency: one writer per upload at a time (the durable pin of the backup that owns it
says which one); listing and aborting are safe beside writers of other uploads.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash

from lamina.core import fileio
from lamina.core.failpoints import failpoint
from lamina.errors import CorruptionError, NotFoundError, StorageError, UsageError, storage_error
from lamina.repository.storage import LocalStorage, check_key

#: Default part size: 8 MiB (S3 allows 5 MiB..5 GiB for every part but the last).
DEFAULT_PART_SIZE = 8 << 20
#: Smallest and largest part size accepted (tests use small parts; 10,000 parts of the
#: largest hold 5 TiB).
MIN_PART_SIZE = 4096
MAX_PART_SIZE = 512 << 20
#: Most parts one upload may have (an object store's limit).
MAX_PARTS = 10_000

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

#: Local layout: ``uploads/<name>/`` holds these three files.
INFO_FILE = "UPLOAD"
DATA_FILE = "data"
PARTS_FILE = "parts"
INFO_MAGIC = "LAMINA-UPLOAD"
INFO_VERSION = 1
MAX_INFO_SIZE = 64 * 1024
#: A part record in ``parts``: part number u32, size u32, xxh3_128 of the part[16],
#: xxh3_64 of the 24 bytes before it u64.
PART_RECORD = struct.Struct("<II16sQ")
_PART_BODY = struct.Struct("<II16s")


@dataclass(frozen=True, slots=True)
class PartInfo:
    """A stored part: its size and checksum (the store's kind, see Upload.checksum)."""

    size: int
    checksum: str


@dataclass(frozen=True, slots=True)
class UploadInfo:
    """An upload in progress: its name, part size, creation time and the caller's info."""

    name: str
    part_size: int
    created_ns: int
    info: dict[str, Any]


def _is_image_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


def check_name(name: str) -> str:
    """``name`` if it is a valid upload name (a key component); else UsageError."""
    if not _NAME.match(name):
        raise UsageError(f"invalid upload name {name!r}")
    return name


def info_document(name: str, part_size: int, info: Mapping[str, Any],
                  created_ns: int | None = None) -> bytes:
    """The ``UPLOAD`` document of an upload (canonical JSON: magic, version, name, part
    size, creation time — now unless ``created_ns`` —, the caller's info). Pure but for
    the clock."""
    doc = {"magic": INFO_MAGIC, "version": INFO_VERSION, "name": name,
           "part_size": part_size,
           "created_ns": time.time_ns() if created_ns is None else created_ns,
           "info": dict(info)}
    return json.dumps(doc, sort_keys=True).encode()


def parse_info(raw: bytes, name: str, where: object) -> UploadInfo:
    """The upload ``name`` that the ``UPLOAD`` document ``raw`` (read from ``where``, at
    most MAX_INFO_SIZE + 1 bytes) describes: magic, then version, then fields checked.
    Raises CorruptionError."""
    try:
        doc = json.loads(raw)
        if doc["magic"] != INFO_MAGIC:
            raise ValueError("bad magic")
        if doc["version"] > INFO_VERSION:
            raise ValueError(f"version {doc['version']} from the future")
        part_size = check_part_size(int(doc["part_size"]))
        info = UploadInfo(str(doc["name"]), part_size, int(doc["created_ns"]),
                          dict(doc["info"]))
    except (ValueError, KeyError, TypeError, UsageError) as exc:
        raise CorruptionError(f"upload info: {exc}", path=where) from None
    if info.name != name or len(raw) > MAX_INFO_SIZE:
        raise CorruptionError("upload info names another upload", path=where)
    return info


def check_part_size(part_size: int) -> int:
    """``part_size`` if within bounds; else UsageError."""
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise UsageError(f"part size must be {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes, "
                         f"not {part_size}")
    return part_size


class Upload(Protocol):
    """One resumable upload (see the module doc)."""

    name: str
    part_size: int

    def checksum(self, data: bytes) -> str:
        """The checksum this store records for a part holding ``data``. Pure."""
        ...

    def parts_present(self) -> dict[int, PartInfo]:
        """Every stored part by number. Raises StorageError."""
        ...

    def put_part(self, number: int, data: bytes) -> PartInfo:
        """Store part ``number`` (1-based), replacing an earlier one; once present
        (listed by :meth:`parts_present`) its bytes are durable. Raises
        UsageError (a bad number or size), StorageError."""
        ...

    def complete(self, key: str, count: int) -> None:
        """Publish parts 1..``count`` as the object ``key`` (atomic: whole or not at all)
        and remove the upload. Raises CorruptionError (a part missing or of a wrong
        size), StorageError."""
        ...

    def abort(self) -> None:
        """Remove the upload and its parts (idempotent). Raises StorageError."""
        ...


class UploadStore(Protocol):
    """Where a storage keeps its uploads. ``concurrency``: how many parts a writer should
    store at once (1 for a local directory: a part is a pwrite + fdatasync)."""

    concurrency: int

    def create(self, name: str, part_size: int, info: Mapping[str, Any]) -> Upload:
        """Start upload ``name`` (an existing one of that name is replaced). Raises
        UsageError, StorageError."""
        ...

    def open(self, name: str) -> Upload:
        """The existing upload ``name``. Raises NotFoundError, CorruptionError,
        StorageError."""
        ...

    def list(self) -> list[UploadInfo]:
        """Every upload in progress (a damaged one is skipped)."""
        ...

    def entries(self) -> builtins.list[tuple[str, UploadInfo | None]]:
        """Every upload's name with its description (None: missing or damaged, so it
        cannot be resumed). Raises StorageError."""
        ...

    def set_info(self, name: str, info: Mapping[str, Any]) -> None:
        """Replace the caller's info of upload ``name`` (its description is rewritten
        atomically; name, part size and creation time stay). Raises NotFoundError,
        CorruptionError, StorageError."""
        ...

    def remove(self, name: str) -> None:
        """Remove upload ``name`` whole, even one whose description is damaged
        (idempotent). Raises StorageError."""
        ...


class LocalUpload:
    """An upload in the directory ``uploads/<name>/`` of a local repository.

    Part *n* is written at its offset of ``data`` and fdatasynced, then its record is
    appended to ``parts`` (not synced: the record never outlives its bytes, and a lost
    record only makes the part be stored again): a part is present only once its record
    is, and a torn last record (a crash mid-append) is ignored. :meth:`complete` truncates
    ``data`` to the parts' total, fsyncs it and renames it onto the key.
    """

    def __init__(self, store: LocalUploads, name: str, part_size: int) -> None:
        self.store = store
        self.name = name
        self.part_size = part_size
        self.directory = store.root / name

    def checksum(self, data: bytes) -> str:
        """xxh3_128 of ``data``, hex."""
        return xxhash.xxh3_128_hexdigest(data)

    def parts_present(self) -> dict[int, PartInfo]:
        """See :meth:`Upload.parts_present`; records that fail their check end the log,
        and a part whose bytes in ``data`` no longer match its record (damaged after it
        was stored) is absent (a resume stores it again). Reads every recorded part."""
        records = self._records()
        if not records:
            return records
        path = self.directory / DATA_FILE
        found: dict[int, PartInfo] = {}
        try:
            with open(path, "rb") as f:
                for number, part in sorted(records.items()):
                    f.seek((number - 1) * self.part_size)
                    data = f.read(part.size)
                    if len(data) == part.size and self.checksum(data) == part.checksum:
                        found[number] = part
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise storage_error(exc, "read", path) from exc
        return found

    def _records(self) -> dict[int, PartInfo]:
        """The parts the log records (their bytes unread)."""
        path = self.directory / PARTS_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise storage_error(exc, "read", path) from exc
        found: dict[int, PartInfo] = {}
        for at in range(0, len(raw) - PART_RECORD.size + 1, PART_RECORD.size):
            number, size, digest, check = PART_RECORD.unpack_from(raw, at)
            if xxhash.xxh3_64_intdigest(raw[at:at + _PART_BODY.size]) != check:
                break  # a torn append: nothing after it was acknowledged
            if 1 <= number <= MAX_PARTS and 0 < size <= self.part_size:
                found[number] = PartInfo(size, digest.hex())
        return found

    def put_part(self, number: int, data: bytes) -> PartInfo:
        """See :meth:`Upload.put_part`."""
        if not 1 <= number <= MAX_PARTS:
            raise UsageError(f"part number must be 1..{MAX_PARTS}, not {number}")
        if not 0 < len(data) <= self.part_size:
            raise UsageError(f"part of {len(data)} bytes in an upload of "
                             f"{self.part_size}-byte parts")
        data_path = self.directory / DATA_FILE
        fd = fileio.open_fd(data_path, os.O_WRONLY | os.O_CREAT)
        try:
            offset = (number - 1) * self.part_size
            fileio.pwrite(fd, data, offset, data_path)
            fileio.fdatasync(fd, data_path)
            if hasattr(os, "posix_fadvise"):  # never read back: keep the db's pages cached
                os.posix_fadvise(fd, offset, len(data), os.POSIX_FADV_DONTNEED)
        finally:
            fileio.close_fd(fd, data_path)
        digest = xxhash.xxh3_128_digest(data)
        body = _PART_BODY.pack(number, len(data), digest)
        record = body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))
        log_path = self.directory / PARTS_FILE
        fd = fileio.open_fd(log_path, os.O_WRONLY | os.O_CREAT)
        try:
            end = fileio.file_size(fd)
            # A torn record left by a crash is cut off first, so ours is read after it.
            end -= end % PART_RECORD.size
            fileio.truncate(fd, end, log_path)
            # No sync: the part's bytes are durable first, so a record that a power loss
            # takes away only means the part is stored again by the resume.
            fileio.pwrite(fd, record, end, log_path)
        finally:
            fileio.close_fd(fd, log_path)
        failpoint("backup.upload_part_stored")
        return PartInfo(len(data), digest.hex())

    def complete(self, key: str, count: int) -> None:
        """See :meth:`Upload.complete`."""
        present = self._records()  # this writer's parts, or ones a resume checked
        total = 0
        for number in range(1, count + 1):
            part = present.get(number)
            if part is None or (number < count and part.size != self.part_size):
                raise CorruptionError(f"upload {self.name}: part {number} of {count} is "
                                      "missing or short", path=self.directory)
            total += part.size
        data_path = self.directory / DATA_FILE
        target = self.store.storage.root.joinpath(*check_key(key))
        fileio.mkdir(target.parent, parents=True, exist_ok=True)
        fd = fileio.open_fd(data_path, os.O_WRONLY)
        try:
            fileio.truncate(fd, total, data_path)
            fileio.fsync(fd, data_path)
        finally:
            fileio.close_fd(fd, data_path)
        fileio.rename(data_path, target)
        fileio.fsync_dir(target.parent)
        self.abort()

    def abort(self) -> None:
        """See :meth:`Upload.abort`."""
        if self.directory.exists():
            fileio.rmtree(self.directory)
            fileio.fsync_dir(self.directory.parent)


class LocalUploads:
    """The uploads of a local repository: the directory ``uploads/`` next to its objects
    (a private directory: never listed as objects, never emptied by ``prune``)."""

    concurrency = 1

    def __init__(self, storage: LocalStorage, directory: str = "uploads") -> None:
        self.storage = storage
        self.root = storage.root / directory

    def create(self, name: str, part_size: int, info: Mapping[str, Any]) -> LocalUpload:
        """See :meth:`UploadStore.create`: writes ``UPLOAD`` (canonical JSON: magic,
        version, name, part size, creation time, the caller's info) first."""
        check_name(name)
        check_part_size(part_size)
        upload = LocalUpload(self, name, part_size)
        upload.abort()
        fileio.mkdir(upload.directory, parents=True, exist_ok=True)
        fileio.atomic_write_file(upload.directory / INFO_FILE,
                                 info_document(name, part_size, info))
        fileio.fsync_dir(self.root)
        return upload

    def _info(self, name: str) -> UploadInfo:
        path = self.root / check_name(name) / INFO_FILE
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_INFO_SIZE + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"no upload {name} in {self.storage.root}") from None
        except OSError as exc:
            raise storage_error(exc, "read", path) from exc
        return parse_info(raw, name, path)

    def open(self, name: str) -> LocalUpload:
        """See :meth:`UploadStore.open`."""
        return LocalUpload(self, name, self._info(name).part_size)

    def list(self) -> list[UploadInfo]:
        """See :meth:`UploadStore.list`."""
        return [info for _, info in self.entries() if info is not None]

    def entries(self) -> builtins.list[tuple[str, UploadInfo | None]]:
        """See :meth:`UploadStore.entries`. A directory linked elsewhere in place of
        ``uploads/`` is not the repository's own: only entries named as uploads are (an
        image id), never the linked directory's other files."""
        try:
            names = sorted(fileio.listdir(self.root))
        except StorageError:
            if not self.root.exists():
                return []
            raise
        if self.root.is_symlink():
            names = [n for n in names if _is_image_id(n)]
        out: builtins.list[tuple[str, UploadInfo | None]] = []
        for name in names:
            try:
                out.append((name, self._info(name)))
            except (NotFoundError, CorruptionError, UsageError):
                out.append((name, None))
        return out

    def set_info(self, name: str, info: Mapping[str, Any]) -> None:
        """See :meth:`UploadStore.set_info`."""
        old = self._info(name)
        fileio.atomic_write_file(self.root / name / INFO_FILE,
                                 info_document(name, old.part_size, info, old.created_ns))

    def remove(self, name: str) -> None:
        """See :meth:`UploadStore.remove`."""
        path = self.root / name
        if not name or "/" in name or name in (".", ".."):
            return
        if path.is_dir() and not path.is_symlink():
            fileio.rmtree(path)
        elif path.exists() or path.is_symlink():  # a stray file: not an upload either
            fileio.unlink(path)
        else:
            return
        fileio.fsync_dir(self.root)


@dataclass(slots=True)
class PartStats:
    """What a :class:`PartWriter` did: parts stored, parts already present (skipped),
    parts that were present with other bytes (stored again), bytes stored."""

    stored: int = 0
    skipped: int = 0
    replaced: int = 0
    bytes_stored: int = 0

    def to_json(self) -> dict[str, int]:
        """JSON-ready form."""
        return {"parts_stored": self.stored, "parts_skipped": self.skipped,
                "parts_replaced": self.replaced, "bytes_stored": self.bytes_stored}


class PartWriter:
    """A writable binary stream cutting what is written into the upload's parts.

    ``present`` (from :meth:`Upload.parts_present`) names parts already stored: a part
    whose regenerated bytes have the same size and checksum is skipped, one that differs
    is stored again (counted in ``stats.replaced``) — unless ``strict``: then it is not
    stored, :attr:`diverged` names it and CorruptionError is raised (a sealed image resumed
    under its recorded salt: other bytes under the same key and nonces must never be
    stored). :meth:`flush` does nothing (a part is
    stored when full); :meth:`finish` stores the last part and returns the part count.
    ``on_part`` is called after each part is stored or skipped (e.g. to renew a lease).
    With ``concurrency`` > 1 up to that many parts are stored at once on worker threads
    (an object store's parts are one request each); a part's error surfaces at a later
    write or at :meth:`finish`, and a kill leaves any subset of parts stored (a resume
    stores the missing ones). Used from one thread; :meth:`close` after a failure.
    """

    def __init__(self, upload: Upload, present: Mapping[int, PartInfo] | None = None, *,
                 on_part: Callable[[], None] | None = None, concurrency: int = 1,
                 strict: bool = False) -> None:
        self.upload = upload
        self.strict = strict
        #: The first part found to differ from its stored bytes under ``strict``.
        self.diverged: int | None = None
        self.on_part = on_part
        self.present = dict(present or {})
        self.stats = PartStats()
        # Parts being stored on other threads (an object store: one request each), oldest
        # first; at most ``concurrency`` at once, so memory stays parts x concurrency.
        self._concurrency = max(1, concurrency)
        self._pool = (None if self._concurrency == 1 else
                      ThreadPoolExecutor(self._concurrency, thread_name_prefix="lamina-part"))
        self._in_flight: deque[Future[PartInfo]] = deque()
        # The current part's pieces (references, no copies) and their total length.
        self._pieces: list[bytes | memoryview] = []
        self._filled = 0
        self._number = 0
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:
        """Append ``data``; stores every part it completes. Raises StorageError."""
        view: bytes | memoryview = data if isinstance(data, bytes) else memoryview(data).cast("B")
        size = self.upload.part_size
        at, total = 0, len(view)
        while at < total:
            take = min(size - self._filled, total - at)
            piece = view if take == total and at == 0 else memoryview(view)[at:at + take]
            if not isinstance(data, bytes):  # the caller may reuse its buffer
                piece = bytes(piece)
            self._pieces.append(piece)
            self._filled += take
            at += take
            if self._filled == size:
                self._emit_buffered()
        self.size += total
        return total

    def _emit_buffered(self) -> None:
        part = b"".join(self._pieces)
        self._pieces, self._filled = [], 0
        self._emit(part)

    def flush(self) -> None:
        """Nothing to do: parts are stored whole (see :meth:`finish`)."""

    def _emit(self, part: bytes) -> None:
        self._number += 1
        if self._number > MAX_PARTS:
            raise UsageError(f"the image needs more than {MAX_PARTS} parts of "
                             f"{self.upload.part_size} bytes")
        known = self.present.get(self._number)
        if known is not None and known.size == len(part):
            if known.checksum == self.upload.checksum(part):
                self.stats.skipped += 1
                if self.on_part is not None:
                    self.on_part()
                return
            if self.strict:
                self.diverged = self._number
                raise CorruptionError(f"upload {self.upload.name}: part {self._number} "
                                      "regenerated with other bytes than those stored",
                                      where=f"part {self._number}")
            self.stats.replaced += 1
        self.stats.stored += 1
        self.stats.bytes_stored += len(part)
        if self._pool is None:
            self.upload.put_part(self._number, part)
            if self.on_part is not None:
                self.on_part()
            return
        while len(self._in_flight) >= self._concurrency:
            self._settle_oldest()
        self._in_flight.append(self._pool.submit(self.upload.put_part, self._number, part))

    def _settle_oldest(self) -> None:
        """Wait for the oldest part in flight; its error (StorageError...) is raised here."""
        self._in_flight.popleft().result()
        if self.on_part is not None:
            self.on_part()

    def finish(self) -> int:
        """Store the last (short) part and wait for every part in flight; returns how many
        parts the object has. Raises the first error of a part stored on another thread."""
        try:
            if self._filled:
                self._emit_buffered()
            while self._in_flight:
                self._settle_oldest()
        finally:
            self.close()
        return self._number

    def close(self) -> None:
        """Stop the part threads (waiting for the parts in flight; their errors are
        dropped: after a failure the upload is left to be resumed). Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._in_flight.clear()


__all__ = ["DEFAULT_PART_SIZE", "MAX_PARTS", "LocalUpload", "LocalUploads", "PartInfo",
           "PartStats", "PartWriter", "Upload", "UploadInfo", "UploadStore", "check_name",
           "check_part_size", "info_document", "parse_info"]
