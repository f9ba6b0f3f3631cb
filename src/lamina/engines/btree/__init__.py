"""The btree engine: a copy-on-write B+tree in one data file with Merkle hashes and txnids.

Public API (used by the database facade, dbm, CLI and the backup layer):

* :class:`BtreeStore` — one open ``data.lamina``: ``open``, ``read_committed_meta``,
  ``begin_read``, ``begin_write``, ``check``, ``stat``, ``close``.
* :class:`ReadTxn` / :class:`WriteTxn` — snapshot transactions; ``table(name)``,
  catalog access, ``iter_pages()`` / ``walk_changed_pages(since)`` for backups.
* :class:`Table` and :class:`Cursor` — bytes-to-bytes ordered maps.

File format: docs/format.md, "Btree data file".

Modules, bottom up (imports point down this list; no cycles): ``format`` (on-disk records,
meta), ``page`` (page codec, hashes), ``pager`` (page I/O, node cache, meta pages),
``tree`` (B+tree algorithms), ``freelist`` (page allocation and reuse), ``cursor``,
``txn`` (transactions, tables), ``check`` (checker, stat), ``store`` (the open data file);
for backups: ``stream`` (page stream format and reader), ``facts`` (VP facts), ``proof``
(Merkle proof of a stream), ``backup_driver``, ``restore_driver``, ``backup`` (the
engine), ``layers`` (chains), and ``logical`` (rows for the generic drivers).
"""

from lamina.engines.btree.cursor import Cursor
from lamina.engines.btree.format import DATA_FILE_NAME, MAX_VALUE_SIZE, Meta, RootDesc, max_key_size
from lamina.engines.btree.store import BtreeStore
from lamina.engines.btree.txn import ReadTxn, Table, WriteTxn

__all__ = [
    "DATA_FILE_NAME",
    "MAX_VALUE_SIZE",
    "BtreeStore",
    "Cursor",
    "Meta",
    "ReadTxn",
    "RootDesc",
    "Table",
    "WriteTxn",
    "max_key_size",
]
