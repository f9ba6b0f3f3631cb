"""At-end backups and at-end layers under load, with a real writer process.

A ``lamina workload`` process commits (btree puts/deletes over two tables atomically,
archive appends) and logs every commit's seq. This process takes a chain of backups —
full and layers, mostly ``vp="end"``, one ``vp="begin"`` among them — into image files or a
repository. Each backup's progress callback runs at its first chunk: for an at-end backup
that chunk belongs to the initial transfer, so the callback holds the copy until the writer
has logged ``DURING_COPY`` more commits (waiting on the writer's log, never on time); one
of them also optimizes the archive table there (a new generation mid-backup). Then:

* the VP of every at-end image is after those commits: its commit seq exceeds the seq its
  drivers read at ``begin()`` by at least ``DURING_COPY``; an at-begin image's VP comes
  before them;
* every prefix of the chain restores (and ``verify --deep`` passes) to exactly the
  workload's state at that image's VP commit seq.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import lamina
from lamina import online, workload
from lamina.backup.kernel import BackupResult
from lamina.core.driver import DriverKind
from lamina.database import Database
from lamina.online.facts import ImageFacts
from lamina.repository.repository import Repository
from support import cli
from support.workload_log import stop_workload, wait_for_workload

#: Commits the writer makes while each backup's copy is held at its first chunk.
DURING_COPY = 5
#: Where the VP lies, per backup of the chain (the first is the full image).
KINDS = ("end", "end", "begin", "end", "end")
#: The backup during whose copy the archive table is optimized.
OPTIMIZE_AT = 3


@dataclass
class DuringCopy:
    """A progress callback: at the first chunk, wait until the writer has committed
    ``DURING_COPY`` more times (then run ``action``), recording the seqs."""

    db: Database
    writer: subprocess.Popen[str]
    log: Path
    action: Callable[[], None] | None = None
    seen: int | None = None
    target: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.target is not None:
            return
        self.seen = self.db.lockfile.commit_seq()
        self.target = self.seen + DURING_COPY
        wait_for_workload(self.writer, self.log, seq=self.target)
        if self.action is not None:
            self.action()


def _check_vp_placement(result: BackupResult, kind: str, hold: DuringCopy,
                        optimized: bool) -> None:
    assert hold.seen is not None and hold.target is not None
    facts = ImageFacts(result, "image")
    btree, archive = facts.btree(), facts.archive()
    assert btree is not None and archive is not None
    kinds = {d.kind for d in result.catalog.drivers}
    assert result.completed_ns >= result.vp.wall_ns and result.vp_age_ns >= 0
    if kind == "begin":
        assert kinds == {DriverKind.AT_BEGIN}
        assert btree.initial is None and archive.begin_seq is None
        assert result.vp.commit_seq <= hold.seen < hold.target  # the VP preceded the copy
        return
    assert kinds == {DriverKind.AT_END}
    assert btree.initial is not None and archive.begin_seq is not None
    begin_seq = btree.initial.begin_seq
    assert archive.begin_seq <= hold.seen and begin_seq <= hold.seen
    # The VP is after the bulk copy: the commits made while it was held are in the image.
    assert result.vp.commit_seq >= hold.target
    assert result.vp.commit_seq - begin_seq >= DURING_COPY
    assert btree.txnid >= btree.initial.txnid
    if btree.base_txnid is None:  # a full image: S0 went whole in the initial section
        assert btree.initial.pages_sent > 0
    log = archive.tables[workload.ARCHIVE_TABLE]
    assert log.initial is not None
    if optimized:  # a new generation mid-backup: the final section carries it whole
        assert log.base_position == 0 and log.generation > log.initial.generation
    else:
        assert log.base_position == log.initial.position
        assert log.initial.position <= log.position


def _verify_restored(dest: Path, log: Path, vp_seq: int) -> None:
    with lamina.open(dest, create=False, readonly=True) as restored:
        summary = workload.verify(restored, log)
    assert summary["at_seq"] == vp_seq


@pytest.mark.parametrize("where", ["files", "repository", "s3 repository"])
def test_at_end_chain_under_load_restores_to_exactly_each_vp(
        tmp_path: Path, where: str, request: pytest.FixtureRequest) -> None:
    db_path = tmp_path / "live"
    log = tmp_path / "workload.log"
    with lamina.open(db_path) as db:
        workload.ensure_tables(db)
    writer = cli.start("workload", str(db_path), "--seconds", "600", "--seed", "23",
                       "--log", str(log))
    repo = None if where == "files" else Repository.init(
        tmp_path / "repo" if where == "repository" else request.getfixturevalue("s3_url"))
    images: list[Path] = []
    backup_ids: list[str] = []
    seqs: list[int] = []
    try:
        wait_for_workload(writer, log, commits=20)  # the archive table has rows
        with lamina.open(db_path, create=False) as db:
            for i, kind in enumerate(KINDS):
                if seqs:  # every image at a VP of its own
                    wait_for_workload(writer, log, seq=seqs[-1] + 1)
                optimize = (lambda: db.archive(workload.ARCHIVE_TABLE).optimize()
                            ) if i == OPTIMIZE_AT else None
                hold = DuringCopy(db, writer, log, optimize)
                if repo is None:
                    image = tmp_path / f"img{i}.lamina"
                    result = online.backup(db, image, vp=kind, progress=hold, buf_size=8192,
                                           base=images[-1] if images else None)
                    images.append(image)
                else:
                    got = repo.backup(db, vp=kind, progress=hold)
                    assert got.kind == ("full" if i == 0 else "layer")
                    backup_ids.append(str(got.backup_id))
                    result = got.result
                _check_vp_placement(result, kind, hold, i == OPTIMIZE_AT)
                seqs.append(result.vp.commit_seq)
        wait_for_workload(writer, log, seq=seqs[-1] + 1)  # it went on after the last VP
    finally:
        stop_workload(writer)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    if repo is None:
        assert online.verify_chain(images, deep=True)["vp"]["commit_seq"] == seqs[-1]
    else:
        assert repo.verify(deep=True).ok
    for k in range(1, len(KINDS) + 1):
        dest = tmp_path / f"restored{k}"
        if repo is None:
            summary = online.restore_chain(images[:k], dest)
            assert summary.to_json()["vp_commit_seq"] == seqs[k - 1]
        else:
            repo.restore(dest, backup_ids[k - 1])
        _verify_restored(dest, log, seqs[k - 1])
    if repo is None:  # a single at-end full image restores on its own, as one pass
        online.restore(images[0], tmp_path / "single")
        _verify_restored(tmp_path / "single", log, seqs[0])
    with lamina.open(db_path, create=False) as db:
        assert db.lockfile.live_slots() == []  # no at-end driver left its pin behind
