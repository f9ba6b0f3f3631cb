"""Retained generations: what a running backup needs when ``optimize`` replaces a generation.

A backup's validity point V is a commit seq. The table state at V is "the generation current
at V, cut at the blocks with commit seq <= V". If an ``optimize`` publishes generation N+1
(at seq S > V) while the backup runs, generation N must stay readable. So ``optimize``, if any
live reader slot of kind *backup* exists when it publishes, keeps:

* ``NAME.ARZ.g<N>`` — a hard link to generation N's data file (never written again once
  replaced, so the link is a frozen copy for free);
* ``NAME.ARM.g<N>`` — a *copy* of the meta as of the publish (the live ``.ARM`` is updated
  in place, so a hard link to it would not stay frozen).

Protocol for a backup (the native driver and the snapshot driver's source): take a backup
slot (:func:`take_backup_slot`) *before* creating the VP, keep it until it has read
everything, release it, then call :func:`cleanup`. The check runs inside the commit
blocker, so either the optimize saw the slot, or it published before the VP (then the
current generation is the right one).
"""

from __future__ import annotations

from pathlib import Path

from lamina.core import fileio
from lamina.core.lockfile import LockFile, Slot
from lamina.core.lockfile_format import SLOT_BACKUP
from lamina.engines.archive.files import TableFiles
from lamina.engines.archive.format import RETAINED_RE, arm_path, arz_path, retained_paths
from lamina.engines.archive.meta import MetaRead, encode_file, read_meta_file
from lamina.errors import LaminaError, NotFoundError


def backup_running(lockfile: LockFile) -> bool:
    """True if any live reader slot belongs to a backup, or an interrupted backup holds a
    durable pin (:mod:`lamina.core.pins`) that a resume may still need."""
    if lockfile.live_pins():
        return True
    return any(kind == SLOT_BACKUP for _i, _p, _t, kind in lockfile.live_slots())


def take_backup_slot(lockfile: LockFile) -> Slot:
    """Own a lock-file reader slot marked *backup*, so every ``optimize`` that publishes
    from now on retains the generation it replaces. The caller releases the slot.

    The slot's txnid is the last published btree txnid (else the commit seq, at least 1):
    what a reader starting now would pin, so it holds back no btree page reuse that
    readers do not. Memory only; raises LockedError when every slot is in use.
    """
    slot = lockfile.acquire_slot()
    slot.set(max(1, lockfile.btree_txnid() or lockfile.commit_seq()), SLOT_BACKUP)
    return slot


def retained(directory: Path, name: str) -> list[tuple[int, tuple[Path, Path]]]:
    """``[(generation, (arm, arz))]`` of every retained generation (either file present)."""
    gens: set[int] = set()
    prefix = name + "."
    for entry in fileio.listdir(directory):
        if not entry.startswith(prefix):
            continue
        match = RETAINED_RE.search(entry)
        if match and entry[:match.start()] == name:
            gens.add(int(match.group(2)))
    return [(g, retained_paths(directory, name, g)) for g in sorted(gens)]


def retain_if_backup(files: TableFiles, read: MetaRead) -> bool:
    """Keep the current generation as ``.g<N>`` files if a backup is running (called by
    optimize under the table writer lock, inside the commit blocker, before the rename).
    Returns True if kept. Raises StorageError."""
    if not backup_running(files.lockfile):
        return False
    arm_keep, arz_keep = retained_paths(files.directory, files.name, read.meta.generation)
    fileio.unlink(arz_keep)
    fileio.link(files.arz_path, arz_keep)
    fileio.atomic_write_file(arm_keep, encode_file(read.meta), sync=files.sync)
    return True


def files_at(directory: Path, name: str, seq: int) -> tuple[Path, Path]:
    """The ``(arm, arz)`` files of the generation current at commit seq ``seq``: the one
    with the greatest generation commit seq <= ``seq``. NotFoundError if not retained."""
    candidates: list[tuple[int, Path, Path]] = []
    current = read_meta_file(arm_path(directory, name)).meta
    candidates.append((current.generation_commit_seq, arm_path(directory, name),
                       arz_path(directory, name)))
    for _gen, (arm, arz) in retained(directory, name):
        try:
            meta = read_meta_file(arm).meta
        except LaminaError:
            continue  # half-written or already cleaned up
        if fileio.exists(arz):
            candidates.append((meta.generation_commit_seq, arm, arz))
    eligible = [c for c in candidates if c[0] <= seq]
    if not eligible:
        raise NotFoundError(f"archive table {name!r}: the generation current at commit seq "
                            f"{seq} was not retained")
    _s, arm, arz = max(eligible, key=lambda c: c[0])
    return arm, arz


def cleanup(directory: Path, name: str, lockfile: LockFile) -> int:
    """Remove retained generations if no backup is running; returns files removed."""
    found = retained(directory, name)
    if not found or backup_running(lockfile):
        return 0
    removed = 0
    for _gen, pair in found:
        for path in pair:
            try:
                fileio.unlink(path, missing_ok=False)
            except FileNotFoundError:
                continue
            removed += 1
    return removed


__all__ = ["backup_running", "cleanup", "files_at", "retain_if_backup", "retained",
           "take_backup_slot"]
