"""Forgeries that every checksum lets through, one test each: the proofs behind them (the
archive block chain, the database root hash, the logical run checks and content digests)
refuse them — ``lamina check`` with exit 7, ``verify --deep`` and ``restore`` with exit 4,
nothing published at the destination."""

from __future__ import annotations

import json
from pathlib import Path

import lamina
from lamina.backup.image_reader import read_info
from lamina.engines.archive import format as AF
from lamina.engines.archive.meta import decode_slot, encode_slot
from lamina.engines.archive.stream import STREAM_HEAD_SIZE
from support import cli, expect_damaged

from .surgery import (
    forge_archive_stream,
    forge_block,
    forge_logical_stream,
    rewrite,
    stream_of,
    with_root_hash,
)


def _db(path: Path) -> Path:
    with lamina.open(path) as db:
        db.create_table("kv")
        db.create_table("log", "archive", codec="none")
        for i in range(20):
            db.put("kv", b"k%03d" % i, b"value %d" % i)
        db.append_many("log", [b"row %d" % i for i in range(30)])
        db.append("log", b"one more")
    return path


def _refused(image: Path, tmp: Path, what: str) -> None:
    """``verify --deep`` and ``restore`` of ``image`` both exit 4 naming ``what``; nothing
    is left at the destination."""
    proc = cli.run("verify", "--deep", str(image))
    assert proc.returncode == 4, proc.stderr
    assert what in proc.stderr, proc.stderr
    dest = tmp / "restored"
    proc = cli.run("restore", str(image), "--to", str(dest))
    assert proc.returncode == 4, proc.stderr
    assert what in proc.stderr, proc.stderr
    assert not dest.exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".restored")]


def test_a_forged_archive_block_in_the_database_fails_the_checker(tmp_path: Path) -> None:
    db = _db(tmp_path / "db")
    assert cli.run("check", str(db)).returncode == 0
    arz = db / "log.ARZ"
    arz.write_bytes(forge_block(arz.read_bytes(), AF.ARZ_HEADER_SIZE))
    expect_damaged(db, "an archive block forged on purpose")
    proc = cli.run("check", "--json", str(db))
    assert proc.returncode == 7, proc.stderr
    assert "block chain head differs" in proc.stdout


def test_an_arm_whose_chain_head_disagrees_fails_the_checker(tmp_path: Path) -> None:
    db = _db(tmp_path / "db")
    arm = db / "log.ARM"
    raw = bytearray(arm.read_bytes())
    for slot in range(AF.ARM_SLOT_COUNT):
        at = slot * AF.ARM_SLOT_STRIDE
        state, meta, _v = decode_slot(bytes(raw[at:at + AF.ARM_SLOT_SIZE]))
        assert meta is not None, state
        raw[at:at + AF.ARM_SLOT_SIZE] = encode_slot(meta.replace(chain_head=b"\x07" * 32))
    arm.write_bytes(bytes(raw))
    expect_damaged(db, "a meta chain head forged on purpose")
    proc = cli.run("check", str(db))
    assert proc.returncode == 7, proc.stderr
    assert "block chain head differs" in proc.stdout + proc.stderr
    # Such a table backs up (its meta is self-consistent), but no restore accepts the image.
    image = tmp_path / "img"
    assert cli.run("backup", str(db), str(image)).returncode == 0
    _refused(image, tmp_path, "chain head")


def test_an_image_with_a_forged_archive_block_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "img"
    with lamina.open(_db(tmp_path / "db")) as db:
        db.backup(image)
    forged = rewrite(image, tmp_path / "forged", stream=stream_of(image, "log"),
                     edit=forge_archive_stream)
    assert cli.run("verify", str(forged)).returncode == 0  # every checksum is valid
    _refused(forged, tmp_path, "chain head")


def test_an_image_whose_root_hash_disagrees_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "img"
    with lamina.open(_db(tmp_path / "db")) as db:
        db.backup(image)
    forged = rewrite(image, tmp_path / "forged", manifest=with_root_hash(b"\x01" * 32))
    assert cli.run("verify", str(forged)).returncode == 0
    _refused(forged, tmp_path, "root hash")
    unsealed = rewrite(image, tmp_path / "none", manifest=with_root_hash(bytes(32)))
    _refused(unsealed, tmp_path, "records no root hash")


def test_a_logical_record_changed_under_recomputed_chunk_checksums_is_refused(
        tmp_path: Path) -> None:
    image = tmp_path / "img"
    with lamina.open(_db(tmp_path / "db")) as db:
        db.backup(image, driver="snapshot")
        kv_id = db.table_info("kv").table_id
    stream = stream_of(image, "kv")
    forged = rewrite(image, tmp_path / "forged", stream=stream,
                     edit=lambda d: forge_logical_stream(d, "kv", kv_id, reseal_runs=False))
    assert cli.run("verify", str(forged)).returncode == 0
    _refused(forged, tmp_path, "run checksum")
    # The forger recomputes the run checks too: the manifest's content digest still differs.
    resealed = rewrite(image, tmp_path / "resealed", stream=stream,
                       edit=lambda d: forge_logical_stream(d, "kv", kv_id, reseal_runs=True))
    assert cli.run("verify", str(resealed)).returncode == 0
    _refused(resealed, tmp_path, "content digest")


def test_stat_and_info_show_the_root_hash(tmp_path: Path) -> None:
    db = _db(tmp_path / "db")
    image = tmp_path / "img"
    backup = json.loads(cli.run_ok("backup", "--json", str(db), str(image)).stdout)
    stat = json.loads(cli.run_ok("stat", "--json", str(db)).stdout)
    info = json.loads(cli.run_ok("info", "--json", str(image)).stdout)
    assert stat["root_hash"] == info["root_hash"] == backup["root_hash"]
    assert len(bytes.fromhex(stat["root_hash"])) == 32
    assert info["root_hash"] == read_info(image).manifest.root_hash.hex()
    assert f"root_hash: {info['root_hash']}" in cli.run_ok("info", str(image)).stdout
    assert info["root_hash"] in cli.run_ok("stat", str(db)).stdout
    again = cli.run_ok("backup", str(db), str(tmp_path / "again")).stdout  # same VP state
    assert f"root hash: {info['root_hash']}" in again


def test_same_vp_same_root_hash_one_row_more_another(tmp_path: Path) -> None:
    db = _db(tmp_path / "db")
    with lamina.open(db) as handle:
        handle.backup(tmp_path / "a")
        handle.append("log", b"the one row")
        handle.backup(tmp_path / "b")
    roots = []
    for name, image in (("r1", "a"), ("r2", "a"), ("r3", "b")):
        cli.run_ok("restore", str(tmp_path / image), "--to", str(tmp_path / name))
        roots.append(json.loads(cli.run_ok("stat", "--json", str(tmp_path / name)).stdout)
                     ["root_hash"])
    assert roots[0] == roots[1] == read_info(tmp_path / "a").manifest.root_hash.hex()
    assert roots[2] != roots[0]
    assert roots[2] == read_info(tmp_path / "b").manifest.root_hash.hex()


def _chain(tmp: Path) -> tuple[Path, Path]:
    full, layer = tmp / "full", tmp / "layer"
    with lamina.open(_db(tmp / "db")) as db:
        db.backup(full)
        db.put("kv", b"k000", b"changed")
        db.append_many("log", [b"tail row %d" % i for i in range(5)])
        db.backup(layer, base=full)
    return full, layer


def _chain_refused(images: list[Path], tmp: Path, what: str) -> None:
    proc = cli.run("verify", "--deep", *map(str, images))
    assert proc.returncode == 4 and what in proc.stderr, proc.stderr
    dest = tmp / "restored"
    proc = cli.run("restore", *map(str, images), "--to", str(dest))
    assert proc.returncode == 4 and what in proc.stderr, proc.stderr
    assert not dest.exists()


def test_a_layer_whose_root_hash_disagrees_is_refused(tmp_path: Path) -> None:
    full, layer = _chain(tmp_path)
    forged = rewrite(layer, tmp_path / "forged", manifest=with_root_hash(b"\x02" * 32))
    _chain_refused([full, forged], tmp_path, "root hash")
    cli.run_ok("restore", str(full), "--to", str(tmp_path / "prefix"))  # the prefix is sound


def test_a_forged_block_in_a_layers_archive_tail_is_refused(tmp_path: Path) -> None:
    full, layer = _chain(tmp_path)
    forged = rewrite(layer, tmp_path / "forged", stream=stream_of(layer, "log"),
                     edit=lambda d: forge_block(d, STREAM_HEAD_SIZE))
    assert cli.run("verify", str(full), str(forged)).returncode == 0
    _chain_refused([full, forged], tmp_path, "chain head")
