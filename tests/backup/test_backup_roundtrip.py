"""Round trips: scripted drivers -> image -> verify / info -> restore drivers, byte exact."""

from __future__ import annotations

import io
import random
import uuid
from pathlib import Path

import pytest
from backup_fakes import (
    DB_ID,
    MemRestoreEngine,
    Rig,
    Script,
    ScriptFacts,
    expected_by_table,
    leftover_files,
    random_streams,
    tables,
    two_driver_rig,
)

from lamina.backup import (
    BackupFlags,
    BaseImageRef,
    Codec,
    DriverGroup,
    DriverKind,
    ImageKind,
    ImageReader,
    read_info,
    restore_into_directory,
    run_backup,
    run_restore,
    verify_image,
)
from lamina.backup.kernel import lamina_version
from lamina.core.identity import Identity
from lamina.core.lockfile import LockFile
from lamina.errors import (
    AlreadyExistsError,
    CheckFailedError,
    NotFoundError,
    StorageError,
    UnsupportedError,
    VersionError,
)


class Trickle(io.RawIOBase):
    """A non-seekable stream (like stdin) that returns few bytes per read."""

    def __init__(self, data: bytes, seed: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else min(n, self.rng.randint(1, 97))
        out = self.data[self.pos: self.pos + n]
        self.pos += len(out)
        return out


def restore_engines(rig: Rig) -> dict[str, MemRestoreEngine]:
    return {e.name: MemRestoreEngine(e.name) for e in rig.engines}


def restored(engines: dict[str, MemRestoreEngine]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for engine in engines.values():
        out.update(engine.by_table())
    return out


def big_rig(seed: int, max_len: int) -> Rig:
    rng = random.Random(seed)
    rig = Rig()
    rig.add("btree", tables("b", 3, 1), Script(
        kind=DriverKind.AT_BEGIN, streams=random_streams(rng, 3, max_len), seed=seed))
    rig.add("archive", tables("a", 2, 100, "archive"), Script(
        kind=DriverKind.AT_BEGIN, streams=random_streams(rng, 2, max_len, common=False),
        seed=seed + 1, processing_every=5))
    rig.add("snapshot", tables("s", 2, 200), Script(
        kind=DriverKind.AT_END, streams=random_streams(rng, 2, max_len), prelock_waits=2,
        seed=seed + 2, busy_every=4))
    return rig


@pytest.mark.parametrize("codec", ["zstd", "zlib", "none"])
@pytest.mark.parametrize(("buf_size", "max_len"), [(1, 300), (7, 2000), (64, 5000),
                                                   (4096, 60000), (65536, 300000)])
def test_round_trip(tmp_path: Path, codec: str, buf_size: int, max_len: int) -> None:
    rig = big_rig(buf_size, max_len)
    result = rig.run(tmp_path / "img", codec=codec, buf_size=buf_size)
    report = verify_image(tmp_path / "img")
    info = read_info(tmp_path / "img")
    assert report.manifest == info.manifest == result.manifest
    assert report.size == info.size == result.size == (tmp_path / "img").stat().st_size
    assert report.raw_bytes == result.raw_bytes
    assert info.header.database_id == DB_ID and info.header.lamina_version == lamina_version()
    assert info.header.kind == ImageKind.FULL and info.manifest.base_image_id.int == 0
    assert [t.name for t in info.catalog.tables] == ["b0", "b1", "b2", "a0", "a1", "s0", "s1"]
    assert [(d.name, d.kind, d.common_stream) for d in info.catalog.drivers] == [
        ("btree", DriverKind.AT_BEGIN, 0), ("archive", DriverKind.AT_BEGIN, 1),
        ("snapshot", DriverKind.AT_END, 2)]
    assert [t.stream for t in info.catalog.tables] == list(range(3, 10))
    engines = restore_engines(rig)
    got = run_restore(tmp_path / "img", engines, tmp_path)
    assert got.manifest == result.manifest
    assert restored(engines) == expected_by_table(rig.specs)
    for engine in engines.values():
        assert engine.drivers[0].vp_facts == ScriptFacts({"facts": 1})
    if codec != "none" and max_len >= 5000:  # half the streams are compressible
        assert sum(s.stored_bytes for s in info.manifest.streams) < result.raw_bytes


def test_round_trip_through_streams(tmp_path: Path) -> None:
    rig = big_rig(21, 20000)
    out = io.BytesIO()
    result = rig.run(out, buf_size=1000)
    assert result.path is None and leftover_files(tmp_path) == []
    data = out.getvalue()
    assert len(data) == result.size
    report = verify_image(Trickle(data, seed=1))
    assert report.manifest == result.manifest
    engines = restore_engines(rig)
    run_restore(Trickle(data, seed=2), engines, tmp_path)
    assert restored(engines) == expected_by_table(rig.specs)


def test_chunks_come_in_order_with_last_flags(tmp_path: Path) -> None:
    rig = big_rig(22, 3000)
    rig.run(tmp_path / "img", buf_size=100)
    with open(tmp_path / "img", "rb") as f:
        reader = ImageReader(f)
        seqs: dict[int, list[int]] = {}
        lasts: dict[int, list[bool]] = {}
        for chunk in reader.chunks():
            seqs.setdefault(chunk.stream, []).append(chunk.seq)
            lasts.setdefault(chunk.stream, []).append(chunk.last)
        assert reader.manifest is not None
    for stream, s in seqs.items():
        assert s == list(range(len(s)))
        assert lasts[stream] == [False] * (len(s) - 1) + [True]
        assert reader.manifest.streams[stream].chunks == len(s)


def test_layer_image_records_its_base(tmp_path: Path) -> None:
    rig = Rig()
    base_vp = {"txnid": 812, "root_hash": "ab" * 16}
    engine = rig.add("btree", tables("t", 1, 1), Script(streams={1: b"delta"}))
    rig.groups[0] = DriverGroup(engine, rig.groups[0].tables,
                                BackupFlags(layer=True, base_facts=ScriptFacts(base_vp),
                                            base_vp_seq=40))
    base = BaseImageRef(uuid.uuid4(), 40)
    result = rig.run(tmp_path / "layer", base=base)
    assert engine.driver is not None and engine.driver.flags.base_facts == ScriptFacts(base_vp)
    info = read_info(tmp_path / "layer")
    assert info.header.kind == info.manifest.kind == ImageKind.LAYER
    assert info.manifest.base_image_id == base.image_id and info.manifest.base_vp_seq == 40
    assert info.to_json()["base_image_id"] == str(base.image_id)
    assert result.manifest == info.manifest
    engines = restore_engines(rig)
    run_restore(tmp_path / "layer", engines, tmp_path)
    assert engines["btree"].drivers[0].flags.layer is True


def test_empty_streams_and_no_data(tmp_path: Path) -> None:
    rig = Rig()
    rig.add("quiet", tables("q", 3, 1), Script(streams={}))
    rig.add("one", tables("o", 1, 9), Script(streams={1: b"", 0: b"common!"}))
    rig.run(tmp_path / "img")
    report = verify_image(tmp_path / "img")
    assert report.chunks == 1 and report.raw_bytes == 7
    engines = restore_engines(rig)
    run_restore(tmp_path / "img", engines, tmp_path)
    assert restored(engines) == {"#common:one": b"common!"}


def test_reports_are_json_ready(tmp_path: Path) -> None:
    import json

    rig = two_driver_rig(seed=23)
    rig.run(tmp_path / "img")
    info = read_info(tmp_path / "img").to_json()
    report = verify_image(tmp_path / "img").to_json()
    json.dumps(info)
    assert report.pop("ok") is True and report == info
    assert info["kind"] == "full" and info["vp"]["commit_seq"] == 41
    assert [t["name"] for t in info["tables"]] == ["t0", "t1", "s0", "s1", "s2"]
    assert info["drivers"][1] == {"name": "snapshot", "version": 1, "kind": "at end",
                                  "common_stream": 1, "vp_info": {"facts": 1}}


def test_real_lockfile_is_a_commit_blocker(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    lf = LockFile.open(tmp_path / "db", lambda f: f.set_commit_seq(99))
    try:
        rig = two_driver_rig(seed=24)
        rig.blocker.probe = lambda: lf.commit_blocker._exclusive  # drivers assert it in lock()
        result = run_backup(rig.groups, tmp_path / "img", commit_blocker=lf,
                            commit_seq=lf.commit_seq, database_id=DB_ID, buf_size=128)
        assert result.vp.commit_seq == 99
        assert not lf.commit_blocker._exclusive
        with lf.publishing_commit():  # commits flow again
            pass
    finally:
        lf.close()
    verify_image(tmp_path / "img")


def test_restore_refuses_unknown_and_future_drivers(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=25)
    rig.run(tmp_path / "img")
    engines = restore_engines(rig)
    del engines["snapshot"]
    with pytest.raises(UnsupportedError, match="snapshot"):
        run_restore(tmp_path / "img", engines, tmp_path)
    old = {"native": MemRestoreEngine("native"), "snapshot": MemRestoreEngine("snapshot",
                                                                              version=0)}
    with pytest.raises(VersionError):
        run_restore(tmp_path / "img", old, tmp_path)
    assert all(not e.log or e.log[-1][1] == "get_restore" for e in old.values())
    engines = restore_engines(rig)  # a lookup callable works as well as a mapping
    run_restore(tmp_path / "img", engines.get, tmp_path / "..")
    with pytest.raises(NotFoundError):
        run_restore(tmp_path / "missing", engines, tmp_path)
    with pytest.raises(NotFoundError):
        verify_image(tmp_path / "missing")
    with pytest.raises(NotFoundError):
        read_info(tmp_path / "missing")


@pytest.mark.parametrize("method", ["begin", "send_data", "end"])
@pytest.mark.parametrize("mode", ["error", "raise"])
def test_restore_driver_failure_cancels_all(tmp_path: Path, method: str, mode: str) -> None:
    rig = two_driver_rig(seed=26)
    rig.run(tmp_path / "img")
    log: list[tuple[str, str, bool]] = []
    engines = {"native": MemRestoreEngine("native", log),
               "snapshot": MemRestoreEngine("snapshot", log, fail={method: mode})}
    with pytest.raises(StorageError):
        restore_into_directory(tmp_path / "dest",
                               lambda tmp: run_restore(tmp_path / "img", engines, tmp))
    assert leftover_files(tmp_path) == ["img"]
    snapshot_calls = [m for w, m, _h in log if w == "snapshot"]
    native_calls = [m for w, m, _h in log if w == "native"]
    assert snapshot_calls[-1] == "cancel" and snapshot_calls.count("cancel") == 1
    # native ends before snapshot's end(); otherwise it is cancelled
    assert native_calls[-1] == ("end" if method == "end" else "cancel")


def test_restore_resends_on_busy(tmp_path: Path) -> None:
    rig = big_rig(27, 4000)
    rig.run(tmp_path / "img", buf_size=300)
    engines = {e.name: MemRestoreEngine(e.name, busy_every=3) for e in rig.engines}
    run_restore(tmp_path / "img", engines, tmp_path)
    assert restored(engines) == expected_by_table(rig.specs)


def test_restore_into_directory_publishes_verified_only(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=28)
    rig.run(tmp_path / "img")
    dest = tmp_path / "dest"
    progress: list[tuple[int, int | None]] = []

    def restore(tmp: Path) -> object:
        return run_restore(tmp_path / "img", restore_engines(rig), tmp,
                           progress=lambda d, e: progress.append((d, e)))

    def failing_check(tmp: Path, result: object) -> None:
        raise CheckFailedError("checker found problems")

    with pytest.raises(CheckFailedError):
        restore_into_directory(dest, restore, failing_check)
    assert leftover_files(tmp_path) == ["img"]
    checked: list[Path] = []
    restore_into_directory(dest, restore, lambda tmp, _r: checked.append(tmp))
    assert checked and checked[0].parent == tmp_path and checked[0].name.startswith(".dest.")
    assert sorted(p.name for p in dest.iterdir()) == ["native.restoring",
                                                      "snapshot.restoring"]
    assert progress[-1] == ((tmp_path / "img").stat().st_size,) * 2
    with pytest.raises(AlreadyExistsError):
        restore_into_directory(dest, restore)
    (dest / "old-file").write_bytes(b"old")
    with pytest.raises(AlreadyExistsError, match="not a Lamina database"):
        restore_into_directory(dest, restore, force=True)  # not a database: kept
    assert (dest / "old-file").read_bytes() == b"old"
    assert leftover_files(tmp_path) == ["dest", "img"]
    Identity.new().write(dest)  # now it is one (no process has it open)
    restore_into_directory(dest, restore, force=True)
    assert not (dest / "old-file").exists()
    assert leftover_files(tmp_path) == ["dest", "img"]
    with pytest.raises(NotFoundError):
        restore_into_directory(tmp_path / "no" / "dest", restore)


def test_codec_enum_accepted(tmp_path: Path) -> None:
    rig = two_driver_rig(seed=29)
    rig.run(tmp_path / "img", codec=Codec.ZLIB, level=1)
    verify_image(tmp_path / "img")
