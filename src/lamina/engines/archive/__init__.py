"""The archive engine: append-only tables of compressed row blocks (MySQL ARCHIVE, made safe).

Each table is ``NAME.ARM`` (meta: two self-validating slots) and ``NAME.ARZ`` (data: a file
header then self-describing compressed blocks), specified in docs/format.md, "Archive
tables". Rows are bytes with ids assigned from 1; only insert and read. Commits take the
database's global commit seq and stamp it into their blocks, so a backup can cut a table at
any validity point after the fact.

Public API: :class:`ArchiveTable` (open table: reads, stats, checker, optimize, static file
helpers) and :class:`Appender` (a writer holding the table writer lock).

Modules, each importing only those listed before it (no circles):

* storage: ``format`` (constants, structs, file names), ``codec``, ``block`` (one block),
  ``walker`` (the one walk over a run of blocks), ``meta`` (``.ARM``), ``datafile``
  (``.ARZ`` header and block index), ``files`` (an open table's files and current
  generation), ``generations`` (retained generations, backup slots), ``recovery``,
  ``writer``, ``optimize``, ``check``, ``table`` (:class:`ArchiveTable`);
* backup: ``facts`` (VP facts), ``stream`` (the native stream format), ``vpcut`` (a table
  as of a validity point), ``backup`` (native backup driver), ``proof`` (stream checks),
  ``restore_driver``, ``layers`` (chain assembly), ``engine`` (the native backup engine),
  ``logical`` (sources and loader for the generic drivers).
"""

from lamina.engines.archive.format import MAX_ROW_BYTES
from lamina.engines.archive.table import ArchiveTable, RowIterator
from lamina.engines.archive.writer import Appender

__all__ = ["MAX_ROW_BYTES", "Appender", "ArchiveTable", "RowIterator"]
