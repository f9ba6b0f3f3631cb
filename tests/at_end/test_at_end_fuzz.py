"""Fuzzing the readers of at-end streams (untrusted bytes): the section splitter and both
engines' at-end restore drivers, fed real at-end streams with bytes flipped, cut or
appended. Every outcome is a clean LaminaError (or acceptance of an unchanged stream),
never another exception, and a cancelled verify leaves no temporary directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lamina
from lamina import online
from lamina.backup.image_reader import ImageReader, open_image_file
from lamina.core.driver import (
    Buffer,
    DriverKind,
    RestoreDriver,
    RestoreFlags,
    Result,
    TableSpec,
    VpFacts,
)
from lamina.core.sections import SectionSplitter
from lamina.engines.archive.at_end_restore import ArchiveAtEndRestoreDriver
from lamina.engines.archive.facts import ArchiveVpFacts
from lamina.engines.btree.at_end_restore import BtreeAtEndRestoreDriver
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.errors import CorruptionError, LaminaError

_STREAMS: dict[str, tuple[list[TableSpec], bytes]] = {}
_FACTS: dict[str, VpFacts] = {}


@pytest.fixture(scope="module", autouse=True)
def _streams(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One at-end image of a small database; its btree stream and archive stream."""
    root = tmp_path_factory.mktemp("at-end-fuzz")
    with lamina.open(root / "db", page_size=1024) as db:
        db.create_table("t", engine="btree")
        db.create_table("a", engine="archive")
        with db.write() as txn:
            for i in range(60):
                txn.table("t").put(b"k%03d" % i, b"v" * 40)
        db.append_many("a", [b"row %d" % i for i in range(50)])
        online.backup(db, root / "img", vp="end", buf_size=512)
    with open_image_file(root / "img") as f:
        reader = ImageReader(f)
        catalog = reader.catalog
        data: dict[int, bytearray] = {}
        for chunk in reader.chunks():
            data.setdefault(chunk.stream, bytearray()).extend(chunk.data)
        manifest = reader.manifest
        assert manifest is not None
    for di, d in enumerate(catalog.drivers):
        assert d.kind is DriverKind.AT_END
        facts = manifest.vp.drivers[di]
        if d.name == "btree":
            _FACTS["btree"] = BtreeVpFacts.from_json(facts, "btree")
            _STREAMS["btree"] = ([], bytes(data[d.common_stream]))
        else:
            _FACTS["archive"] = ArchiveVpFacts.from_json(facts, "archive")
            (t,) = catalog.tables_of(di)
            _STREAMS["archive"] = ([TableSpec(t.name, t.engine, t.table_id)],
                                   bytes(data[t.stream]))


def _driver(engine: str, tables: list[TableSpec]) -> RestoreDriver:
    flags = RestoreFlags(None, kind=DriverKind.AT_END)
    if engine == "btree":
        return BtreeAtEndRestoreDriver(tables, flags)
    return ArchiveAtEndRestoreDriver(tables, flags)


def _feed(engine: str, stream: bytes, piece: int) -> None:
    """Feed ``stream`` (local stream 0 or 1) in pieces; raises what the driver reports."""
    tables, _ = _STREAMS[engine]
    driver = _driver(engine, tables)
    local = 0 if engine == "btree" else 1
    before = set(Path(tempfile.gettempdir()).iterdir())
    try:
        assert driver.begin() is Result.OK
        for at in range(0, max(len(stream), 1), piece):
            data = stream[at:at + piece]
            result = driver.send_data(Buffer(len(data), local, data,
                                             at + piece >= len(stream)))
            if result is Result.ERROR:
                assert driver.error is not None
                raise driver.error
        driver.set_vp_info(_FACTS[engine])
        if driver.end() is Result.ERROR:
            assert driver.error is not None
            raise driver.error
    except BaseException:
        assert driver.cancel() is Result.OK
        assert set(Path(tempfile.gettempdir()).iterdir()) <= before  # scratch removed
        raise


@pytest.mark.parametrize("engine", ["btree", "archive"])
def test_the_unchanged_streams_are_accepted(engine: str) -> None:
    _feed(engine, _STREAMS[engine][1], 333)


@settings(max_examples=150, deadline=None)
@given(engine=st.sampled_from(["btree", "archive"]), data=st.data())
def test_damaged_at_end_streams_fail_cleanly(engine: str, data: st.DataObject) -> None:
    stream = bytearray(_STREAMS[engine][1])
    how = data.draw(st.sampled_from(["flip", "cut", "append"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(stream) - 1))
        stream[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        del stream[data.draw(st.integers(0, len(stream) - 1)):]
    else:
        stream += data.draw(st.binary(min_size=1, max_size=300))
    with pytest.raises(LaminaError):
        _feed(engine, bytes(stream), data.draw(st.integers(1, 4096)))


@given(st.binary(max_size=200), st.integers(1, 64))
def test_splitter_hands_every_byte_to_exactly_one_section(blob: bytes, piece: int) -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    lasts: list[str] = []

    def length(head: bytes) -> int:
        return 4 + head[0] % 50

    def feed_first(d: bytes | bytearray | memoryview, last: bool) -> None:
        first.append(bytes(d))
        if last:
            lasts.append("first")

    def feed_second(d: bytes | bytearray | memoryview, last: bool) -> None:
        second.append(bytes(d))
        if last:
            lasts.append("second")

    splitter = SectionSplitter(4, length, feed_first, feed_second, "test stream")
    pieces = [blob[i:i + piece] for i in range(0, len(blob), piece)] or [b""]
    want = 4 + blob[0] % 50 if len(blob) >= 4 else None
    try:
        for i, p in enumerate(pieces):
            splitter.feed(p, i == len(pieces) - 1)
    except CorruptionError:
        assert want is None or len(blob) < want  # it ended inside the initial section
        return
    assert want is not None and len(blob) >= want
    assert b"".join(first) == blob[:want] and b"".join(second) == blob[want:]
    assert lasts == ["first", "second"]
