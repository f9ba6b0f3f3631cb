"""The restore kernel: feed an image's streams to restore drivers, and publish the restored
database directory only once it is proven.

:func:`run_restore` reads the image front to back (so it works from a pipe): header and
catalog first, then asks each backup engine named in the catalog for a restore driver, then
sends every chunk to its driver in image order, and calls ``end()`` only after the reader
verified the manifest, every stream hash, the footer and the whole-image hash, and each
driver got its VP facts (the manifest's JSON, decoded by the driver's engine with
``decode_vp_facts``; a missing fact is a CorruptionError). Any failure cancels every begun
driver.

:func:`restore_into_directory` wraps any restore: it restores into a temporary directory
next to the destination (named after its owner's pid, never looking like a database), runs
the caller's verification (e.g. the checker and the btree root hash), and only then
publishes it (:func:`lamina.core.publish.publish_directory`, the one publish routine); on
failure or cancellation the temporary directory is removed and the destination is
untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lamina.backup import image_format
from lamina.backup.image_reader import ImageReader, ReadableStream, open_image_file
from lamina.backup.kernel import Backoff, CancelToken, ProgressCallback, is_cancelled
from lamina.core import publish
from lamina.core.driver import (
    BackupEngine,
    Buffer,
    DriverProtocolError,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
    VpFacts,
)
from lamina.core.fileio import fsync_dir
from lamina.core.publish import Cleaned
from lamina.errors import (
    CancelledError,
    NotFoundError,
    UnsupportedError,
    VersionError,
)

log = logging.getLogger("lamina.backup")

T = TypeVar("T")

#: Where restore finds backup engines by the driver name recorded in the image catalog.
EngineLookup = Mapping[str, BackupEngine] | Callable[[str], BackupEngine | None]


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """A completed restore: the image's header, catalog and verified manifest."""

    header: image_format.ImageHeader
    catalog: image_format.ImageCatalog
    manifest: image_format.Manifest
    size: int
    chunks: int
    raw_bytes: int


class _Restored:
    __slots__ = ("began", "cancelled", "driver", "ended", "engine", "name")

    def __init__(self, name: str, engine: BackupEngine, driver: RestoreDriver) -> None:
        self.name = name
        self.engine = engine
        self.driver = driver
        self.began = False
        self.ended = False
        self.cancelled = False


def _lookup(engines: EngineLookup, name: str) -> BackupEngine | None:
    if callable(engines):
        return engines(name)
    return engines.get(name)


def _call(r: _Restored, method: str, allowed: frozenset[Result], *args: object) -> Result:
    result = getattr(r.driver, method)(*args)
    if result is Result.ERROR:
        if r.driver.error is not None:
            raise r.driver.error
        raise DriverProtocolError(f"restore driver {r.name!r} returned ERROR from {method}() "
                                  "without setting .error")
    if not isinstance(result, Result) or result not in allowed:
        raise DriverProtocolError(f"restore driver {r.name!r} returned {result!r} from "
                                  f"{method}()")
    return result


def _decode_vp_facts(r: _Restored, data: object, where: str) -> VpFacts:
    """The typed VP facts of ``r``'s driver, decoded by its engine (CorruptionError naming
    ``where`` if a fact is missing; DriverProtocolError if the engine returns no VpFacts)."""
    facts = r.engine.decode_vp_facts(data, where)
    if not isinstance(facts, VpFacts):
        raise DriverProtocolError(f"backup engine {r.name!r}: decode_vp_facts() returned "
                                  f"{type(facts).__name__}, not VpFacts")
    return facts


_OK = frozenset({Result.OK})
_SEND = frozenset({Result.OK, Result.PROCESSING, Result.BUSY})


def run_restore(source: str | os.PathLike[str] | ReadableStream, engines: EngineLookup,
                destination: str | os.PathLike[str] | None, *, cancel: CancelToken = None,
                progress: ProgressCallback | None = None) -> RestoreResult:
    """Restore the image at ``source`` (path or readable binary stream) into the directory
    ``destination`` through restore drivers from ``engines`` (looked up by the catalog's
    driver names). ``destination=None`` verifies only: drivers prove what they are sent
    and write nothing (see :class:`~lamina.core.driver.RestoreFlags`).

    ``progress(image_bytes_read, image_size_or_None)`` is called after every chunk and
    once the trailer is verified.
    Raises UnsupportedError (a driver this build lacks), VersionError (a driver version
    newer than the build's), CorruptionError & co. (a bad image, or VP facts its engine
    cannot decode; drivers are cancelled and ``end()`` is never called), CancelledError,
    StorageError, driver errors, DriverProtocolError (a driver or engine bug).
    """
    dest = None if destination is None else Path(destination)
    if isinstance(source, (str, os.PathLike)):
        with open_image_file(source) as f:
            size = os.fstat(f.fileno()).st_size
            return _restore(f, Path(source), size, engines, dest, cancel, progress)
    return _restore(source, None, None, engines, dest, cancel, progress)


def _restore(stream: ReadableStream, path: Path | None, size: int | None, engines: EngineLookup,
             destination: Path | None, cancel: CancelToken,
             progress: ProgressCallback | None,
             ) -> RestoreResult:
    def check_cancel() -> None:
        if is_cancelled(cancel):
            raise CancelledError("restore cancelled")

    check_cancel()
    reader = ImageReader(stream, path=path)
    catalog = reader.catalog
    flags = RestoreFlags(destination, layer=reader.header.kind == image_format.ImageKind.LAYER)
    drivers: list[_Restored] = []
    for i, entry in enumerate(catalog.drivers):
        engine = _lookup(engines, entry.name)
        if engine is None:
            raise UnsupportedError(f"the image needs backup driver {entry.name!r}, which this "
                                   "build does not have")
        if entry.version > engine.version:
            raise VersionError(f"the image's {entry.name!r} data is version {entry.version}; "
                               f"this build reads up to {engine.version}")
        tables = [TableSpec(t.name, t.engine, t.table_id) for t in catalog.tables_of(i)]
        drivers.append(_Restored(entry.name, engine, engine.get_restore(
            entry.version, tables, dataclasses.replace(flags, kind=entry.kind))))
    stream_map = catalog.stream_map()
    chunks = 0
    raw = 0
    try:
        for r in drivers:
            check_cancel()
            r.began = True  # before the call: a failing begin() still gets cancel()
            _call(r, "begin", _OK)
        for chunk in reader.chunks():
            index, local = stream_map[chunk.stream]
            r = drivers[index]
            buf = Buffer(len(chunk.data), local, chunk.data, chunk.last)
            backoff = Backoff()
            while True:
                check_cancel()
                if _call(r, "send_data", _SEND, buf) is not Result.BUSY:
                    break
                backoff.wait()
            chunks += 1
            raw += len(chunk.data)
            if progress is not None:
                progress(reader.offset, size)
        manifest = reader.manifest
        assert manifest is not None  # chunks() ends only after the trailer verified
        if progress is not None:
            progress(reader.offset, size)  # the whole image, trailer included
        image = str(path) if path is not None else "the image"
        for i, r in enumerate(drivers):
            check_cancel()
            r.driver.set_vp_info(_decode_vp_facts(r, manifest.vp.drivers[i],
                                                  f"{image}, {r.name} driver"))
        for r in drivers:
            check_cancel()
            _call(r, "end", _OK)
            r.ended = True
    except BaseException:
        for r in drivers:
            if r.began and not r.ended and not r.cancelled:
                r.cancelled = True
                try:
                    if r.driver.cancel() is not Result.OK:
                        log.warning("restore driver %r did not cancel cleanly", r.name)
                except Exception:
                    log.exception("restore driver %r raised from cancel()", r.name)
        raise
    assert reader.size is not None
    return RestoreResult(reader.header, catalog, manifest, reader.size, chunks, raw)


def restore_into_directory(dest: str | os.PathLike[str], restore: Callable[[Path], T],
                           verify: Callable[[Path, T], None] | None = None, *,
                           force: bool = False, cancel: CancelToken = None,
                           cleaned: list[Cleaned] | None = None) -> T:
    """Run ``restore(tmp)`` into a new temporary directory next to ``dest``, then
    ``verify(tmp, result)``, then publish ``tmp`` as ``dest``; return the result.

    The temporary directory is ``.NAME.restore-PID-XXXXXXXXXXXX``, owned by this process
    (an ``flock`` on it) until it is published or removed; a restore keeps its identity as
    ``LAMINA.pending`` there (see :mod:`lamina.core.publish`), so it never looks like a
    database. First, what killed restores to ``dest`` left behind is settled (a half-done
    replacement finished or undone, dead owners' temporaries removed); each such leftover
    is appended to ``cleaned`` (if given) and logged.

    ``dest`` must not exist unless ``force``; then it must be a Lamina database that no
    process has open, or an empty directory, and is replaced by
    :func:`lamina.core.publish.publish_directory` (crash-safe: a kill at any instant leaves
    the old or the new database at ``dest``, once settled). If ``restore`` or ``verify``
    raises (CancelledError, CorruptionError, CheckFailedError, ...), the temporary
    directory is removed, ``dest`` is untouched, and the error propagates. ``cancel`` is
    checked once more just before publishing (CancelledError).
    Raises AlreadyExistsError (``dest`` exists without ``force``, or is not a database or
    an empty directory), LockedError (a process has ``dest`` open; checked before the
    restore and again at the publish), NotFoundError (no parent directory), StorageError.
    """
    dest = Path(dest)
    parent = dest.parent
    if not parent.is_dir():
        raise NotFoundError(f"directory {parent} does not exist")
    settled = publish.recover(dest)
    settled += publish.clean_leftovers(dest, (publish.RESTORE, publish.OLD))
    if cleaned is not None:
        cleaned.extend(settled)
    publish.check_destination(dest, replace=force)
    tmp = publish.OwnedTemp.create_dir(dest)
    try:
        result = restore(tmp.path)
        if verify is not None:
            verify(tmp.path, result)
        if is_cancelled(cancel):
            raise CancelledError("restore cancelled")
        fsync_dir(tmp.path)
        publish.publish_directory(tmp, dest, replace=force)
    finally:
        tmp.remove()  # never the published directory: only lets go of it then
    return result
