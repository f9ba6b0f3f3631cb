"""A restore refuses every damaged or forged btree stream, naming where; newer versions are
refused with VersionError; a refused restore leaves no data file."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import xxhash
from btree_backup_helpers import (
    backup,
    feed,
    open_restored,
    restore,
    restore_driver,
    rewrite_chunk,
    stream0,
)

import lamina
from lamina.backup import Buffer, RestoreFlags, Result
from lamina.engines.btree import DATA_FILE_NAME
from lamina.engines.btree import format as BF
from lamina.engines.btree.backup import BtreeBackupEngine
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.page import checksum
from lamina.engines.btree.stream import (
    HEADER,
    HEADER_CHECK,
    HEADER_SIZE,
    TRAILER_SIZE,
    encode_trailer,
    new_pages_hasher,
)
from lamina.errors import CorruptionError, VersionError

PS = 1024


@dataclass
class Stream:
    """A btree stream taken apart: header, pages, trailer; plus the VP facts."""

    header: bytes
    pages: list[bytes]
    trailer: bytes
    facts: dict[str, Any]

    def build(self, *, pages: list[bytes] | None = None, fix_trailer: bool = True) -> bytes:
        pages = self.pages if pages is None else pages
        trailer = self.trailer
        if fix_trailer:
            hasher = new_pages_hasher()
            for p in pages:
                hasher.update(p)
            trailer = encode_trailer(len(pages), hasher.digest())
        return self.header + b"".join(pages) + trailer

    @property
    def meta(self) -> BF.Meta:
        return BF.Meta.decode(HEADER.unpack(self.header[:HEADER.size])[9])


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Stream]]:
    base = tmp_path_factory.mktemp("corrupt")
    with lamina.open(base / "db", page_size=PS, sync=False) as db:
        for name in ("t", "u"):
            db.create_table(name)
        with db.write() as w:
            for i in range(1500):
                w.table("t").put(b"%05d" % i, b"v%d" % i * 9)
            w.table("u").put(b"big", b"B" * 5000)  # an overflow chain
        db.delete("t", b"00007")
        result = backup(db, base / "img", codec="none", buf_size=4096)
    raw = stream0(base / "img")
    n = (len(raw) - HEADER_SIZE - TRAILER_SIZE) // PS
    pages = [raw[HEADER_SIZE + i * PS: HEADER_SIZE + (i + 1) * PS] for i in range(n)]
    stream = Stream(raw[:HEADER_SIZE], pages, raw[-TRAILER_SIZE:], dict(result.vp.drivers[0]))
    assert stream.build() == raw
    yield base, stream


def run(dest: Path, data: bytes, facts: dict[str, Any] | None) -> None:
    """Feed ``data`` to a fresh restore driver and end it; on failure, cancel and re-raise."""
    dest.mkdir()
    drv = restore_driver(dest)
    try:
        feed(drv, data)
        if facts is not None:
            drv.set_vp_info(BtreeVpFacts.from_json(facts, "test facts"))
        assert drv.end() is Result.OK
    except BaseException:
        assert drv.cancel() is Result.OK
        assert list(dest.iterdir()) == []  # a refused restore leaves nothing
        raise


def fix(page: bytes) -> bytes:
    """Recompute a page's checksum so it validates on its own."""
    return struct.pack("<Q", checksum(page)) + page[8:]


def page_type(page: bytes) -> int:
    return page[20]


def find(stream: Stream, pred: Callable[[int, bytes], bool]) -> int:
    for i, p in enumerate(stream.pages):
        if pred(struct.unpack_from("<I", p, 16)[0], p):
            return i
    raise AssertionError("no such page")


def test_pristine_stream_restores(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    run(tmp_path / "ok", s.build(), s.facts)
    with open_restored(tmp_path / "ok") as db:
        assert db.get("u", b"big") == b"B" * 5000
        assert db.get("t", b"00007") is None and db.get("t", b"00008") == b"v8" * 9


def test_flipped_page_byte(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    i = len(s.pages) // 2
    pages = list(s.pages)
    pages[i] = pages[i][:500] + bytes([pages[i][500] ^ 1]) + pages[i][501:]
    with pytest.raises(CorruptionError, match="checksum") as exc:
        run(tmp_path / "d", s.build(pages=pages), s.facts)
    assert f"offset {HEADER_SIZE + i * PS}" in str(exc.value)


def test_forged_leaf_with_valid_checksums(made: tuple[Path, Stream], tmp_path: Path) -> None:
    """A leaf altered and re-checksummed (trailer fixed too) breaks the Merkle tree."""
    _base, s = made
    cat = s.meta.catalog.pgno
    i = find(s, lambda pgno, p: page_type(p) == BF.PAGE_LEAF and pgno != cat and b"v3" in p)
    pages = list(s.pages)
    pages[i] = fix(pages[i].replace(b"v3", b"V3", 1))
    with pytest.raises(CorruptionError, match="Merkle"):
        run(tmp_path / "d", s.build(pages=pages), s.facts)


def test_forged_catalog_root(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    cat = s.meta.catalog.pgno
    i = find(s, lambda pgno, _p: pgno == cat)
    pages = list(s.pages)
    page = pages[i]
    pages[i] = fix(page[:-1] + bytes([page[-1] ^ 0x80]))  # unused tail byte: still decodes
    with pytest.raises(CorruptionError, match="meta catalog root"):
        run(tmp_path / "d", s.build(pages=pages), s.facts)


def test_overflow_page_swapped_for_another_txnid(made: tuple[Path, Stream],
                                                 tmp_path: Path) -> None:
    _base, s = made
    i = find(s, lambda _n, p: page_type(p) == BF.PAGE_OVERFLOW)
    pages = list(s.pages)
    txnid = struct.unpack_from("<Q", pages[i], 8)[0]
    pages[i] = fix(pages[i][:8] + struct.pack("<Q", txnid - 1) + pages[i][16:])
    with pytest.raises(CorruptionError, match="txnid"):
        run(tmp_path / "d", s.build(pages=pages), s.facts)


def test_missing_duplicate_and_unordered_pages(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    i = find(s, lambda _n, p: page_type(p) == BF.PAGE_LEAF)
    header = bytearray(s.header)
    struct.pack_into("<Q", header, 32, len(s.pages) - 1)
    header[HEADER.size:] = HEADER_CHECK.pack(xxhash.xxh3_64_intdigest(bytes(header[:HEADER.size])))
    missing = Stream(bytes(header), s.pages[:i] + s.pages[i + 1:], s.trailer, s.facts)
    with pytest.raises(CorruptionError, match="not in the stream"):
        run(tmp_path / "a", missing.build(), s.facts)
    dup = [*s.pages[:i], s.pages[i], s.pages[i], *s.pages[i + 2:]]
    with pytest.raises(CorruptionError, match="out of order"):
        run(tmp_path / "b", s.build(pages=dup), s.facts)


def test_header_and_trailer_damage(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    good = s.build()
    with pytest.raises(CorruptionError, match="magic"):
        run(tmp_path / "a", b"X" + good[1:], s.facts)
    with pytest.raises(CorruptionError, match="header checksum"):
        run(tmp_path / "b", good[:30] + b"\x01" + good[31:], s.facts)
    future = good[:8] + struct.pack("<I", 2) + good[12:]  # version checked before checksum
    with pytest.raises(VersionError):
        run(tmp_path / "c", future, s.facts)
    with pytest.raises(CorruptionError, match="pages hash"):
        run(tmp_path / "d", s.build(fix_trailer=False)[:-TRAILER_SIZE]
            + encode_trailer(len(s.pages), bytes(16)), s.facts)
    with pytest.raises(CorruptionError, match="trailer checksum"):
        run(tmp_path / "e", good[:-1] + bytes([good[-1] ^ 1]), s.facts)
    with pytest.raises(CorruptionError, match="after the btree stream trailer"):
        run(tmp_path / "f", good + b"\0", s.facts)
    with pytest.raises(CorruptionError, match="ends in its pages"):
        run(tmp_path / "g", good[:HEADER_SIZE + 3 * PS + 10], s.facts)
    with pytest.raises(CorruptionError, match="no trailer"):
        dest = tmp_path / "h"
        dest.mkdir()
        drv = restore_driver(dest)
        try:
            feed(drv, good[:-5], last=False)
            drv.end()
        finally:
            drv.cancel()


def test_vp_facts_must_agree(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, s = made
    with pytest.raises(CorruptionError, match="root_hash"):
        run(tmp_path / "a", s.build(), {**s.facts, "root_hash": "00" * 16})
    with pytest.raises(CorruptionError, match="txnid"):
        run(tmp_path / "b", s.build(), {**s.facts, "txnid": s.facts["txnid"] + 1})


def test_bytes_on_a_table_stream(made: tuple[Path, Stream], tmp_path: Path) -> None:
    _base, _s = made
    tmp_path.joinpath("d").mkdir()
    drv = restore_driver(tmp_path / "d")
    with pytest.raises(CorruptionError, match="table stream 1"):
        drv.send_data(Buffer(3, 1, b"abc", True))
    assert drv.send_data(Buffer(0, 2, b"", True)) is Result.OK
    drv.cancel()


def test_newer_driver_version(made: tuple[Path, Stream], tmp_path: Path) -> None:
    base, _s = made
    with pytest.raises(VersionError):
        BtreeBackupEngine().get_restore(2, [], RestoreFlags(tmp_path))

    class Future(BtreeBackupEngine):
        version = 2

    with lamina.open(base / "db", create=False) as db:
        backup(db, tmp_path / "future", engine=Future(db.store))
    with pytest.raises(VersionError):
        restore(tmp_path / "future", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_image_with_a_forged_chunk(made: tuple[Path, Stream], tmp_path: Path) -> None:
    """Through the kernel: a chunk whose checksums are valid but whose page is wrong is
    refused by the driver (before the manifest is even read); nothing is left."""
    base, _s = made
    image = tmp_path / "img"
    image.write_bytes((base / "img").read_bytes())

    def damage(payload: bytes) -> bytes:
        return payload[:2000] + bytes([payload[2000] ^ 0xFF]) + payload[2001:]

    rewrite_chunk(image, 1, damage)
    with pytest.raises(CorruptionError, match="btree stream offset"):
        restore(image, tmp_path / "dest")
    assert not (tmp_path / "dest" / DATA_FILE_NAME).exists()



def test_verify_only_proves_the_same(made: tuple[Path, Stream]) -> None:
    """With no destination the driver writes nothing but still refuses a forged page."""
    _base, s = made
    ok = restore_driver(None)
    feed(ok, s.build())
    ok.set_vp_info(BtreeVpFacts.from_json(s.facts, "test facts"))
    assert ok.end() is Result.OK
    i = find(s, lambda _n, p: page_type(p) == BF.PAGE_LEAF and b"v4" in p)
    pages = list(s.pages)
    pages[i] = fix(pages[i].replace(b"v4", b"w4", 1))
    bad = restore_driver(None)
    with pytest.raises(CorruptionError, match="Merkle"):  # while streaming, or at the end
        feed(bad, s.build(pages=pages))
        bad.end()
    assert bad.cancel() is Result.OK


def test_a_tiny_image_cannot_declare_a_huge_file(tmp_path: Path) -> None:
    """A 0-page stream whose (re-hashed, keyless) header claims 10^8 pages: refused at once
    by restore, deep verify and chain verify, instead of work and memory per claimed page."""
    import time
    import uuid

    from lamina import online
    from lamina.backup import image_format as IF
    from lamina.backup.image_writer import ImageWriter
    from lamina.engines.btree.stream import encode_header, new_pages_hasher

    total = 100_000_000
    meta = BF.Meta(1024, 1, 1, 0, total, 1, BF.RootDesc(), BF.RootDesc(), time.time_ns())
    stream = encode_header(meta, 0) + encode_trailer(0, new_pages_hasher().digest())
    catalog = IF.ImageCatalog((IF.CatalogDriver("btree", 1, IF.DriverKind.AT_BEGIN, 0),), ())
    image = tmp_path / "evil.img"
    with ImageWriter(image, IF.ImageHeader(uuid.uuid4(), uuid.uuid4(), time.time_ns(), "x"),
                     catalog) as writer:
        writer.write_chunk(0, stream, True)
        writer.finish(vp_seq=1, vp_wall_ns=time.time_ns(), blocker_held_ns=0, vp_facts=[{
            "txnid": 1, "commit_seq": 1, "root_hash": meta.root_hash.hex(),
            "page_size": 1024, "total_pages": total, "pages_sent": 0,
            "pages_hash": new_pages_hasher().hexdigest()}])
    started = time.monotonic()
    for attempt in (lambda: online.verify(image, deep=True),
                    lambda: online.restore(image, tmp_path / "out"),
                    lambda: online.verify_chain([image], deep=True)):
        with pytest.raises(CorruptionError, match="free list could hold"):
            attempt()
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()
