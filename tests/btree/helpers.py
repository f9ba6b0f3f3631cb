"""Shared helpers of the btree tests (also imported by their subprocess scripts)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lamina.core.lockfile import LockFile
from lamina.engines.btree import BtreeStore


def init_lockfile(directory: Path) -> LockFile:
    """Open the lock file, seeding commit seq and meta from the data file (if any)."""

    def init(lf: LockFile) -> None:
        seq, meta = BtreeStore.read_committed_meta(directory)
        lf.set_commit_seq(seq)
        lf.publish_btree_meta(meta)

    return LockFile.open(directory, init=init)


@contextlib.contextmanager
def opened(directory: Path, *, create: bool = True, readonly: bool = False,
           page_size: int = 4096, sync: bool = True) -> Iterator[BtreeStore]:
    """A BtreeStore with its lock file, both closed at exit."""
    directory.mkdir(parents=True, exist_ok=True)
    lf = init_lockfile(directory)
    try:
        store = BtreeStore.open(directory, lf, create=create, readonly=readonly,
                                page_size=page_size, sync=sync)
        try:
            yield store
        finally:
            store.close()
    finally:
        lf.close()


def assert_clean(store: BtreeStore) -> None:
    """check() finds nothing."""
    report = store.check()
    assert report.ok, [str(f) for f in report.findings]
