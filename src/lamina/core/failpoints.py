"""Named failpoints for crash tests: a process dies with SIGKILL at a chosen point.

A failpoint is armed by the environment variable ``LAMINA_FAILPOINT`` holding
``name`` or ``name:N`` (die at the N-th hit, default 1), read once at import, so a test
starts a writer subprocess with it set and the process kills itself at that exact place.
Disarmed failpoints cost one dict lookup. With ``LAMINA_FAILPOINT_ACTION=stop`` the process
stops itself with SIGSTOP instead (a test then sees it stopped in ``/proc``, copies its
files as a crash would leave them, and kills or continues it). Every name used in the
code is listed in :data:`NAMES` so tests can iterate over all of them.
"""

from __future__ import annotations

import os
import signal

#: Every failpoint name that the code base hits, with where it sits.
NAMES: dict[str, str] = {
    "btree.before_page_write": "btree commit: before the first dirty page is written",
    "btree.after_page_write": "btree commit: pages written, before the data fsync",
    "btree.after_data_sync": "btree commit: data fsynced, before the meta page write",
    "btree.mid_meta_write": "btree commit: half of the meta page written (torn meta)",
    "btree.after_meta_write": "btree commit: meta written and synced, before returning",
    "archive.before_block_write": "archive commit: before the block is appended",
    "archive.mid_block_write": "archive commit: half of the block written (torn tail)",
    "archive.after_data_sync": "archive commit: block fsynced, before the meta replace",
    "archive.mid_meta_write": "archive commit: half of the new meta slot written",
    "archive.after_meta_write": "archive commit: meta replaced, before returning",
    "archive.optimize_before_publish": "optimize: new generation written, not published",
    "archive.optimize_mid_publish": "optimize: data file renamed, meta not yet rolled forward",
    "catalog.after_files_created": "create-table: engine files made, catalog not committed",
    "catalog.after_commit_before_unlink": "drop-table: catalog committed, files not removed",
    "repository.prune_planned": "prune: plan made, nothing of dead writers removed yet",
    "repository.prune_step": "prune: after each merge publish and each delete (use name:N)",
    "repository.merge_staged": "merge_layers: merged layer staged and proven, not published",
    "repository.merge_published": "merge_layers: merged layer published, index not saved",
    "restore.publish_staged": "restore publish: proven, identity staged, nothing renamed",
    "restore.publish_parked": "restore --force: old DEST renamed aside, new not in place",
    "restore.publish_renamed": "restore publish: new DEST in place, identity still pending",
    "restore.publish_identity": "restore publish: LAMINA in place, parked old not removed",
    "backup.image_chunk_written": "image writer: after each chunk written (use name:N)",
    "backup.pinned": "repository backup: VP pinned durably, no data sent yet",
    "backup.upload_part_stored": "repository backup: after each upload part stored (name:N)",
    "backup.before_publish": "repository backup: every part stored, image not published",
    "backup.after_publish": "repository backup: image and index published, pin not released",
}

_armed: dict[str, int] = {}


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, count = item.partition(":")
        armed[name] = int(count) if count else 1
    return armed


_armed.update(_parse(os.environ.get("LAMINA_FAILPOINT", "")))
_action = os.environ.get("LAMINA_FAILPOINT_ACTION", "kill")


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL (or stop it, see the module doc) if failpoint
    ``name`` is armed and its count reached.

    Returns normally (doing nothing) when the failpoint is not armed.
    """
    if not _armed:
        return
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining > 1:
        _armed[name] = remaining - 1
        return
    if _action == "stop":
        del _armed[name]  # once: a continued process runs to its end
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def arm(spec: str) -> None:
    """Arm failpoints in this process (same syntax as ``LAMINA_FAILPOINT``); for tests."""
    _armed.clear()
    _armed.update(_parse(spec))


def is_armed(name: str) -> bool:
    """True if failpoint ``name`` is armed, so a caller can split work around it (e.g.
    write half a block) only in crash tests and keep the hot path one system call."""
    return name in _armed
