"""The database root hash of an image, and its proof (docs/format.md, "Root hash").

At a backup's validity point the root hash over the image's tables is computed from the
image catalog and the drivers' VP facts alone (:func:`image_root_inputs`, O(tables), no data
read) and recorded in the manifest. What each input covers:

* the catalog part: every table of the image (name, engine, table id);
* the btree Merkle root at the VP, when the image carries the btree file natively;
* per archive table sent by the native driver: generation, rows, committed length and block
  chain head at the VP.

A restore proves it from what it rebuilt (:func:`restored_root_inputs`: the restored
database's own catalog, btree meta and ``.ARM`` files, before any table is dropped), and
``verify --deep`` from the facts its restore drivers proved against the streams (the btree
Merkle root recomputed from the pages, each archive chain recomputed from the blocks). For
an image with a logical (snapshot or default) driver the restore rebuilds those tables, so
their pages and blocks cannot be the VP's: such images are proven by their per-table
content digests instead (:mod:`lamina.backup.logical`), and the root hash is not compared.
Pure except :func:`restored_root_inputs` (reads the database's metadata).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lamina.backup import image_format
from lamina.backup.kernel import RootHashFunction
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.root_hash import RootArchive, RootInputs, RootTable
from lamina.database import Database
from lamina.engines.archive.facts import ArchiveVpFacts
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.errors import CorruptionError, UnsupportedError
from lamina.online.plan import DEFAULT, SNAPSHOT, restore_engines


def has_logical_driver(catalog: image_format.ImageCatalog) -> bool:
    """True if a table of the image was sent by a logical (snapshot or default) driver."""
    return any(d.name in (SNAPSHOT, DEFAULT) for d in catalog.drivers)


def _native_archive(catalog: image_format.ImageCatalog) -> list[str]:
    return [t.name for t in catalog.tables
            if catalog.drivers[t.driver].name == ENGINE_ARCHIVE]


def _has_btree(catalog: image_format.ImageCatalog) -> bool:
    return any(d.name == ENGINE_BTREE for d in catalog.drivers)


def image_root_inputs(catalog: image_format.ImageCatalog,
                      drivers: Sequence[Mapping[str, Any]], label: str) -> RootInputs:
    """The root-hash inputs of an image at its VP, from its catalog and its drivers' VP
    facts (JSON form, catalog order). Raises CorruptionError (a missing or mistyped fact; an
    archive table the facts do not describe; ``label`` names the image), UnsupportedError
    (a driver this build lacks)."""
    btree_root: bytes | None = None
    archive_facts: ArchiveVpFacts | None = None
    engines = restore_engines()
    for i, entry in enumerate(catalog.drivers):
        if entry.name not in (ENGINE_BTREE, ENGINE_ARCHIVE):
            continue
        engine = engines.get(entry.name)
        if engine is None:  # pragma: no cover - both are always built in
            raise UnsupportedError(f"{label} uses backup driver {entry.name!r}, which this "
                                   "build does not have")
        facts = engine.decode_vp_facts(drivers[i], f"{label}, {entry.name} driver")
        if isinstance(facts, BtreeVpFacts):
            btree_root = facts.root_hash
        elif isinstance(facts, ArchiveVpFacts):
            archive_facts = facts
    archive = []
    for name in _native_archive(catalog):
        t = None if archive_facts is None else archive_facts.tables.get(name)
        if t is None:
            raise CorruptionError(f"{label}: the archive VP facts do not describe table "
                                  f"{name!r}")
        archive.append(RootArchive(name, t.generation, t.rows, t.position, t.chain_head))
    return RootInputs(tuple(RootTable(t.name, t.engine, t.table_id) for t in catalog.tables),
                      btree_root, tuple(archive))


def root_hash_function(label: str = "the backup") -> RootHashFunction:
    """The kernel's ``root_hash(catalog, vp_facts)`` callback for backups of a Database
    (errors name ``label``)."""
    def compute(catalog: image_format.ImageCatalog,
                drivers: Sequence[Mapping[str, Any]]) -> bytes:
        return image_root_inputs(catalog, drivers, label).digest()
    return compute


def restored_root_inputs(db: Database, catalog: image_format.ImageCatalog) -> RootInputs:
    """The root-hash inputs of the database ``db`` restored from an image with ``catalog``
    (before any table was dropped): its catalog entries of the image's tables, its btree
    root if the image carried the btree file, its native archive tables' metas. Raises
    what :meth:`Database.root_inputs` raises."""
    names = [t.name for t in catalog.tables]
    return db.root_inputs().only(names, btree=_has_btree(catalog),
                                 archive=_native_archive(catalog))


def prove_root_hash(recorded: bytes, actual: RootInputs, where: str) -> None:
    """CorruptionError unless ``actual`` hashes to ``recorded`` (the manifest's; an image
    that records none is refused too: a real backup always records one)."""
    if recorded == image_format.NO_ROOT_HASH:
        raise CorruptionError(f"{where}: the image records no root hash")
    got = actual.digest()
    if got != recorded:
        raise CorruptionError(f"{where}: the root hash of what was rebuilt, {got.hex()}, "
                              f"differs from the image's {recorded.hex()}")


__all__ = ["has_logical_driver", "image_root_inputs", "prove_root_hash",
           "restored_root_inputs", "root_hash_function"]
