"""Cost of a layer: the btree driver reads O(changed keys x depth) pages, never the file.

Every ``Pager.read`` made while the layer's ``get_data`` runs is counted (the page reader
is instrumented, not timed): after changing k keys of an n-key database, a layer must read
at most ``k * depth * 2 + constant`` pages, and about as many pages as it sends.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina import online
from lamina.engines.btree.backup_driver import BtreeBackupDriver
from lamina.engines.btree.pager import Pager

from .incremental_helpers import state_at, state_of

N_KEYS = 200_000


class _Counter:
    """Counts pages read (Pager.read, Pager.read_run), only while a btree backup driver's
    get_data runs."""

    def __init__(self) -> None:
        self.active = 0
        self.reads = 0
        self.calls = 0


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Counter]:
    c = _Counter()
    real_read = Pager.read
    real_read_run = Pager.read_run
    real_get_data = BtreeBackupDriver.get_data

    def read(self: Pager, pgno: int) -> bytes:
        if c.active:
            c.reads += 1
        return real_read(self, pgno)

    def read_run(self: Pager, pgno: int, count: int) -> bytes:
        if c.active:
            c.reads += count
        return real_read_run(self, pgno, count)

    def get_data(self: BtreeBackupDriver, buffer: Any) -> Any:
        c.active += 1
        c.calls += 1
        try:
            return real_get_data(self, buffer)
        finally:
            c.active -= 1

    monkeypatch.setattr(Pager, "read", read)
    monkeypatch.setattr(Pager, "read_run", read_run)
    monkeypatch.setattr(BtreeBackupDriver, "get_data", get_data)
    yield c


def test_layer_reads_are_proportional_to_the_change(tmp_path: Path, counter: _Counter) -> None:
    rng = random.Random(5)
    images = [tmp_path / "full.img"]
    with lamina.open(tmp_path / "db", sync=False) as db:
        db.create_table("big")
        with db.write() as txn:
            txn.table("big").bulk_load((b"key%08d" % i, b"v%07d" % i) for i in range(N_KEYS))
        depth = db.stat()["btree"]["tables"]["big"]["depth"]
        assert depth >= 3
        db.backup(images[0])
        full_reads = counter.reads
        assert full_reads > N_KEYS // 200  # the full image read every page
        for k in (1, 10, 100):
            keys = rng.sample(range(N_KEYS), k)
            with db.write() as txn:
                table = txn.table("big")
                for key in keys:
                    table.put(b"key%08d" % key, b"changed %d" % k)
            db.store._pager.cache_clear()  # a cold node cache: every page is really read
            counter.reads = 0
            image = tmp_path / f"layer{k}.img"
            result = db.backup(image, base=images[-1])
            images.append(image)
            sent = result.manifest.vp.drivers[0]["pages_sent"]
            bound = k * depth * 2 + 16
            print(f"k={k} depth={depth} reads={counter.reads} sent={sent} bound={bound}")
            assert counter.reads <= bound, (k, counter.reads, bound)
            # Proportional to what is sent: the walk reads a page only to send it (plus
            # the catalog lookup of the one table).
            assert counter.reads <= sent + depth + 2, (k, counter.reads, sent)
            assert sent >= k // 2  # the changed leaves are in it
        expected = state_of(db)
    online.restore_chain(images, tmp_path / "restored")
    assert state_at(tmp_path / "restored") == expected
