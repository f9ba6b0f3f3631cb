"""Encrypted repositories: init, backups (full and layers), restore, verify, prune, no
plaintext in any object, key files through the storage protocol, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sealed import MARKER, PASSPHRASE, backup, change, make_db, sealing

import lamina
from lamina.backup import image_format as F
from lamina.core.crypto.keyring import Keyring
from lamina.errors import AuthenticationError, CorruptionError, UsageError
from lamina.repository import KeepPolicy, Repository
from lamina.repository import layout as L


def _open(path: Path, passphrase: bytes | None = PASSPHRASE) -> Repository:
    return Repository.open(path, passphrase=lambda: passphrase)


def _backup(repo: Repository, db_path: Path) -> str:
    db = lamina.open(db_path)
    try:
        return str(repo.backup(db).backup_id)
    finally:
        db.close()


def _objects(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file()}


def test_round_trip_layers_prune_and_no_plaintext(tmp_path: Path) -> None:
    make_db(tmp_path / "db")
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE, chain_limit=2)
    repo = _open(tmp_path / "repo")
    ids = [_backup(repo, tmp_path / "db")]
    for n in range(4):
        change(tmp_path / "db", n + 1)
        ids.append(_backup(repo, tmp_path / "db"))
    entries, _ = repo.list()
    assert [e.record.kind for e in entries] == ["full", "layer", "layer", "full", "layer"]
    assert repo.verify().ok
    repo.restore(tmp_path / "r-last")
    repo.restore(tmp_path / "r-2", ids[2])
    repo.prune(KeepPolicy(last=1))
    repo.restore(tmp_path / "r-pruned")
    assert repo.verify().ok
    objects = _objects(tmp_path / "repo")
    assert any(k.startswith("keys/") for k in objects)
    assert any(k.startswith("images/") for k in objects)
    for name, data in objects.items():
        assert MARKER not in data, name
        if name.startswith("images/"):
            assert F.decode_header(data[:F.HEADER_SIZE]).sealed, name
    db = lamina.open(tmp_path / "db", readonly=True)
    restored = lamina.open(tmp_path / "r-last", readonly=True)
    try:
        with db.read() as a, restored.read() as b:
            assert dict(a.table("t").items()) == dict(b.table("t").items())
    finally:
        db.close()
        restored.close()


def test_open_needs_the_passphrase(tmp_path: Path) -> None:
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    with pytest.raises(UsageError, match="no passphrase given"):
        Repository.open(tmp_path / "repo")
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        _open(tmp_path / "repo", b"nope")
    with pytest.raises(UsageError, match="empty"):
        Repository.init(tmp_path / "other", passphrase=b"")


def test_a_plaintext_image_planted_in_an_encrypted_repository_is_refused(
        tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    plain = Repository.init(tmp_path / "plain")
    backup_id = _backup(plain, tmp_path / "db")
    key = L.image_key(backup_id)
    shutil.copy(tmp_path / "plain" / key, tmp_path / "repo" / key)
    repo = _open(tmp_path / "repo")
    entries, _ = repo.list()
    assert entries and "not encrypted" in (entries[0].record.error or "")
    with pytest.raises(CorruptionError):  # damaged: the newest point is unreadable
        repo.restore(tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_image_sealed_under_another_key_is_refused(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=5)
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    backup(tmp_path / "db", tmp_path / "foreign.img", sealing())
    header = F.decode_header((tmp_path / "foreign.img").read_bytes()[:F.HEADER_SIZE])
    target = tmp_path / "repo" / L.image_key(header.image_id)
    shutil.copy(tmp_path / "foreign.img", target)
    entries, _ = _open(tmp_path / "repo").list()
    assert "encrypted under another key" in (entries[0].record.error or "")


def test_a_key_file_of_another_repository_does_not_open_it(tmp_path: Path) -> None:
    Repository.init(tmp_path / "one", passphrase=PASSPHRASE)
    Repository.init(tmp_path / "two", passphrase=b"other")
    for key in (tmp_path / "two" / "keys").iterdir():
        shutil.copy(key, tmp_path / "one" / "keys" / key.name)
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        _open(tmp_path / "one", b"other")
    _open(tmp_path / "one")


def test_key_management_through_the_api(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    assert repo.master is not None and repo.keyfile is not None
    first = repo.keyfile
    added = repo.keys.add(repo.master, b"second")
    assert {k.id for k in repo.keys.list()} == {first.id, added.id}
    assert _open(tmp_path / "repo", b"second").keyfile == added
    repo.keys.remove(first.id[:10])
    with pytest.raises(AuthenticationError):
        _open(tmp_path / "repo")
    with pytest.raises(UsageError, match="last key"):
        repo.keys.remove(added.id)
    assert [k.id for k in repo.keys.list()] == [added.id]


def test_plaintext_repository_has_no_keys(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    assert repo.keyring.seal is None and repo.master is None
    with pytest.raises(UsageError, match="not encrypted"):
        repo.keys.list()
    assert isinstance(repo.keyring, Keyring)


def test_a_config_stripped_of_its_encryption_is_refused(tmp_path: Path) -> None:
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    config = tmp_path / "repo" / L.CONFIG_KEY
    stripped = L.RepoConfig.decode(config.read_bytes(), config)
    config.write_bytes(L.RepoConfig(stripped.repository_id, stripped.created_ns,
                                    stripped.chain_limit).encode())
    with pytest.raises(AuthenticationError, match="config was changed"):
        Repository.open(tmp_path / "repo")


def test_prune_merges_into_a_sealed_synthetic_full(tmp_path: Path) -> None:
    make_db(tmp_path / "db", rows=50)
    Repository.init(tmp_path / "repo", passphrase=PASSPHRASE)
    repo = _open(tmp_path / "repo")
    _backup(repo, tmp_path / "db")
    for n in range(2):
        change(tmp_path / "db", n + 2)
        last = _backup(repo, tmp_path / "db")
    result = repo.prune(KeepPolicy(last=1))
    assert [str(i) for i in result.plan.done_merges] == [last]
    entries, _ = repo.list()
    assert [(str(e.record.backup_id), e.record.synthetic) for e in entries] == [(last, True)]
    data = (tmp_path / "repo" / L.image_key(last)).read_bytes()
    assert F.decode_header(data[:F.HEADER_SIZE]).sealed and MARKER not in data
    repo.restore(tmp_path / "r")
    assert repo.verify(deep=True).ok
