"""A failed object write is one clear StorageError line (CLI exit 9) and leaves nothing
half-published, on both storages.

Local: a repository's object writes go through ``lamina.core.fileio``; a full disk is
injected there (as in tests/test_failure_modes.py), so these tests also prove that the
repository's writes do not bypass it.

S3: the real server behind :class:`support.s3proxy.S3Proxy` refuses the N-th object write
request of a kind (whole-object PUT, multipart part, multipart start, completion) and every
later one of that kind (answer 500, or the connection reset), for every N a clean run of the
command makes: the backup (or prune) ends with exit 9 in one line, publishes nothing, leaves
no visible object but its resumable upload state, and every earlier backup still restores.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lamina.core import fileio
from lamina.errors import StorageError, storage_error
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.lock import EXCLUSIVE_KEY
from lamina.repository.repository import open_storage
from lamina.repository.s3uploads import UPLOADS_PREFIX
from support import cli
from support.rawstore import RawStore
from support.s3proxy import WRITES, S3Proxy
from support.s3server import S3Server

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


# ---------------------------------------------------------------- S3: refused writes


#: A lease lifetime no run reaches a third of: no renewal PUT, so a run's requests are
#: the same as the counted clean run's (a killed holder on this host blocks no one anyway).
LONG_LEASE = "3600"


def _big_db(path: Path, mib: int) -> None:
    """Table ``t`` holding ``mib`` MiB of incompressible values (an image of several
    multipart parts)."""
    with make_db(path) as db, db.write() as txn:
        for i in range(mib * 256):
            txn.table("t").put(b"k%07d" % i, os.urandom(4000))


def _one_line(code: int, err: str) -> str:
    assert code == 9, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lamina: "), err
    return lines[0]


def _visible(raw: RawStore) -> set[str]:
    """Every visible object (the resumable upload descriptions aside) with its size."""
    return {f"{k}:{n}" for k, n in raw.sizes().items() if not k.startswith(UPLOADS_PREFIX)}


def _resumable(raw: RawStore) -> set[str]:
    """The names (image ids) of the unfinished multipart uploads of images: each must
    have its description, and each description its upload (no orphan either way)."""
    return {k.removeprefix(L.IMAGES_PREFIX).removesuffix(L.IMAGE_SUFFIX)
            for k, _ in raw.multipart_uploads()}


def _images(raw: RawStore) -> dict[str, int]:
    """Each image's key and size."""
    return raw.sizes(L.IMAGES_PREFIX)


def _port(server: S3Server) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


def _runs(counts: dict[str, int]) -> list[tuple[str, int, str]]:
    """(kind, N, how) of every object write of a clean run, answered 500 and reset in
    turn."""
    runs = [(kind, n) for kind in WRITES for n in range(1, counts.get(kind, 0) + 1)]
    return [(kind, n, ("500", "reset")[i % 2]) for i, (kind, n) in enumerate(runs)]


def test_s3_refused_write_at_every_object_write_of_a_backup(
        s3_server: S3Server, s3_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    _big_db(db, 10)  # a full image of two 8 MiB parts
    backup = ("backup", str(db), "--full", "--compress", "none", "--no-progress")
    for url in (s3_url, f"{s3_url}-count"):  # the repository, and one to count a clean run
        assert cli.invoke("repo", "init", url).code == 0
        code, _out, err = cli.invoke(*backup, "--repo", url)
        assert code == 0, err
    (entry,), _ = Repository.open(s3_url).list()
    first, first_state = entry.record.backup_id, content(db)
    with make_db(db) as d:
        d.put("t", b"k0000001", b"changed")
    raw = RawStore(s3_url)
    before = _visible(raw)
    index_before = raw.read(L.INDEX_KEY)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # one retry, refused too
    monkeypatch.setenv("LAMINA_LEASE_TTL", LONG_LEASE)  # no renewal: the same requests
    with S3Proxy(_port(s3_server)) as proxy:
        via = ("--s3-endpoint", proxy.endpoint)
        code, _out, err = cli.invoke(*backup, "--repo", f"{s3_url}-count", *via)
        assert code == 0, err
        counts = dict(proxy.counts)
        assert counts["part"] >= 2 and counts["complete"] == 1 and counts["put"] >= 3, counts
        runs = _runs(counts)
        for kind, n, how in runs:
            proxy.fail_from(kind, n, how=how)
            code, _out, err = cli.invoke(*backup, "--repo", s3_url, *via)
            proxy.heal()
            assert proxy.failed.is_set(), (kind, n, "never reached", code, err)
            line = _one_line(code, err)
            assert s3_url in line, line
            # Nothing published, no lock left: only resumable upload state is new.
            assert _visible(raw) == before, (kind, n, how, line)
            assert raw.read(L.INDEX_KEY) == index_before, (kind, n, how)
            entries, rebuilt = Repository.open(s3_url).list()
            assert rebuilt is None and [e.record.backup_id for e in entries] == [first]
            assert not raw.names("locks/"), (kind, n, how)
            assert _resumable(raw) == {k.removeprefix(UPLOADS_PREFIX)
                                       for k in raw.names(UPLOADS_PREFIX)}, (kind, n, how)
            assert Repository.open(s3_url).verify().ok
    restored = Repository.open(s3_url).restore(tmp_path / "restored")
    assert restored.backup_id == first and content(tmp_path / "restored") == first_state
    # The store accepts writes again: the next backup publishes and restores, and it
    # replaces what the refused ones left for a resume.
    code, _out, err = cli.invoke(*backup, "--repo", s3_url)
    assert code == 0, err
    entries, _ = Repository.open(s3_url).list()
    assert len(entries) == 2
    assert Repository.open(s3_url).restore(tmp_path / "again").backup_id == \
        entries[-1].record.backup_id
    assert content(tmp_path / "again") == content(db)
    assert not raw.names(UPLOADS_PREFIX) and not raw.multipart_uploads()


def test_s3_refused_write_at_every_object_write_of_a_prune(
        s3_server: S3Server, s3_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """F L1 L2, keep-last 1: prune merges L2 into a synthetic full (a multipart upload
    replacing L2's image), deletes F and L1 and saves the index. Refused at each write
    (each on a fresh copy): exit 9 in one line, L2 restores (as the layer or the complete
    synthetic full, never a half-written one), what is still listed verifies, no lock is
    left, and a prune afterwards finishes the job (as the clean run left it)."""
    db = tmp_path / "db"
    _big_db(db, 10)
    template = f"{s3_url}-template"
    repo = Repository.init(template)
    with make_db(db) as d:
        ids = [repo.backup(d, codec="none").backup_id]
        for i in range(2):
            d.put("t", b"k%07d" % i, b"changed")
            ids.append(repo.backup(d, codec="none").backup_id)
    assert [e.record.kind for e in repo.list()[0]] == ["full", "layer", "layer"]
    latest = content(db)
    prune = ("prune", "--keep-last", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("LAMINA_LEASE_TTL", LONG_LEASE)
    copies = 0

    def fresh() -> str:
        nonlocal copies
        copies += 1
        url = f"{s3_url}-{copies}"
        RawStore(template).copy_to(url)
        return url

    with S3Proxy(_port(s3_server)) as proxy:
        via = ("--s3-endpoint", proxy.endpoint)
        url = fresh()
        code, out, err = cli.invoke(*prune, "--repo", url, *via)
        assert code == 0 and "1 merge(s)" in out, (out, err)
        counts = dict(proxy.counts)
        assert counts["part"] >= 2 and counts["complete"] == 1, counts
        clean = _images(RawStore(url))
        for kind, n, how in _runs(counts):
            url = fresh()
            raw = RawStore(url)
            proxy.fail_from(kind, n, how=how)
            code, out, err = cli.invoke(*prune, "--repo", url, *via)
            proxy.heal()
            assert proxy.failed.is_set(), (kind, n, "never reached", code, err)
            assert url in _one_line(code, err), err
            assert not raw.names("locks/") and not raw.exists(EXCLUSIVE_KEY)
            present = {k for k in raw.names(L.IMAGES_PREFIX)}
            assert L.image_key(ids[2]) in present and present <= {
                L.image_key(i) for i in ids}, (kind, n, present)
            # (L2's chain, whichever it is now, is read whole by its restore; F and L1,
            # when still there, were never written by the prune.)
            Repository.open(url).restore(tmp_path / f"r-{copies}", id=str(ids[2]))
            assert content(tmp_path / f"r-{copies}") == latest
            code, out, err = cli.invoke(*prune, "--repo", url)
            assert code == 0, (kind, n, err)
            assert _images(raw) == clean, (kind, n, how)
            assert not raw.multipart_uploads(), (kind, n, how)


@pytest.mark.parametrize("kind", ["put", "part", "complete"])
def test_s3_refused_write_of_one_object_leaves_nothing(
        s3_server: S3Server, s3_url: str, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """``put_bytes``/``put_stream`` of a small object (one PUT) and of a large one (a
    multipart upload), refused by the store: a StorageError naming the object, no object
    and no unfinished multipart upload left."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    Repository.init(s3_url)
    raw = RawStore(s3_url)
    big = os.urandom(17 << 20)  # three parts
    with S3Proxy(_port(s3_server)) as proxy:
        storage = open_storage(s3_url, s3_endpoint=proxy.endpoint)
        data = b"data" * 1000 if kind == "put" else big
        for put in (storage.put_bytes, lambda k, d: storage.put_stream(k, _Stream(d))):
            proxy.fail_from(kind, 1)
            with pytest.raises(StorageError, match=r"images/x"):
                put("images/x", data)
            proxy.heal()
            assert proxy.failed.is_set()
            assert not raw.exists("images/x") and not raw.multipart_uploads()
        storage.put_bytes("images/x", b"ok")
        assert raw.read("images/x") == b"ok"
