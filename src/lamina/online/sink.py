"""The logical restore sink: rebuilds tables that the snapshot and default drivers backed
up, through the engines, in a restore destination (a
:class:`~lamina.backup.logical.LogicalSink`).

Concurrency: a sink writes a destination that no other process has opened yet; it is used
from one thread and closed once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lamina.backup.logical import LogicalVpFacts, Row
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import FactReader, TableSpec
from lamina.core.lockfile import LockFile
from lamina.engines.archive import logical as archive_logical
from lamina.engines.btree import BtreeStore
from lamina.engines.btree import logical as btree_logical
from lamina.errors import CorruptionError, UnsupportedError

#: The btree page size of a destination when neither the caller nor the image names one
#: (an image whose logical tables are all archive tables).
DEFAULT_PAGE_SIZE = 4096


def source_page_size(facts: LogicalVpFacts, where: str) -> int | None:
    """The btree page size the logical image's btree tables were read from (its btree
    source facts), or None when it has no btree source. Raises CorruptionError naming
    ``where`` when the btree source facts lack the page size."""
    btree = facts.sources.get(ENGINE_BTREE)
    if btree is None:
        return None
    return FactReader(btree, f"{where}.sources.{ENGINE_BTREE}").integer("page_size",
                                                                          minimum=1)


class RestoreSink:
    """Writes logical tables into a restore destination through the engines: opens —
    creating if no native driver restored it — the btree file with ``page_size`` (default:
    the source's, from the logical VP facts ``facts``; 4096 without either), bulk-loads
    btree tables and appends archive tables' rows, each under its original table id.
    ``facts`` is None when the sink only completes a catalog (no logical driver).
    Used from one thread; :meth:`close` once. Raises CorruptionError (VP facts without a
    page size), StorageError.
    """

    def __init__(self, directory: Path, page_size: int | None,
                 facts: LogicalVpFacts | None) -> None:
        self.directory = Path(directory)
        source_ps = None if facts is None else source_page_size(facts, "logical VP facts")
        ps = page_size or source_ps or DEFAULT_PAGE_SIZE
        self.lockfile = LockFile.open(self.directory, init=self._init_lockfile)
        try:
            self.store = BtreeStore.open(self.directory, self.lockfile, create=True,
                                         readonly=False, page_size=ps, sync=True)
        except BaseException:
            self.lockfile.close()
            raise

    def _init_lockfile(self, lockfile: LockFile) -> None:
        seq, meta = BtreeStore.read_committed_meta(self.directory)
        lockfile.set_commit_seq(seq)
        lockfile.publish_btree_meta(meta)

    def ensure_entry(self, spec: TableSpec) -> None:
        """Give ``spec`` a catalog entry (its own id) unless it has one. Raises
        CorruptionError if the name is taken by another id or engine."""
        with self.store.begin_write(None) as txn:
            entry = txn.catalog_get(spec.name)
            if entry is None:
                txn.create_table(spec.name, spec.engine, table_id=spec.table_id)
            elif entry.engine != spec.engine or entry.table_id != spec.table_id:
                raise CorruptionError(f"table {spec.name!r} is {entry.engine} id "
                                      f"{entry.table_id} in the restored catalog, but "
                                      f"{spec.engine} id {spec.table_id} in the image")

    def load(self, spec: TableSpec, info: Mapping[str, Any], rows: Iterator[Row]) -> int:
        """Create ``spec`` and load its rows (``info``: the table stream's info); returns
        how many. Raises UnsupportedError (an engine this build lacks), KeyTooLargeError (a
        key longer than the destination page size allows), CorruptionError."""
        if spec.engine == ENGINE_BTREE:
            return btree_logical.load_table(self.store, spec, rows)
        if spec.engine == ENGINE_ARCHIVE:
            self.ensure_entry(spec)
            return archive_logical.load_table(self.directory, self.lockfile, spec,
                                              dict(info), rows)
        raise UnsupportedError(f"table {spec.name!r} uses engine {spec.engine!r}, which this "
                               "build does not have")

    def close(self) -> None:
        """Close the store and the lock file."""
        try:
            self.store.close()
        finally:
            self.lockfile.close()


__all__ = ["DEFAULT_PAGE_SIZE", "RestoreSink", "source_page_size"]
