"""Bad input to backup/restore/verify/info through the real command: one line, a distinct
exit code, no valid-looking output, and the source untouched."""

from __future__ import annotations

import resource
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lamina
from lamina import workload
from support import cli


def one_line(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("lamina: "), err
    return err


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    root = tmp_path_factory.mktemp("bad")
    db_path = root / "db"
    with lamina.open(db_path) as db:
        workload.run(db, seed=2, steps=300)
        db.backup(root / "good.img")
    return db_path, root / "good.img", (db_path / "data.lamina").read_bytes()


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A directory on a 256 KiB file system; where mounting is not permitted, a child
    process file-size limit stands in for the full disk."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    try:
        yield mnt, None if mounted else limit
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=True)


def assert_source_untouched(source: tuple[Path, Path, bytes]) -> None:
    db_path, _img, data = source
    assert (db_path / "data.lamina").read_bytes() == data
    with lamina.open(db_path, create=False, readonly=True) as db:
        assert db.check().ok


def test_full_disk_while_writing_the_image(source, small_disk) -> None:
    db_path, _img, _data = source
    mnt, preexec = small_disk
    proc = cli.run_bytes("backup", str(db_path), str(mnt / "img"), "--compress", "none",
                         "--no-progress", preexec_fn=preexec)
    assert proc.returncode == 9
    assert "disk full" in one_line(proc) or "too large" in proc.stderr.decode()
    assert list(mnt.iterdir()) == []  # no image, no temporary file
    assert_source_untouched(source)


def test_full_disk_while_restoring(source, small_disk) -> None:
    _db, img, _data = source
    mnt, preexec = small_disk
    proc = cli.run_bytes("restore", str(img), "--to", str(mnt / "restored"), "--no-progress",
                         preexec_fn=preexec)
    assert proc.returncode == 9
    one_line(proc)
    assert list(mnt.iterdir()) == []  # no half-restored directory


def _damaged(img: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(img.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data[len(data) // 3] ^= 0x01
    elif how == "magic":
        data[:4] = b"XXXX"
    elif how == "future":
        data[8] = 9
    elif how == "manifest":
        data[-100] ^= 0x01
    out = tmp_path / f"{how}.img"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("how, code, words", [
    ("truncated", 4, "truncated"), ("flipped", 4, "corrupt"), ("magic", 5, "not a Lamina"),
    ("future", 6, "format 9"), ("manifest", 4, "corrupt"),
])
def test_damaged_images_are_refused(source, tmp_path: Path, how: str, code: int,
                                    words: str) -> None:
    bad = _damaged(source[1], tmp_path, how)
    for args in (["verify", str(bad)], ["verify", str(bad), "--deep"],
                 ["restore", str(bad), "--to", str(tmp_path / "dest")]):
        proc = cli.run_bytes(*args, "--no-progress")
        assert proc.returncode == code, (args, proc.stderr)
        assert words in one_line(proc)
        assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir()] == [bad.name]  # no stray temp directory


def test_stdin_closed_early(source, tmp_path: Path) -> None:
    data = source[1].read_bytes()
    proc = cli.run_bytes("restore", "-", "--to", str(tmp_path / "dest"), "--no-progress",
                         input=data[: len(data) // 2])
    assert proc.returncode == 4 and "truncated" in one_line(proc)
    assert list(tmp_path.iterdir()) == []
    proc = cli.run_bytes("restore", "-", "--to", str(tmp_path / "dest"), "--no-progress",
                         input=data)
    assert proc.returncode == 0, proc.stderr  # the same bytes, whole, restore fine
    assert (tmp_path / "dest" / "LAMINA").exists()


def test_backup_to_stdout_restores(source, tmp_path: Path) -> None:
    db_path = source[0]
    out = cli.run_bytes("backup", str(db_path), "-", "--no-progress")
    assert out.returncode == 0 and out.stdout[:8].startswith(b"LAM")
    assert b"image" in out.stderr  # the summary goes to stderr, the image to stdout
    proc = cli.run_bytes("restore", "-", "--to", str(tmp_path / "dest"), "--no-progress",
                         input=out.stdout)
    assert proc.returncode == 0, proc.stderr


def test_existing_destination_needs_force(source, tmp_path: Path) -> None:
    """--force replaces only a Lamina database or an empty directory (issue 10, item 1):
    anything else at DEST is refused with exit 3 (AlreadyExistsError) and kept."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    proc = cli.run_bytes("restore", str(source[1]), "--to", str(dest), "--no-progress")
    assert proc.returncode == 3 and "--force" in one_line(proc)
    assert (dest / "keep").read_text() == "mine"
    proc = cli.run_bytes("restore", str(source[1]), "--to", str(dest), "--force",
                         "--no-progress")
    assert proc.returncode == 3 and "not a Lamina database" in one_line(proc)
    assert (dest / "keep").read_text() == "mine"
    plain = tmp_path / "plain"
    plain.write_text("a file")
    proc = cli.run_bytes("restore", str(source[1]), "--to", str(plain), "--force",
                         "--no-progress")
    assert proc.returncode == 3 and "not a Lamina database" in one_line(proc)
    assert plain.read_text() == "a file"
    empty = tmp_path / "empty"
    empty.mkdir()
    for _ in range(2):  # an empty directory, then the database restored there
        proc = cli.run_bytes("restore", str(source[1]), "--to", str(empty), "--force",
                             "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert (empty / "LAMINA").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "empty", "plain"]


def test_info_reads_only_the_trailer(source) -> None:
    import json
    proc = cli.run("info", str(source[1]), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "full" and info["vp"]["commit_seq"] > 0
    assert {t["name"] for t in info["tables"]} == {"wl_kv", "wl_idx", "wl_log"}


def test_a_forced_restore_killed_between_its_renames_is_rolled_back(source, tmp_path: Path
                                                                     ) -> None:
    """Killed after parking the old destination and before publishing the new one: DEST is
    missing, the old database hides as .DEST.old-PID-*. The next restore puts it back
    first (and so does the next open: see tests/online/test_online_publish.py)."""
    from lamina import online

    dead = dead_pid()
    dest = tmp_path / "dest"
    online.restore(source[1], dest)
    (dest / "marker").write_text("the user's database")
    dest.rename(tmp_path / f".dest.old-{dead}-0123456789ab")  # what the kill leaves
    with pytest.raises(lamina.errors.AlreadyExistsError):
        online.restore(source[1], dest)  # no --force: the rolled-back DEST is kept
    assert (dest / "marker").read_text() == "the user's database"
    assert not list(tmp_path.glob(".dest.old-*"))
    (tmp_path / f".dest.old-{dead}-fedcba987654").mkdir()  # killed after the second rename
    summary = online.restore(source[1], dest, force=True)
    assert not (dest / "marker").exists() and not list(tmp_path.glob(".dest.*"))
    assert [c.path.name for c in summary.cleaned] == [f".dest.old-{dead}-fedcba987654"]


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
