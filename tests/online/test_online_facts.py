"""Image VP facts are cross-checked in full, by ``lamina restore`` and ``lamina verify
--deep``, for one image and for every image of a chain: a missing fact, a btree
``pages_hash`` other than the stream trailer's, an archive ``vp_seq`` other than the
image's VP, the last image's archive facts other than the tables assembled — each is
refused (exit 4, nothing restored).

The images are real backups whose manifest is rewritten and sealed again (manifest hash,
footer, whole-image hash: as ``tests/backup/image_surgery.py`` does), so the image format
itself stays valid (a plain ``lamina verify`` passes) and only the facts are wrong."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lamina
from lamina.backup import image_format as F
from support import cli

Facts = list[dict[str, Any]]
BTREE_FACTS = ["txnid", "commit_seq", "root_hash", "page_size", "total_pages", "pages_sent",
               "pages_hash"]
ARCHIVE_TABLE_FACTS = ["rows", "position", "generation", "last_commit_seq", "table_id"]


def reseal(src: Path, dst: Path, change: Callable[[F.Manifest], F.Manifest]) -> Path:
    """Copy the image ``src`` to ``dst`` with its manifest replaced by ``change(manifest)``,
    sealed again: manifest hash, footer offsets and whole-image hash valid."""
    raw = src.read_bytes()
    end = len(raw) - F.FOOTER_SIZE
    footer = F.decode_footer(raw[end:], end)
    body = raw[:footer.manifest_offset]
    manifest = F.encode_manifest(change(F.decode_manifest(raw[footer.manifest_offset:end],
                                                          footer.manifest_offset)))
    hasher = F.data_hasher()
    hasher.update(body + manifest)
    dst.write_bytes(body + manifest
                    + F.encode_footer(F.Footer(len(body), len(manifest), hasher.digest())))
    return dst


def edit_facts(edit: Callable[[dict[str, Any], dict[str, Any]], None],
               ) -> Callable[[F.Manifest], F.Manifest]:
    """A manifest change calling ``edit(btree_facts, archive_facts)`` on copies."""

    def change(m: F.Manifest) -> F.Manifest:
        drivers: Facts = [copy.deepcopy(dict(d)) for d in m.vp.drivers]
        btree = next(d for d in drivers if "root_hash" in d)
        archive = next(d for d in drivers if "tables" in d)
        edit(btree, archive)
        return dataclasses.replace(m, vp=dataclasses.replace(m.vp, drivers=tuple(drivers)))

    return change


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A full image and a layer on it of a database with btree tables and an archive table
    (the layer sends btree pages and an archive tail)."""
    root = tmp_path_factory.mktemp("facts")
    with lamina.open(root / "db") as db:
        db.create_table("kv")
        db.create_table("log", "archive")
        with db.write() as w:
            for i in range(500):
                w.table("kv").put(b"k%04d" % i, b"v" * 50)
        db.append_many("log", [b"row %d" % i for i in range(300)])
        db.backup(root / "full.img")
        with db.write() as w:
            for i in range(0, 500, 7):
                w.table("kv").put(b"k%04d" % i, b"new")
        db.append_many("log", [b"more %d" % i for i in range(100)])
        db.backup(root / "layer.img", base=root / "full.img")
    return root / "full.img", root / "layer.img"


def refused(tmp_path: Path, *images: Path, why: str) -> None:
    """``restore`` and ``verify --deep`` of ``images`` exit 4 naming ``why``, nothing is
    left at the destination; a plain ``verify`` (the image format) still passes."""
    names = [str(i) for i in images]
    assert cli.invoke("verify", *names).code == 0
    dest = tmp_path / "restored"
    code, _out, err = cli.invoke("restore", *names, "--to", str(dest), "--no-progress")
    assert code == 4, err
    assert why in err, err
    assert not dest.exists()
    code, _out, err = cli.invoke("verify", *names, "--deep", "--no-progress")
    assert code == 4, err
    assert why in err, err


def test_the_images_as_taken_restore_and_verify(images: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    full, layer = images
    for chain in ([full], [full, layer]):
        names = [str(i) for i in chain]
        dest = tmp_path / f"r{len(chain)}"
        assert cli.invoke("restore", *names, "--to", str(dest), "--no-progress").code == 0
        assert cli.invoke("verify", *names, "--deep", "--no-progress").code == 0


@pytest.mark.parametrize("fact", BTREE_FACTS)
def test_an_image_missing_a_btree_fact_is_refused(images: tuple[Path, Path], tmp_path: Path,
                                                  fact: str) -> None:
    bad = reseal(images[0], tmp_path / "bad.img",
                 edit_facts(lambda btree, _archive: btree.pop(fact)))
    refused(tmp_path, bad, why=f"VP fact {fact!r} is missing")


@pytest.mark.parametrize("fact", [*ARCHIVE_TABLE_FACTS, "vp_seq"])
def test_an_image_missing_an_archive_fact_is_refused(images: tuple[Path, Path],
                                                     tmp_path: Path, fact: str) -> None:
    def drop(_btree: dict[str, Any], archive: dict[str, Any]) -> None:
        if fact == "vp_seq":
            archive.pop("vp_seq")
        else:
            archive["tables"]["log"].pop(fact)

    bad = reseal(images[0], tmp_path / "bad.img", edit_facts(drop))
    refused(tmp_path, bad, why=f"VP fact {fact!r} is missing")


def _other_pages_hash(btree: dict[str, Any], _archive: dict[str, Any]) -> None:
    btree["pages_hash"] = bytes(a ^ 1 for a in bytes.fromhex(btree["pages_hash"])).hex()


def test_a_pages_hash_other_than_the_trailers_is_refused(images: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    bad = reseal(images[0], tmp_path / "bad.img", edit_facts(_other_pages_hash))
    refused(tmp_path, bad, why="pages_hash")


@pytest.mark.parametrize("which", ["full", "layer"])
def test_a_chain_checks_every_images_pages_hash(images: tuple[Path, Path], tmp_path: Path,
                                                which: str) -> None:
    full, layer = images
    if which == "full":
        full = reseal(full, tmp_path / "full.img", edit_facts(_other_pages_hash))
    else:
        layer = reseal(layer, tmp_path / "layer.img", edit_facts(_other_pages_hash))
    refused(tmp_path, full, layer, why="btree pages hash")


@pytest.mark.parametrize("where", ["facts", "manifest"])
def test_an_archive_vp_seq_other_than_the_images_is_refused(
        images: tuple[Path, Path], tmp_path: Path, where: str) -> None:
    """The archive facts' ``vp_seq`` one more than the manifest's VP seq, or the manifest's
    VP seq one more than the facts' (and every stream's) — both directions refused."""
    if where == "facts":
        def later(_btree: dict[str, Any], archive: dict[str, Any]) -> None:
            archive["vp_seq"] += 1
        change = edit_facts(later)
    else:
        def change(m: F.Manifest) -> F.Manifest:
            return dataclasses.replace(m, vp=dataclasses.replace(
                m.vp, commit_seq=m.vp.commit_seq + 1))
    bad = reseal(images[0], tmp_path / "bad.img", change)
    refused(tmp_path, bad, why="VP")


@pytest.mark.parametrize("which", ["full", "layer"])
def test_a_chain_checks_every_images_archive_vp_seq(images: tuple[Path, Path],
                                                    tmp_path: Path, which: str) -> None:
    def later(_btree: dict[str, Any], archive: dict[str, Any]) -> None:
        archive["vp_seq"] += 1

    full, layer = images
    if which == "full":
        full = reseal(full, tmp_path / "full.img", edit_facts(later))
    else:
        layer = reseal(layer, tmp_path / "layer.img", edit_facts(later))
    refused(tmp_path, full, layer, why="VP fact 'vp_seq'")


@pytest.mark.parametrize("fact", ["rows", "last_commit_seq"])
def test_a_chain_checks_the_last_images_archive_facts(images: tuple[Path, Path],
                                                      tmp_path: Path, fact: str) -> None:
    def more(_btree: dict[str, Any], archive: dict[str, Any]) -> None:
        archive["tables"]["log"][fact] += 1

    full, layer = images
    layer = reseal(layer, tmp_path / "layer.img", edit_facts(more))
    refused(tmp_path, full, layer, why="archive table 'log'")


def test_btree_facts_after_the_images_vp_are_refused(tmp_path: Path) -> None:
    """The btree driver's ``commit_seq`` (its last commit at or before the VP) after the
    manifest's VP seq: the facts belong to another VP."""
    with lamina.open(tmp_path / "db") as db:
        db.create_table("kv")
        db.put("kv", b"k", b"v")
        db.backup(tmp_path / "good.img")

    def earlier(m: F.Manifest) -> F.Manifest:
        btree = next(d for d in m.vp.drivers if "root_hash" in d)
        return dataclasses.replace(m, vp=dataclasses.replace(
            m.vp, commit_seq=btree["commit_seq"] - 1))

    bad = reseal(tmp_path / "good.img", tmp_path / "bad.img", earlier)
    refused(tmp_path, bad, why="after the image's VP commit seq")
