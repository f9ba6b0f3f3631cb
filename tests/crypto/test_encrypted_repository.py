"""Encrypted repositories, each test on a local directory and on S3 (the session's
SeaweedFS): init, backups (full and layers), restore, deep verify, prune merging into a
sealed synthetic full, no plaintext in any object (every object of the directory or the
prefix, read around Lamina), key files through the storage protocol, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from sealed import MARKER, PASSPHRASE, backup, change, make_db, sealing

import lamina
from lamina.backup import image_format as F
from lamina.core.crypto.keyring import Keyring
from lamina.errors import AuthenticationError, CorruptionError, UsageError
from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L
from support.rawstore import RawStore


def _open(url: str, passphrase: bytes | None = PASSPHRASE) -> Repository:
    return Repository.open(url, passphrase=lambda: passphrase)


def _backup(repo: Repository, db_path: Path) -> str:
    db = lamina.open(db_path)
    try:
        return str(repo.backup(db).backup_id)
    finally:
        db.close()


def _content(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    with lamina.open(path, readonly=True) as db, db.read() as txn:
        return dict(txn.table("t").items()), [row for _i, row in db.scan("a")]


def test_round_trip_layers_prune_and_no_plaintext(repo_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db")
    Repository.init(repo_url, passphrase=PASSPHRASE, chain_limit=2)
    repo = _open(repo_url)
    ids = [_backup(repo, tmp_path / "db")]
    for n in range(4):
        change(tmp_path / "db", n + 1)
        ids.append(_backup(repo, tmp_path / "db"))
    entries, _ = repo.list()
    assert [e.record.kind for e in entries] == ["full", "layer", "layer", "full", "layer"]
    assert repo.verify(deep=True).ok
    repo.restore(tmp_path / "r-last")
    assert _content(tmp_path / "r-last") == _content(tmp_path / "db")
    repo.restore(tmp_path / "r-2", ids[2])
    result = repo.prune(KeepPolicy(last=1))
    assert [str(i) for i in result.plan.done_merges] == [ids[-1]]
    repo.restore(tmp_path / "r-pruned")
    assert _content(tmp_path / "r-pruned") == _content(tmp_path / "db")
    assert repo.verify(deep=True).ok
    objects = RawStore(repo_url).objects()
    assert any(k.startswith(L.KEYS_PREFIX) for k in objects)
    assert [k for k in objects if k.startswith(L.IMAGES_PREFIX)] == [L.image_key(ids[-1])]
    for name, data in objects.items():
        assert MARKER not in data, name
        if name.startswith(L.IMAGES_PREFIX):
            assert F.decode_header(data[:F.HEADER_SIZE]).sealed, name


def test_open_needs_the_passphrase(repo_url: str) -> None:
    Repository.init(repo_url, passphrase=PASSPHRASE)
    with pytest.raises(UsageError, match="no passphrase given"):
        Repository.open(repo_url)
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        _open(repo_url, b"nope")
    with pytest.raises(UsageError, match="empty"):
        Repository.init(f"{repo_url}-other", passphrase=b"")
    assert RawStore(f"{repo_url}-other").names() == []


def test_a_plaintext_image_planted_in_an_encrypted_repository_is_refused(
        repo_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    Repository.init(repo_url, passphrase=PASSPHRASE)
    plain = Repository.init(f"{repo_url}-plain")
    backup_id = _backup(plain, tmp_path / "db")
    key = L.image_key(backup_id)
    RawStore(repo_url).write(key, RawStore(f"{repo_url}-plain").read(key))
    repo = _open(repo_url)
    entries, _ = repo.list()
    assert entries and "not encrypted" in (entries[0].record.error or "")
    with pytest.raises(CorruptionError):  # damaged: the newest point is unreadable
        repo.restore(tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_image_sealed_under_another_key_is_refused(repo_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    Repository.init(repo_url, passphrase=PASSPHRASE)
    backup(tmp_path / "db", tmp_path / "foreign.img", sealing())
    data = (tmp_path / "foreign.img").read_bytes()
    header = F.decode_header(data[:F.HEADER_SIZE])
    RawStore(repo_url).write(L.image_key(header.image_id), data)
    entries, _ = _open(repo_url).list()
    assert "encrypted under another key" in (entries[0].record.error or "")


def test_a_key_file_of_another_repository_does_not_open_it(repo_url: str) -> None:
    one, two = repo_url, f"{repo_url}-two"
    Repository.init(one, passphrase=PASSPHRASE)
    Repository.init(two, passphrase=b"other")
    theirs = RawStore(two)
    for key in theirs.names(L.KEYS_PREFIX):
        RawStore(one).write(key, theirs.read(key))
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        _open(one, b"other")
    _open(one)


def test_key_management_through_the_api(repo_url: str) -> None:
    repo = Repository.init(repo_url, passphrase=PASSPHRASE)
    assert repo.master is not None and repo.keyfile is not None
    first = repo.keyfile
    added = repo.keys.add(repo.master, b"second")
    assert {k.id for k in repo.keys.list()} == {first.id, added.id}
    assert _open(repo_url, b"second").keyfile == added
    # passwd rewrites the one key file (same id, same key) under a new passphrase.
    raw = RawStore(repo_url)
    keys_before = raw.names(L.KEYS_PREFIX)
    changed = repo.keys.passwd(added, repo.master, b"third")
    assert changed.id == added.id and raw.names(L.KEYS_PREFIX) == keys_before
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        _open(repo_url, b"second")
    assert _open(repo_url, b"third").keyfile == changed
    repo.keys.remove(first.id[:10])
    with pytest.raises(AuthenticationError):
        _open(repo_url)
    with pytest.raises(UsageError, match="last key"):
        repo.keys.remove(added.id)
    assert [k.id for k in repo.keys.list()] == [added.id]
    assert raw.names(L.KEYS_PREFIX) == [f"{L.KEYS_PREFIX}{added.id}{L.KEY_SUFFIX}"]


def test_plaintext_repository_has_no_keys(repo_url: str) -> None:
    repo = Repository.init(repo_url)
    assert repo.keyring.seal is None and repo.master is None
    with pytest.raises(UsageError, match="not encrypted"):
        repo.keys.list()
    assert isinstance(repo.keyring, Keyring)
    assert RawStore(repo_url).names(L.KEYS_PREFIX) == []


def test_a_config_stripped_of_its_encryption_is_refused(repo_url: str) -> None:
    Repository.init(repo_url, passphrase=PASSPHRASE)
    raw = RawStore(repo_url)
    stripped = L.RepoConfig.decode(raw.read(L.CONFIG_KEY), L.CONFIG_KEY)
    raw.write(L.CONFIG_KEY, L.RepoConfig(stripped.repository_id, stripped.created_ns,
                                         stripped.chain_limit).encode())
    with pytest.raises(AuthenticationError, match="config was changed"):
        Repository.open(repo_url)


def test_prune_merges_into_a_sealed_synthetic_full(repo_url: str, tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=50)
    Repository.init(repo_url, passphrase=PASSPHRASE)
    repo = _open(repo_url)
    _backup(repo, tmp_path / "db")
    for n in range(2):
        change(tmp_path / "db", n + 2)
        last = _backup(repo, tmp_path / "db")
    result = repo.prune(KeepPolicy(last=1))
    assert [str(i) for i in result.plan.done_merges] == [last]
    entries, _ = repo.list()
    assert [(str(e.record.backup_id), e.record.synthetic) for e in entries] == [(last, True)]
    data = RawStore(repo_url).read(L.image_key(last))
    assert F.decode_header(data[:F.HEADER_SIZE]).sealed and MARKER not in data
    repo.restore(tmp_path / "r")
    assert _content(tmp_path / "r") == _content(tmp_path / "db")
    assert repo.verify(deep=True).ok
