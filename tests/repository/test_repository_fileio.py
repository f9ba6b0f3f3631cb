"""A repository's object writes go through ``lamina.core.fileio``: a full disk there is one
clear StorageError line (CLI exit 9) and leaves nothing half-published.

The faults are injected into ``fileio`` (as in tests/test_failure_modes.py), so these tests
also prove that the repository's writes do not bypass it.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina.core import fileio
from lamina.errors import StorageError, storage_error
from lamina.repository import Repository
from lamina.repository import layout as L
from support import cli

from .helpers import content, make_db


def _enospc(action: str, path: object) -> StorageError:
    return storage_error(OSError(errno.ENOSPC, "No space left on device"), action, path)


def _fail_rename_into_images(repo: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Publishing an image object (the rename into ``images/``) hits ENOSPC."""
    real = fileio.rename
    hits: list[Path] = []

    def rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst).parent == repo / L.IMAGES_PREFIX.rstrip("/"):
            hits.append(Path(dst))
            raise _enospc("rename", src)
        real(src, dst)

    monkeypatch.setattr(fileio, "rename", rename)
    return hits


def _fail_index_write(repo: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Writing the index object (after the image was published) hits ENOSPC."""
    real = fileio.pwrite
    hits: list[Path] = []

    def pwrite(fd: int, data: Any, offset: int, path: object = "") -> None:
        p = Path(str(path))
        if p.parent == repo and p.name.startswith(f".{L.INDEX_KEY}.tmp-"):
            hits.append(p)
            raise _enospc("write", path)
        real(fd, data, offset, path)

    monkeypatch.setattr(fileio, "pwrite", pwrite)
    return hits


FAULTS: dict[str, Callable[[Path, pytest.MonkeyPatch], list[Path]]] = {
    "image": _fail_rename_into_images,
    "index": _fail_index_write,
}


def _files(repo: Path) -> set[str]:
    """Every file under the repository except the lock files and resumable uploads (an
    interrupted backup's, kept for ``--resume``: never listed, never an image)."""
    return {str(p.relative_to(repo)) for p in repo.rglob("*")
            if p.is_file() and p.parent != repo / L.LOCKS_DIR
            and p.relative_to(repo).parts[0] != L.UPLOADS_DIR}


@pytest.mark.parametrize("where", sorted(FAULTS))
def test_disk_full_on_an_object_write_publishes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    repo_path = tmp_path / "repo"
    repo = Repository.init(repo_path)
    db_path = tmp_path / "db"
    with make_db(db_path) as db:
        db.put("t", b"k", b"first")
        first = repo.backup(db).backup_id
        db.put("t", b"k", b"second")
    before = _files(repo_path)
    index_before = (repo_path / L.INDEX_KEY).read_bytes()

    hits = FAULTS[where](repo_path, monkeypatch)
    code, out, err = cli.invoke("backup", str(db_path), "--repo", str(repo_path),
                                "--no-progress")
    monkeypatch.undo()

    assert hits, "the fault was never reached: the write bypassed lamina.core.fileio"
    assert code == 9, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0], err
    assert str(hits[0].parent) in lines[0] or str(repo_path) in lines[0], err
    # Nothing half-published: no new object, no temporary or staged file, same index.
    assert _files(repo_path) == before
    assert (repo_path / L.INDEX_KEY).read_bytes() == index_before
    entries, rebuilt = repo.list()
    assert rebuilt is None and [e.record.backup_id for e in entries] == [first]
    assert repo.verify().ok
    code, out, err = cli.invoke("verify", "--repo", str(repo_path))
    assert code == 0, (code, out, err)
    restored = repo.restore(tmp_path / "restored")
    assert restored.backup_id == first
    assert content(tmp_path / "restored") == {b"k": b"first"}

    # The disk has room again: the next backup works and restores (and replaces what the
    # failed one left for a resume).
    with make_db(db_path) as db:
        second = repo.backup(db).backup_id
    assert not list((repo_path / L.UPLOADS_DIR).iterdir())
    assert repo.restore(tmp_path / "again").backup_id == second
    assert content(tmp_path / "again") == {b"k": b"second"}
    assert repo.verify().ok


def test_disk_full_writing_a_small_object_leaves_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``put_bytes``/``put_stream`` write a dot-temporary through fileio; ENOSPC on it is a
    StorageError naming it, and neither it nor the key is left."""
    repo = Repository.init(tmp_path / "repo")
    storage = repo.storage
    real = fileio.pwrite

    def pwrite(fd: int, data: Any, offset: int, path: object = "") -> None:
        raise _enospc("write", path)

    monkeypatch.setattr(fileio, "pwrite", pwrite)
    for put in (storage.put_bytes, lambda k, d: storage.put_stream(k, _Stream(d))):
        with pytest.raises(StorageError, match=r"cannot write .*\.x\.tmp-.*: disk full"):
            put("images/x", b"data" * 1000)
        assert not any(p.name.startswith(".x") for p in (tmp_path / "repo").rglob("*"))
        assert not storage.exists("images/x")
    monkeypatch.setattr(fileio, "pwrite", real)
    storage.put_bytes("images/x", b"ok")
    assert storage.get_bytes("images/x") == b"ok"
    storage.delete("images/x")


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        block, self.data = self.data[:n], self.data[n:]
        return block
