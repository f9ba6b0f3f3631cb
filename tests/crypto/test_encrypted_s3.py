"""Encrypted repositories on S3 (the local SeaweedFS server): the same guarantees as on a
local directory — fulls, layers, restore, deep verify, prune merging into a sealed synthetic
full, key changes — and no object of the prefix (images, key files, index, config, upload
descriptions) holds the database's plaintext."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sealed import MARKER, PASSPHRASE, change, make_db

import lamina
from lamina.backup import image_format as F
from lamina.errors import AuthenticationError
from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from support import cli


def _open(url: str, passphrase: bytes = PASSPHRASE) -> Repository:
    return Repository.open(url, passphrase=lambda: passphrase)


def _backup(repo: Repository, db_path: Path) -> str:
    with lamina.open(db_path) as db:
        return str(repo.backup(db).backup_id)


def _objects(repo: Repository) -> dict[str, bytes]:
    return {s.key: repo.storage.get_bytes(s.key) for s in repo.storage.list("")}


def _content(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    with lamina.open(path, readonly=True) as db, db.read() as txn:
        return dict(txn.table("t").items()), [row for _i, row in db.scan("a")]


def test_encrypted_s3_round_trip_prune_and_no_plaintext(s3_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db")
    Repository.init(s3_url, passphrase=PASSPHRASE, chain_limit=2)
    repo = _open(s3_url)
    ids = [_backup(repo, tmp_path / "db")]
    for n in range(3):
        change(tmp_path / "db", n + 1)
        ids.append(_backup(repo, tmp_path / "db"))
    entries, _ = repo.list()
    assert [e.record.kind for e in entries] == ["full", "layer", "layer", "full"]
    assert repo.verify(deep=True).ok
    repo.restore(tmp_path / "r-2", ids[2])
    repo.restore(tmp_path / "r-last")
    assert _content(tmp_path / "r-last") == _content(tmp_path / "db")
    change(tmp_path / "db", 9)
    last = _backup(repo, tmp_path / "db")  # a layer on the second full
    result = repo.prune(KeepPolicy(last=1))
    assert [str(i) for i in result.plan.done_merges] == [last]
    repo.restore(tmp_path / "r-pruned")
    assert _content(tmp_path / "r-pruned") == _content(tmp_path / "db")
    assert repo.verify(deep=True).ok
    objects = _objects(repo)
    assert any(k.startswith(L.KEYS_PREFIX) for k in objects)
    images = [k for k in objects if k.startswith(L.IMAGES_PREFIX)]
    assert images == [L.image_key(last)]
    for key, data in objects.items():
        assert MARKER not in data, key
    for key in images:
        assert F.decode_header(objects[key][:F.HEADER_SIZE]).sealed, key


def test_encrypted_s3_key_change_and_wrong_passphrase(s3_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=50)
    Repository.init(s3_url, passphrase=PASSPHRASE)
    repo = _open(s3_url)
    _backup(repo, tmp_path / "db")
    keys_before = {k for k in _objects(repo) if k.startswith(L.KEYS_PREFIX)}
    assert repo.keyfile is not None and repo.master is not None
    repo.keys.passwd(repo.keyfile, repo.master, b"a new passphrase")
    assert {k for k in _objects(repo) if k.startswith(L.KEYS_PREFIX)} == keys_before
    with pytest.raises(AuthenticationError):
        _open(s3_url, PASSPHRASE)
    _open(s3_url, b"a new passphrase").restore(tmp_path / "r")
    assert _content(tmp_path / "r") == _content(tmp_path / "db")
    env = {**os.environ, "LAMINA_PASSWORD": "not it"}
    run = cli.run("list", "--repo", s3_url, env=env)
    assert run.returncode == 14 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "Traceback" not in run.stderr
