"""Restoring an image into a new database directory, and proving a restored directory
before it is published.

:func:`restore` runs the restore kernel into a temporary directory next to the destination;
:func:`prove_restored` (also used by :func:`lamina.online.chain.restore_chain`) makes that
directory a database and proves it against the image's VP facts (btree root hash, archive
row counts) and, where the drivers' streamed proofs do not cover it, the checker
(:func:`needs_checker`); only then is it renamed into place.

Concurrency: the destination is new, or a database that no process has open (a restore
refuses to replace one in use, and holds it so while it replaces it); the image is a
read-only input, so restores may run beside anything.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.backup import image_format
from lamina.backup.image_reader import ReadableStream
from lamina.backup.kernel import CancelToken, ProgressCallback
from lamina.backup.restore import RestoreResult, restore_into_directory, run_restore
from lamina.core import fileio
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import BackupEngine, TableSpec
from lamina.core.identity import Identity
from lamina.core.publish import PENDING_IDENTITY, Cleaned
from lamina.database import open_staged
from lamina.engines.btree import format as btree_format
from lamina.errors import CheckFailedError, CorruptionError, TableNotFoundError, UsageError
from lamina.online.facts import ImageFacts
from lamina.online.plan import DEFAULT, SNAPSHOT, restore_engines
from lamina.online.root import prove_root_hash, restored_root_inputs
from lamina.online.sink import RestoreSink


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore produced: where, from which image, at which VP, and how long."""

    path: Path
    result: RestoreResult
    tables: tuple[str, ...]
    elapsed_ns: int
    #: Leftovers of killed restores to ``path`` that this restore settled first.
    cleaned: tuple[Cleaned, ...] = ()

    @property
    def vp(self) -> image_format.ValidityPoint:
        """The validity point the restored database represents."""
        return self.result.manifest.vp

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (``lamina restore --json``)."""
        return {"path": str(self.path), "image_id": str(self.result.header.image_id),
                "vp_commit_seq": self.vp.commit_seq, "vp_time_ns": self.vp.wall_ns,
                "tables": list(self.tables), "image_bytes": self.result.size,
                "seconds": self.elapsed_ns / 1e9, "cleaned": [str(c) for c in self.cleaned]}


def prove_restored(tmp: Path, result: RestoreResult,
                   wanted: Sequence[str] | None, *, streamed_proof: bool = False,
                   check: bool = False) -> tuple[str, ...]:
    """Make the restored directory ``tmp`` a database of the image ``result`` describes,
    keep only the ``wanted`` tables (None: all), and prove it; returns the tables kept.

    Makes its identity (the source's database id, a new incarnation, the image and VP it
    came from) and opens ``tmp`` with it, then checks — before any table is dropped — that
    a natively restored btree file has the VP's root hash, then each natively restored
    archive table's row count against the image's VP facts, then runs the whole checker
    unless :func:`needs_checker` says the restore drivers' own proof covers it;
    only then is the identity staged as ``LAMINA.pending``, which the publish renames to
    ``LAMINA`` (so ``tmp`` never looks like a database, see :mod:`lamina.core.publish`).
    ``streamed_proof``: the restore drivers proved the streams as they arrived (a single
    image's drivers do; a chain's assembled pages are not proven until the checker runs).
    ``check``: run the whole checker anyway (``lamina restore --check``).
    Raises TableNotFoundError (a wanted table not in the image), CorruptionError (a root
    hash or row count that differs, or a missing VP fact), CheckFailedError, StorageError.
    ``tmp`` must not be in use by anyone else (it is not published yet).
    """
    vp = result.manifest.vp
    # The restored database keeps the source's id but starts a new incarnation: its history
    # is the source's up to the VP and its own after, so it may continue the chain of the
    # image it came from but never layer on the source's later images (two histories).
    identity = Identity(result.header.database_id, time.time_ns(), result.header.image_id,
                        vp.commit_seq, vp.wall_ns, incarnation=uuid.uuid4(),
                        origin_incarnation=result.header.incarnation)
    in_image = {t.name for t in result.catalog.tables}
    if wanted is not None:
        missing = sorted(set(wanted) - in_image)
        if missing:
            raise TableNotFoundError(f"table(s) {', '.join(missing)} not in the image")
    keep = in_image if wanted is None else set(wanted)
    facts = ImageFacts(result, f"image {result.header.image_id}")
    btree = facts.btree()
    archive = facts.archive()
    native_archive = [t.name for t in result.catalog.tables
                      if result.catalog.drivers[t.driver].name == ENGINE_ARCHIVE]
    logical = any(d.name in (SNAPSHOT, DEFAULT) for d in result.catalog.drivers)
    with open_staged(tmp, identity) as db:
        with db.read() as txn:
            actual = txn.root_hash
        # Checked before any table is dropped: the native btree file must be the VP's, bit
        # for bit. Logical drivers rebuild their tables (a new tree), so the root hash of the
        # VP cannot match; their row counts and content digests were checked instead.
        if btree is not None and not logical and btree.root_hash != actual:
            raise CorruptionError(f"restored btree root hash {actual.hex()} differs from the "
                                  f"image's {btree.root_hash.hex()}", path=tmp)
        if not logical:
            # The database root hash: catalog, btree root and every archive table's chain
            # head, as the restored files say (their blocks are proven against those heads
            # by the restore drivers and by the checker below).
            prove_root_hash(result.manifest.root_hash, restored_root_inputs(db, result.catalog),
                            f"restore of image {result.header.image_id}")
        for info in db.tables():
            if info.name not in keep:  # not chosen, or not backed up (btree file carries all)
                db.drop_table(info.name)
        for name in native_archive:
            if name not in keep:
                continue
            recorded = None if archive is None else archive.tables.get(name)
            if recorded is None:
                raise CorruptionError(f"archive table {name!r}: the image's archive VP facts "
                                      "do not describe it", path=tmp)
            rows = db.archive(name).count()
            if rows != recorded.rows:
                raise CorruptionError(f"archive table {name!r} restored {rows} rows, the "
                                      f"image's VP says {recorded.rows}", path=tmp)
        if needs_checker(result, streamed_proof=streamed_proof, check=check):
            report = db.check()
            if not report.ok:
                raise CheckFailedError(f"restored database fails the checker "
                                       f"({len(report.findings)} problems): "
                                       f"{report.findings[0]}", report.findings)
        kept = tuple(sorted(t.name for t in db.tables()))
    fileio.atomic_write_file(tmp / PENDING_IDENTITY, identity.encode())
    return kept


def needs_checker(result: RestoreResult, *, streamed_proof: bool, check: bool) -> bool:
    """Whether a restore of ``result`` must run the whole checker before it is published.

    Not needed when every table arrived through its engine's native driver and those
    drivers proved their streams as they arrived (``streamed_proof``): the btree driver's
    Merkle proof (every page's blake2b-128 against its parent's record, up to the root hash
    in the VP facts; every page referenced once; overflow values against their hashes)
    proves the file is the source's btree at the VP byte for byte, and the archive driver
    proves and re-reads every block. What the checker adds there — key order, subtree
    counts, free-list accounting — are properties of the source's tree, which ``check``
    (``lamina restore --check``) or ``lamina check`` proves. Needed for a chain (its
    assembled pages are proven by the checker) and for logical drivers (they build new
    tables). Pure."""
    if check or not streamed_proof:
        return True
    native = {ENGINE_BTREE, ENGINE_ARCHIVE}
    return any(d.name not in native for d in result.catalog.drivers)


def _complete_catalog(tmp: Path, result: RestoreResult, page_size: int | None) -> None:
    """An image without the native btree driver carries no catalog: give every table that
    no logical driver registered (native archive tables) its catalog entry, creating the
    btree file if no logical driver did."""
    if any(d.name == ENGINE_BTREE for d in result.catalog.drivers):
        return
    sink = RestoreSink(tmp, page_size, None)
    try:
        for t in result.catalog.tables:
            sink.ensure_entry(TableSpec(t.name, t.engine, t.table_id))
    finally:
        sink.close()


def restore(source: str | os.PathLike[str] | ReadableStream, dest: str | os.PathLike[str], *,
            tables: Sequence[str] | None = None, force: bool = False,
            progress: ProgressCallback | None = None, cancel: CancelToken = None,
            page_size: int | None = None, check: bool = False) -> RestoreSummary:
    """Restore the image at ``source`` (path or binary stream) into a new database ``dest``.

    Works in a temporary directory next to ``dest`` and renames it into place only when
    :func:`prove_restored` passed (the drivers' streamed proofs, btree root hash equal to
    the image's, archive row counts equal to the VP's; the whole checker too for logical
    images, or with ``check``); on any failure nothing is left at ``dest``. The
    restored database keeps the source database id and records the image id and VP; its
    next commit seq follows the VP's.
    ``page_size`` restores a *logical* image (snapshot/default drivers) into a btree file
    of that page size; tables are rebuilt compact. With an image that carries the btree file
    natively it is a UsageError (raised before anything is written).
    ``force`` replaces a Lamina database that no process has open (or an empty directory);
    the temporary directories of killed restores to ``dest`` are removed first
    (``RestoreSummary.cleaned``).
    Returns a :class:`RestoreSummary`. Raises AlreadyExistsError (``dest`` exists, no
    ``force``; or ``dest`` is not a Lamina database or an empty directory), LockedError
    (a process has ``dest`` open), TableNotFoundError, UsageError, CorruptionError & co.,
    VersionError, UnsupportedError, CheckFailedError, CancelledError, KeyTooLargeError (a
    key too long for ``page_size``), StorageError.
    """
    start = time.monotonic_ns()
    if page_size is not None and not btree_format.valid_page_size(page_size):
        raise UsageError(f"page size {page_size} is not a power of two in 1024..65536")
    engines = restore_engines(page_size)

    def lookup(name: str) -> BackupEngine | None:
        if page_size is not None and name == ENGINE_BTREE:
            raise UsageError("--page-size applies only to logical images (snapshot or "
                             "default driver); this image carries the btree file natively")
        return engines.get(name)

    def do_restore(tmp: Path) -> RestoreResult:
        result = run_restore(source, lookup, tmp, cancel=cancel, progress=progress)
        _complete_catalog(tmp, result, page_size)
        return result

    return restore_proven(dest, do_restore, tables, force=force, cancel=cancel,
                          started_ns=start, streamed_proof=True, check=check)


def restore_proven(dest: str | os.PathLike[str], do_restore: Callable[[Path], RestoreResult],
                   tables: Sequence[str] | None, *, force: bool, cancel: CancelToken,
                   started_ns: int, streamed_proof: bool = False,
                   check: bool = False) -> RestoreSummary:
    """Run ``do_restore(tmp)`` into a temporary directory next to ``dest``, prove the result
    with :func:`prove_restored` (keeping only ``tables``), and publish it at ``dest``
    (:func:`lamina.backup.restore.restore_into_directory`: same ``force`` rules, leftovers of
    dead restores removed); ``streamed_proof`` and ``check`` as there. Shared by image and
    chain restores. Returns the summary, its
    time counted from ``started_ns`` (``time.monotonic_ns()``). Raises what the restore,
    the proof or the publication raise; nothing is left at ``dest`` on failure."""
    kept: list[tuple[str, ...]] = []

    def prove(tmp: Path, result: RestoreResult) -> None:
        kept.append(prove_restored(tmp, result, tables, streamed_proof=streamed_proof,
                                   check=check))

    cleaned: list[Cleaned] = []
    result = restore_into_directory(dest, do_restore, prove, force=force, cancel=cancel,
                                    cleaned=cleaned)
    return RestoreSummary(Path(dest), result, kept[0], time.monotonic_ns() - started_ns,
                          tuple(cleaned))


__all__ = ["RestoreSummary", "needs_checker", "prove_restored", "restore", "restore_proven"]
