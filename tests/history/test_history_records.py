"""Backup history records (issue 10, items 8 and 12): a finished backup records its image
id; a newer writer's fields never make a reader drop records (nor the next append truncate
them); a hard interrupt is ``cancelled``; a request refused before it starts (rate, codec
level, table or driver choice) records nothing. Compression levels come from one table.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import xxhash

import lamina
from lamina.backup import history as H
from lamina.backup.history import BackupHistory
from lamina.core import compression
from lamina.errors import DriverChoiceError, TableNotFoundError, UsageError


@pytest.fixture()
def db(tmp_path: Path):
    with lamina.open(tmp_path / "db") as database:
        database.create_table("t")
        database.create_table("log", "archive")
        database.put("t", b"k", b"v")
        database.append("log", b"row")
        yield database


def _record(fields: dict[str, object]) -> bytes:
    payload = json.dumps(fields, sort_keys=True).encode()
    return H.RECORD.pack(len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


def _raw_record(payload: bytes) -> bytes:
    return H.RECORD.pack(len(payload), xxhash.xxh3_64_intdigest(payload)) + payload


def _base(backup_id: str, started_ns: int, **more: object) -> dict[str, object]:
    return {"backup_id": backup_id, "pid": 1, "started_ns": started_ns, "state": "done",
            **more}


# ---------------------------------------------------------------- image id
def test_a_finished_backup_records_its_image_id(db, tmp_path: Path) -> None:
    to_file = db.backup(tmp_path / "a.img")
    to_stream = db.backup(io.BytesIO())
    entries = BackupHistory(db.path, db.lockfile).entries()
    assert [e.image_id for e in entries] == [str(to_file.image_id), str(to_stream.image_id)]
    assert entries[1].target == "-"
    assert entries[0].to_json()["image_id"] == str(to_file.image_id)
    # Its running record has none; nor has a failed or cancelled backup.
    records = BackupHistory(db.path, db.lockfile).records()
    assert [r.image_id is None for r in records] == [True, False, True, False]


def test_failed_and_cancelled_backups_record_no_image_id(db, tmp_path: Path) -> None:
    (tmp_path / "exists.img").write_bytes(b"x")
    with pytest.raises(lamina.errors.AlreadyExistsError):
        db.backup(tmp_path / "exists.img")
    with pytest.raises(lamina.errors.CancelledError):
        db.backup(tmp_path / "c.img", cancel=lambda: True)
    entries = BackupHistory(db.path, db.lockfile).entries()
    assert [(e.state, e.image_id) for e in entries] == [("error", None), ("cancelled", None)]


def test_records_of_older_builds_have_no_image_id() -> None:
    old = _base("0" * 8, 5, kind="full", target="x", bytes=3)  # no image_id field at all
    data = H._header() + _record(old)
    (entry,) = H.parse(data)
    assert entry.image_id is None and entry.bytes == 3 and entry.state == "done"


# ---------------------------------------------------------------- newer writers' records
def test_unknown_fields_are_ignored_and_later_records_still_read(db) -> None:
    newer = _base("b-newer", 2, image_id="img-2", compression_ratio=0.5,
                  future={"nested": [1, 2]})
    data = (H._header() + _record(_base("a-old", 1)) + _record(newer)
            + _record(_base("c-after", 3, image_id="img-3")))
    entries = H.parse(data)
    assert [(e.backup_id, e.image_id) for e in entries] == \
        [("a-old", None), ("b-newer", "img-2"), ("c-after", "img-3")]
    # The file as a newer build wrote it: an append by this build keeps every record.
    path = db.path / H.FILE_NAME
    path.write_bytes(data)
    hist = BackupHistory(db.path, db.lockfile)
    hist.finish(hist.start("full", "y"), "done", image_id="img-4")
    after = path.read_bytes()
    assert after.startswith(data), "the newer writer's records were truncated"
    assert [e.backup_id for e in hist.entries()][:3] == ["a-old", "b-newer", "c-after"]
    assert hist.entries()[-1].image_id == "img-4"


def test_an_intact_record_this_build_cannot_read_is_skipped_not_a_stop(db) -> None:
    data = (H._header() + _record(_base("a", 1)) + _raw_record(b"[1, 2, 3]")
            + _raw_record(b"not json") + _record({"pid": 1, "started_ns": 4})
            + _record(_base("e", 5)))
    assert [e.backup_id for e in H.parse(data)] == ["a", "e"]
    path = db.path / H.FILE_NAME
    path.write_bytes(data)
    hist = BackupHistory(db.path, db.lockfile)
    hist.append(H.HistoryEntry("f", 1, 6))
    assert path.read_bytes().startswith(data)
    assert [e.backup_id for e in hist.entries()] == ["a", "e", "f"]


def test_a_torn_tail_still_ends_the_records() -> None:
    data = H._header() + _record(_base("a", 1)) + _record(_base("b", 2))[:-3]
    assert [e.backup_id for e in H.parse(data)] == ["a"]


def test_compaction_keeps_a_newer_writers_fields(db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(H, "KEEP", 2)
    monkeypatch.setattr(H, "COMPACT_AT", 4)
    newer = _record(_base("n", 10, future="kept"))
    path = db.path / H.FILE_NAME
    path.write_bytes(H._header() + _record(_base("a", 1)) + _record(_base("b", 2))
                     + _record(_base("c", 3)) + newer)
    hist = BackupHistory(db.path, db.lockfile)
    hist.append(H.HistoryEntry("z", 1, 20))  # 4 records: compacted first
    data = path.read_bytes()
    assert newer in data, "the kept record is copied as written"
    assert [e.backup_id for e in hist.entries()] == ["c", "n", "z"]  # kept 2, then z


# ---------------------------------------------------------------- outcomes
def test_a_keyboard_interrupt_is_recorded_as_cancelled(db, tmp_path: Path) -> None:
    def progress(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        db.backup(tmp_path / "i.img", progress=progress)
    (entry,) = BackupHistory(db.path, db.lockfile).entries()
    assert entry.state == "cancelled", entry
    assert "KeyboardInterrupt" not in entry.error
    assert not (tmp_path / "i.img").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["db"], "no temporary image is left"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"max_rate": 0}, UsageError),
    ({"max_rate": -1.0}, UsageError),
    ({"level": 99}, UsageError),
    ({"level": -8}, UsageError),
    ({"codec": "zlib", "level": 10}, UsageError),
    ({"codec": "none", "level": 1}, UsageError),
    ({"codec": "lz4"}, UsageError),
    ({"tables": ["nope"]}, TableNotFoundError),
    ({"driver": "bogus"}, DriverChoiceError),
    ({"driver": {"nope": "default"}}, DriverChoiceError),
    ({"driver": "t=bogus"}, DriverChoiceError),
], ids=lambda v: repr(v))
def test_a_refused_backup_records_nothing_and_writes_nothing(
        db, tmp_path: Path, kwargs: dict[str, object], error: type[Exception]) -> None:
    history_file = db.path / H.FILE_NAME
    assert not history_file.exists()
    with pytest.raises(error):
        db.backup(tmp_path / "refused.img", **kwargs)
    assert not history_file.exists() or BackupHistory(db.path, db.lockfile).records() == []
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_a_failure_after_the_start_is_still_recorded(db, tmp_path: Path) -> None:
    """Validation before the start does not lose the record of a real failure."""
    (tmp_path / "taken.img").write_bytes(b"")
    with pytest.raises(lamina.errors.AlreadyExistsError):
        db.backup(tmp_path / "taken.img")
    (entry,) = BackupHistory(db.path, db.lockfile).entries()
    assert entry.state == "error" and "taken.img" in entry.error


# ---------------------------------------------------------------- one table of levels
def test_valid_levels_are_accepted_everywhere(db, tmp_path: Path) -> None:
    for codec, (low, high) in (("zstd", (-7, 22)), ("zlib", (0, 9))):
        assert compression.LEVEL_RANGES[codec] == (low, high)
        for level in (low, high):
            db.backup(tmp_path / f"{codec}{level}.img", codec=codec, level=level)
            db.create_table(f"a_{codec}_{level + 10}", "archive", codec=codec, level=level)
    assert compression.LEVEL_RANGES["none"] is None
    db.backup(tmp_path / "none.img", codec="none")
    db.create_table("a_none", "archive", codec="none")
    assert db.check().ok


def test_every_user_of_levels_reads_the_one_table(db, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow zstd's range in the core table: the backup codec, the archive engine and the
    CLI all refuse what it no longer holds (none of them keeps a copy)."""
    from lamina.backup.codec import Compressor
    from lamina.backup.image_format import Codec
    from lamina.cli.common import check_level

    monkeypatch.setitem(compression.LEVEL_RANGES, "zstd", (1, 3))
    with pytest.raises(UsageError, match=r"1\.\.3"):
        db.backup(tmp_path / "x.img", level=5)
    with pytest.raises(UsageError, match=r"1\.\.3"):
        Compressor(Codec.ZSTD, 5)
    with pytest.raises(UsageError, match=r"1\.\.3"):
        db.create_table("a", "archive", codec="zstd", level=5)
    with pytest.raises(UsageError, match=r"1\.\.3"):
        check_level("zstd", 5)
    db.backup(tmp_path / "ok.img", level=3)
    monkeypatch.undo()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["db", "ok.img"]


def test_a_codec_without_levels_restores_its_archive_tables(db, tmp_path: Path) -> None:
    """An archive table with codec none records level 0; a logical restore recreates it
    (it passes no level for a codec that takes none)."""
    db.create_table("plain", "archive", codec="none")
    db.append("plain", b"raw row")
    image = tmp_path / "logical.img"
    db.backup(image, driver="snapshot")
    copy = tmp_path / "copy"
    lamina.restore(image, copy)
    with lamina.open(copy) as restored:
        assert [r for _i, r in restored.scan("plain")] == [b"raw row"]
        assert restored.check().ok

