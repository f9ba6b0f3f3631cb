"""A logical image restores into another page size and into a compact file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from drivers_helpers import make_db, snapshot_of

import lamina
from lamina import online
from lamina.errors import UsageError
from support import cli


@pytest.mark.parametrize("driver", ["snapshot", "default"])
def test_logical_image_restores_into_other_page_sizes(tmp_path: Path, driver: str) -> None:
    src = tmp_path / "src"
    make_db(src, rows=3000)
    image = tmp_path / "img"
    proc = cli.run("backup", str(src), str(image), "--driver", driver, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == {"t1": 3000, "t2": 3000, "log": 3000}
    want = snapshot_of(src)
    for page_size in (1024, 16384):
        dest = tmp_path / f"r{page_size}"
        proc = cli.run("restore", str(image), "--to", str(dest), "--page-size", str(page_size),
                       "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert snapshot_of(dest) == want
        with lamina.open(dest, create=False) as db:
            assert db.store.page_size == page_size
            with db.read() as txn:
                assert txn.table("t1").entry.table_id == db.table_info("t1").table_id
    # Without --page-size: the source's.
    dest = tmp_path / "same"
    online.restore(image, dest)
    with lamina.open(dest, create=False) as db:
        assert db.store.page_size == 4096


def test_backup_of_a_fragmented_database_restores_compact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with lamina.open(src) as db:
        db.create_table("t")
        for round_ in range(4):  # random-order inserts, then delete most: half-empty pages
            with db.write() as txn:
                t = txn.table("t")
                for i in range(3000):
                    t.put(b"%08d" % ((i * 7919 + round_) % 12000), os.urandom(40))
        with db.write() as txn:
            t = txn.table("t")
            for i in range(0, 12000):
                if i % 5:
                    t.delete(b"%08d" % i)
        fragmented = (src / "data.lamina").stat().st_size
        db.backup(tmp_path / "img", driver="snapshot")
        native = tmp_path / "native"
        db.backup(native)
    dest = tmp_path / "compact"
    online.restore(tmp_path / "img", dest)
    compact = (dest / "data.lamina").stat().st_size
    assert compact < fragmented / 2, (compact, fragmented)
    assert snapshot_of(dest) == snapshot_of(src)
    # --page-size with an image that carries the btree file natively: a usage error.
    with pytest.raises(UsageError, match="logical"):
        online.restore(native, tmp_path / "nope", page_size=1024)
    proc = cli.run("restore", str(native), "--to", str(tmp_path / "nope"), "--page-size", "1024")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()
