"""What a restore proves without the checker: a forger who rewrites a page *and* every
checksum, hash and fact the image holds about its bytes (page checksum, stream trailer,
chunk checksums, the manifest's stream hash and the VP's ``pages_hash``, the whole-image
hash) is still refused, because the page no longer matches its parent's Merkle record —
for a leaf and for an overflow page alike. ``restore --check`` runs the whole checker on
top; the README says which checks run on every restore."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import lamina
from lamina import online
from lamina.backup import image_format as F
from lamina.backup.image_reader import ImageReader
from lamina.backup.image_writer import ImageWriter
from lamina.engines.btree import format as BF
from lamina.engines.btree.page import checksum
from lamina.engines.btree.stream import (
    HEADER_SIZE,
    TRAILER_SIZE,
    encode_trailer,
    new_pages_hasher,
)
from lamina.errors import CorruptionError
from support.cli import invoke

PS = 1024


def _fix(page: bytes) -> bytes:
    return struct.pack("<Q", checksum(page)) + page[8:]


def forge(src: Path, dst: Path, change: Callable[[int, bytes], bytes | None]) -> int:
    """Rewrite ``src`` into ``dst`` (a valid image again): each btree page for which
    ``change(pgno, page)`` returns bytes is replaced by them, re-checksummed; the stream
    trailer, the VP facts' pages hash, the chunks and the manifest are all made to match.
    Returns the number of pages changed."""
    with open(src, "rb") as f:
        reader = ImageReader(f)
        chunks = [(c.stream, bytes(c.data), c.last) for c in reader.chunks()]
        header, catalog, manifest = reader.header, reader.catalog, reader.manifest
    assert manifest is not None
    stream0 = b"".join(d for s, d, _ in chunks if s == 0)
    n = (len(stream0) - HEADER_SIZE - TRAILER_SIZE) // PS
    pages, changed = [], 0
    for i in range(n):
        page = stream0[HEADER_SIZE + i * PS:HEADER_SIZE + (i + 1) * PS]
        new = change(struct.unpack_from("<I", page, 16)[0], page)
        if new is not None:
            page, changed = _fix(new), changed + 1
        pages.append(page)
    hasher = new_pages_hasher()
    for p in pages:
        hasher.update(p)
    digest = hasher.digest()
    forged = stream0[:HEADER_SIZE] + b"".join(pages) + encode_trailer(n, digest)
    facts = [dict(d) for d in manifest.vp.drivers]
    facts[0]["pages_hash"] = digest.hex()
    with ImageWriter(dst, header, catalog, codec=F.Codec.NONE) as out:
        out.write_chunk(0, forged, True)
        for stream, data, last in chunks:
            if stream != 0:
                out.write_chunk(stream, data, last)
        out.finish(vp_seq=manifest.vp.commit_seq, vp_wall_ns=manifest.vp.wall_ns,
                   vp_facts=facts, root_hash=manifest.root_hash)
    return changed


@pytest.fixture
def image(tmp_path: Path) -> Path:
    with lamina.open(tmp_path / "db", page_size=PS) as db:
        db.create_table("t")
        db.create_table("log", engine="archive")
        with db.write() as w:
            for i in range(2000):
                w.table("t").put(b"%05d" % i, b"v%d" % i * 9)
            w.table("t").put(b"big", b"B" * 5000)  # an overflow chain
        db.append_many("log", [b"row %d" % i for i in range(100)])
        online.backup(db, tmp_path / "img", codec="none")
    return tmp_path / "img"


def test_an_unforged_rewrite_restores(image: Path, tmp_path: Path) -> None:
    """The forging itself keeps a valid image: with nothing changed it restores."""
    assert forge(image, tmp_path / "same", lambda _n, _p: None) == 0
    online.restore(tmp_path / "same", tmp_path / "out")
    with lamina.open(tmp_path / "out", create=False) as db:
        assert db.get("t", b"big") == b"B" * 5000
        assert db.archive("log").count() == 100


def test_forged_leaf_is_refused(image: Path, tmp_path: Path) -> None:
    def leaf(_pgno: int, page: bytes) -> bytes | None:
        if page[20] == BF.PAGE_LEAF and b"v3" in page:
            return page.replace(b"v3", b"V3", 1)
        return None

    assert forge(image, tmp_path / "bad", leaf) >= 1
    online.verify(tmp_path / "bad")  # the image format is valid: only the Merkle tree breaks
    with pytest.raises(CorruptionError, match="Merkle"):
        online.restore(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CorruptionError, match="Merkle"):
        online.verify(tmp_path / "bad", deep=True)


def test_forged_overflow_value_is_refused(image: Path, tmp_path: Path) -> None:
    """Overflow pages carry no hash in their reference: the value's hash in the leaf is
    what proves them, and a restore checks it without the checker."""
    def overflow(_pgno: int, page: bytes) -> bytes | None:
        if page[20] == BF.PAGE_OVERFLOW:
            return page[:100] + b"C" + page[101:]
        return None

    assert forge(image, tmp_path / "bad", overflow) >= 1
    with pytest.raises(CorruptionError, match="overflow value"):
        online.restore(tmp_path / "bad", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CorruptionError, match="overflow value"):
        online.verify(tmp_path / "bad", deep=True)


def test_restore_check_runs_the_checker(image: Path, tmp_path: Path) -> None:
    plain = invoke("restore", str(image), "--to", str(tmp_path / "a"))
    assert plain[0] == 0 and "root hash verified" in plain[1], plain
    checked = invoke("restore", str(image), "--to", str(tmp_path / "b"), "--check")
    assert checked[0] == 0 and "root hash and checker verified" in checked[1], checked


def test_what_a_restore_runs(image: Path) -> None:
    """The checker runs on a single native image only when asked; always on a chain."""
    with open(image, "rb") as f:
        reader = ImageReader(f)
        for _ in reader.chunks():
            pass
    from lamina.backup.restore import RestoreResult
    from lamina.online.restoring import needs_checker
    assert reader.manifest is not None
    result = RestoreResult(reader.header, reader.catalog, reader.manifest, 0, 0, 0)
    assert not needs_checker(result, streamed_proof=True, check=False)
    assert needs_checker(result, streamed_proof=True, check=True)
    assert needs_checker(result, streamed_proof=False, check=False)
