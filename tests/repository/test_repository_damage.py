"""Damaged repositories (issue 10, item 2): a missing or unreadable image never makes
``prune`` delete what a damaged chain stands on, nor the newest restorable point of a
database; ``restore --repo`` (latest, ``--at``) says "damaged" (exit 4) and names the
image instead of restoring an older point silently or claiming there is no backup."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamina.errors import ChainError, CorruptionError
from lamina.repository import ImageRecord, Index, KeepPolicy, Repository
from lamina.repository import layout as L
from lamina.repository.prune import plan_prune
from support import cli
from support.rawstore import RawStore

from .helpers import content, make_db

T0 = 1_700_000_000 * 10**9
HOUR = 3600 * 10**9


def _repo(repo_url: str, tmp_path: Path, fulls: list[bool]
          ) -> tuple[Repository, list[uuid.UUID], dict[uuid.UUID, dict[bytes, bytes]]]:
    """A repository at ``repo_url`` with one backup per entry of ``fulls`` (True: a full,
    False: a layer on the newest), each after a change; their ids and the table's state
    at each."""
    repo = Repository.init(repo_url)
    ids: list[uuid.UUID] = []
    states: dict[uuid.UUID, dict[bytes, bytes]] = {}
    with make_db(tmp_path / "db") as db:
        for i, full in enumerate(fulls):
            db.put("t", b"k%d" % i, b"v%d" % i)
            taken = repo.backup(db, full=full)
            assert taken.kind == ("full" if full or not ids else "layer")
            ids.append(taken.backup_id)
            with db.read() as txn:
                states[taken.backup_id] = dict(txn.table("t").items())
    return repo, ids, states


class _Image:
    """An image object of a repository, damaged around Lamina (a file of a local
    repository, an object written with the test's own boto3 client on S3)."""

    def __init__(self, repo: Repository, backup_id: uuid.UUID) -> None:
        self.raw, self.key = RawStore(repo.url), L.image_key(backup_id)

    def unlink(self) -> None:
        self.raw.delete(self.key)

    def read_bytes(self) -> bytes:
        return self.raw.read(self.key)

    def write_bytes(self, data: bytes) -> None:
        self.raw.write(self.key, data)


def _image(repo: Repository, backup_id: uuid.UUID) -> _Image:
    return _Image(repo, backup_id)


def _present(repo: Repository) -> set[uuid.UUID]:
    """The backups whose image is there (listed around Lamina)."""
    return {uuid.UUID(k.removeprefix(L.IMAGES_PREFIX).removesuffix(L.IMAGE_SUFFIX))
            for k in RawStore(repo.url).names(L.IMAGES_PREFIX)}


def _truncate(image: _Image) -> None:
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])


def _restore_latest(repo: Repository, dest: Path, *extra: str) -> cli.CliResult:
    return cli.invoke("restore", "--repo", repo.url, *extra, "--to", str(dest))


# ---------------------------------------------------------------- a missing middle layer


def test_prune_keeps_the_full_a_layer_with_a_missing_base_stands_on(
        repo_url: str, tmp_path: Path) -> None:
    """F L1 L2 with L1's image gone: keep-last 1 keeps L2 (damaged) and must not delete F,
    the only intact full (L1's chain stood on it; it is the one restorable point)."""
    repo, (full, mid, top), states = _repo(repo_url, tmp_path, [True, False, False])
    _image(repo, mid).unlink()
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1")
    assert code == 0, (out, err)
    assert _present(repo) == {full, top}
    assert f"refused: delete {full}" in out and str(mid) in out
    # Latest is the damaged L2: refused, naming the missing image, hinting F.
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(mid) in err and f"--id {full}" in err
    assert not (tmp_path / "out").exists()
    code, out, err = _restore_latest(repo, tmp_path / "out", "--id", str(full))
    assert code == 0, (out, err)
    assert content(tmp_path / "out") == states[full]


def test_prune_dry_run_shows_what_is_refused(repo_url: str, tmp_path: Path) -> None:
    repo, (full, mid, top), _ = _repo(repo_url, tmp_path, [True, False, False])
    _image(repo, mid).unlink()
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1",
                                "--dry-run", "--json")
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["dry_run"] and report["delete"] == [] and report["merge"] == []
    refused = {r["backup_id"]: r for r in report["refused"]}
    assert set(refused) == {str(full)}
    assert str(mid) in refused[str(full)]["reason"]
    assert [d["image"] for d in report["damaged"]] == [str(mid)]
    assert report["damaged"][0]["backup_id"] == str(top)
    assert report["damaged"][0]["problem"] == "missing"
    code, out, _ = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1",
                              "--dry-run")
    assert code == 0 and f"refused: delete {full}" in out
    assert _present(repo) == {full, top}


# ---------------------------------------------------------------- a missing full


def test_missing_full_keeps_the_older_intact_chain(repo_url: str, tmp_path: Path) -> None:
    """F0 L0 F1 L1 L2 with F1 gone: L1 and L2 are damaged; prune keeps them and F0 L0 (the
    newest intact point, and maybe what F1's chain stood on), and restore latest says
    damaged (naming F1) and hints L0."""
    repo, ids, states = _repo(repo_url, tmp_path, [True, False, True, False, False])
    f0, l0, f1, l1, l2 = ids
    _image(repo, f1).unlink()
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1")
    assert code == 0, (out, err)
    assert _present(repo) == {f0, l0, l1, l2}
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(f1) in err and "missing" in err
    assert f"--id {l0}" in err
    repo.restore(tmp_path / "ok", id=str(l0))
    assert content(tmp_path / "ok") == states[l0]
    # An explicit id of a layer whose base is gone stays a chain error (exit 11).
    with pytest.raises(ChainError):
        repo.restore(tmp_path / "x", id=str(l2))


def test_missing_only_full_is_damaged_not_empty(repo_url: str, tmp_path: Path) -> None:
    """F L1 L2 with F gone: nothing is restorable; prune deletes nothing and restore
    latest is 'damaged' (exit 4, naming F), not a chain error or 'no backup'."""
    repo, (full, l1, l2), _ = _repo(repo_url, tmp_path, [True, False, False])
    _image(repo, full).unlink()
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1")
    assert code == 0, (out, err)
    assert _present(repo) == {l1, l2}
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(full) in err and "no intact backup" in err


# ---------------------------------------------------------------- a truncated layer


def test_truncated_middle_layer_is_damaged(repo_url: str, tmp_path: Path) -> None:
    """F L1 L2 with L1 cut short: prune refuses (as for any unreadable image; a dry run
    too), list and restore name L1 as damaged (exit 4), not as missing (exit 11)."""
    repo, (full, mid, top), states = _repo(repo_url, tmp_path, [True, False, False])
    _truncate(_image(repo, mid))
    for extra in ((), ("--dry-run",)):
        code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1",
                                    *extra)
        assert code == 4 and "unreadable" in err and str(mid) in err, (out, err)
    assert _present(repo) == {full, mid, top}
    entries, _ = repo.list()
    (entry,) = [e for e in entries if e.record.backup_id == top]
    assert entry.problem is not None and "damaged" in entry.problem
    assert "missing from the repository" not in entry.problem
    for which in ([], ["--id", str(top)]):
        code, out, err = _restore_latest(repo, tmp_path / "out", *which)
        assert code == 4, (which, out, err)
        assert "damaged" in err and str(mid) in err
    code, _, err = _restore_latest(repo, tmp_path / "out")
    assert f"--id {full}" in err
    repo.restore(tmp_path / "ok", id=str(full))
    assert content(tmp_path / "ok") == states[full]


# ---------------------------------------------------------------- damaged newest chain


def test_truncated_newest_is_not_skipped_silently(repo_url: str, tmp_path: Path) -> None:
    """F L1 L2 with L2 cut short: its time is unknown, so latest cannot be L1 silently;
    exit 4 naming L2, hinting L1 (which --id restores)."""
    repo, (_, l1, l2), states = _repo(repo_url, tmp_path, [True, False, False])
    _truncate(_image(repo, l2))
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(l2) in err and f"--id {l1}" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(CorruptionError, match="damaged"):
        repo.restore(tmp_path / "out", at="2999-01-01T00:00:00")
    summary = repo.restore(tmp_path / "ok", id=str(l1))
    assert summary.backup_id == l1 and content(tmp_path / "ok") == states[l1]


def test_newest_chain_with_a_missing_full_and_an_older_intact_chain(
        repo_url: str, tmp_path: Path) -> None:
    """F0 L0 F1 L1 with F1 gone: latest (and --at after L1) refuse naming F1 and hint L0;
    so does --at a time between L0 and L1 (F1's time is unknown: it may be before it); --id L0
    restores; prune keeps F0 and L0."""
    repo, (f0, l0, f1, l1), states = _repo(repo_url, tmp_path, [True, False, True, False])
    _image(repo, f1).unlink()
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(f1) in err and f"--id {l0}" in err
    entries, _ = repo.list()
    when = {e.record.backup_id: e.record.vp_wall_ns for e in entries}
    code, out, err = _restore_latest(repo, tmp_path / "out", "--at",
                                     str(when[l1] / 1e9 + 1))
    assert code == 4 and str(f1) in err, (out, err)
    with pytest.raises(CorruptionError, match=f"--id {l0}"):
        repo.restore(tmp_path / "at", at=(when[l0] + when[l1]) / 2e9)
    result = repo.restore(tmp_path / "at", id=str(l0))
    assert result.backup_id == l0 and content(tmp_path / "at") == states[l0]
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1")
    assert code == 0, (out, err)
    assert _present(repo) == {f0, l0, l1}


# ---------------------------------------------------------------- damaged only


@pytest.mark.parametrize("damage", ["truncated", "corrupt header", "empty"])
def test_only_image_damaged_is_damaged_not_no_backup(
        repo_url: str, tmp_path: Path, damage: str) -> None:
    repo, (full,), _ = _repo(repo_url, tmp_path, [True])
    path = _image(repo, full)
    if damage == "truncated":
        _truncate(path)
    elif damage == "corrupt header":
        data = bytearray(path.read_bytes())
        data[0:8] = b"\xff" * 8
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"")
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(full) in err and "no backup" not in err
    with pytest.raises(CorruptionError, match="damaged"):
        repo.restore(tmp_path / "out")
    with pytest.raises(CorruptionError, match="damaged"):
        repo.restore(tmp_path / "out", database=str(uuid.uuid4()))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the planner


def _record(db: uuid.UUID, seq: int, base: ImageRecord | None = None,
            base_seq: int | None = None, base_id: uuid.UUID | None = None,
            incarnation: uuid.UUID | None = None) -> ImageRecord:
    bid = uuid.uuid4()
    if base is not None:
        base_id, base_seq = base.image_id, base.vp_seq
    layer = base_id is not None
    return ImageRecord(bid, bid, db, "layer" if layer else "full", base_id,
                       base_seq or 0, seq, T0 + seq * HOUR, T0 + seq * HOUR,
                       100 if layer else 1000, 1,
                       incarnation=incarnation or uuid.UUID(int=1))


def test_the_newest_intact_backup_is_always_kept() -> None:
    """A restored incarnation's layer X on an image M (seq 3) that is gone is the newest
    backup; M may stand only on what has seq <= 3, which is nothing here. Without the
    rule keep-last 1 would keep only X and delete every restorable backup."""
    db = uuid.uuid4()
    f1 = _record(db, 5)
    l1 = _record(db, 10, f1)
    f2 = _record(db, 15)
    x = _record(db, 20, base_id=uuid.uuid4(), base_seq=3, incarnation=uuid.UUID(int=2))
    plan = plan_prune(Index([f1, l1, f2, x]), KeepPolicy(last=1))
    assert "damaged" in plan.keep[x.backup_id] and "newest intact" in plan.keep[f2.backup_id]
    assert set(plan.delete) == {f1.backup_id, l1.backup_id}
    assert set(plan.refused) == {f2.backup_id}
    assert [d.backup_id for d in plan.damaged] == [x.backup_id]


def test_the_newest_intact_backup_is_kept_in_a_real_repository(repo_url: str,
                                                               tmp_path: Path) -> None:
    """The same with real backups: M F1 L1 F2 of one database, then a database restored
    from M takes layer X on it (another incarnation, seq below F1's), and M's image goes.
    keep-last 1 keeps X (damaged) and F2 (the newest intact: its deletion refused),
    deletes F1 and L1; latest is refused naming M and hinting F2, which restores."""
    repo = Repository.init(repo_url)
    ids: dict[str, uuid.UUID] = {}
    with make_db(tmp_path / "db") as db:
        for name, value, full in (("m", b"1", True), ("f1", b"2", True), ("l1", b"3", False),
                                  ("f2", b"4", True)):
            db.put("t", b"a", value)
            ids[name] = repo.backup(db, full=full).backup_id
    repo.restore(tmp_path / "from-m", id=str(ids["m"]))
    with make_db(tmp_path / "from-m") as restored:
        restored.put("t", b"a", b"x")
        taken = repo.backup(restored)
    assert taken.kind == "layer" and taken.base_id == ids["m"]
    _image(repo, ids["m"]).unlink()
    code, out, err = cli.invoke("prune", "--repo", repo.url, "--keep-last", "1")
    assert code == 0, (out, err)
    assert f"refused: delete {ids['f2']}" in out
    assert _present(repo) == {taken.backup_id, ids["f2"]}
    code, out, err = _restore_latest(repo, tmp_path / "out")
    assert code == 4, (out, err)
    assert "damaged" in err and str(ids["m"]) in err and f"--id {ids['f2']}" in err
    repo.restore(tmp_path / "ok", id=str(ids["f2"]))
    assert content(tmp_path / "ok") == {b"a": b"4"}


#: Per backup: (full?, hours since the previous one).
plans = st.lists(st.tuples(st.booleans(), st.integers(1, 30)), min_size=2, max_size=10)
policies = st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 2)).filter(
    any).map(lambda t: KeepPolicy(last=t[0], daily=t[1], weekly=t[2]))


@settings(max_examples=300)
@given(steps=plans, policy=policies, data=st.data())
def test_plan_never_deletes_what_damage_may_need(steps: list[tuple[bool, int]],
                                                 policy: KeepPolicy,
                                                 data: st.DataObject) -> None:
    """One database's backups (layers on the newest), some images gone: the plan keeps
    every damaged backup, every image with a seq at or below a missing image's, and the
    newest intact backup (restorable after the plan)."""
    db = uuid.uuid4()
    records: list[ImageRecord] = []
    now = T0
    for seq, (full, hours) in enumerate(steps, start=1):
        now += hours * HOUR
        base = records[-1] if records and not full else None
        bid = uuid.uuid4()
        records.append(ImageRecord(bid, bid, db, "layer" if base else "full",
                                   None if base is None else base.image_id,
                                   0 if base is None else base.vp_seq, seq * 5, now, now,
                                   100 if base else 1000, 1))
    gone = data.draw(st.sets(st.sampled_from(range(len(records))), min_size=1,
                             max_size=len(records) - 1))
    index = Index(r for i, r in enumerate(records) if i not in gone)
    plan = plan_prune(index, policy)
    kept = set(index.records) - set(plan.delete)
    assert not plan.merges or all(m.backup_id in kept for m in plan.merges)
    missing_seqs = [r.base_vp_seq for r in index.records.values()
                    if r.is_layer and index.base_of(r) is None]
    for r in index.records.values():
        if index.chain_or_none(r) is None:
            assert r.backup_id in kept and "damaged" in plan.keep[r.backup_id]
        if any(r.vp_seq <= s for s in missing_seqs):
            assert r.backup_id in kept
    intact = [r for r in index.records.values() if index.chain_or_none(r) is not None]
    if intact:
        newest = max(intact, key=lambda r: (r.vp_wall_ns, r.vp_seq, str(r.backup_id)))
        # Restorable after the plan (merged layers become synthetic fulls).
        merged = {m.backup_id for m in plan.merges}
        after = Index(r if r.backup_id not in merged else ImageRecord(
            r.backup_id, r.image_id, r.database_id, "full", None, 0, r.vp_seq, r.vp_wall_ns,
            r.created_ns, 1000, 2) for r in index.records.values() if r.backup_id in kept)
        assert after.chain_or_none(after.records[newest.backup_id]) is not None
    # Without damage, nothing is refused.
    assert set(plan.refused) <= kept
    whole = plan_prune(Index(records), policy)
    assert not whole.refused and not whole.damaged
