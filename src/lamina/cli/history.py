"""``lamina history DB``: every backup of the database and how it ended."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from lamina.cli.common import emit_json, human_bytes, iso_time, json_option, open_database

if TYPE_CHECKING:
    from lamina.backup.history import HistoryEntry


def image_id_of(entry: HistoryEntry) -> str | None:
    """The id of the image a history entry produced: the one ``backup``, ``info`` and
    ``list`` print.

    Every finished backup's record holds it (``image_id``: file, stdout and repository
    backups alike). Records of older builds do not: for those, a finished backup into a
    file has the image's header read, accepted only if the image is at the entry's VP."""
    if entry.image_id:
        return entry.image_id
    if entry.state != "done" or not entry.target or entry.target == "-":
        return None
    from lamina.backup.image_reader import read_info
    from lamina.errors import LaminaError

    target = Path(entry.target)
    if not target.is_absolute():
        target = Path.cwd() / target
    try:
        info = read_info(target)
    except (LaminaError, OSError):
        return None
    if info.manifest.vp.commit_seq != entry.vp_commit_seq or \
            info.manifest.vp.wall_ns != entry.vp_time_ns:
        return None
    return str(info.header.image_id)


@click.command("history")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """List backups: image id, start, state, VP seq and time, end, bytes, drivers, error."""
    from lamina.backup.history import BackupHistory

    with open_database(db, readonly=True) as database:
        entries = BackupHistory(database.path, database.lockfile).entries()
    rows = [(e, image_id_of(e)) for e in entries]
    if as_json:
        # "backup_id" means an image's id everywhere else (list, repo backup, prune): the
        # history's own record id is "history_id" here.
        out = []
        for e, image_id in rows:
            record = e.to_json()
            record["history_id"] = record.pop("backup_id")
            out.append({**record, "image_id": image_id})
        emit_json(out)
        return
    for e, image_id in rows:
        drivers = ",".join(sorted(set(e.drivers.values()))) or "-"
        line = (f"{image_id or '-':36}  {e.kind:5}  {e.shown_state():9}  "
                f"started {iso_time(e.started_ns)}  "
                f"vp seq {e.vp_commit_seq or '-'} at {iso_time(e.vp_time_ns)}  "
                f"ended {iso_time(e.ended_ns)}  {human_bytes(e.bytes)}  {drivers}")
        click.echo(line + (f"  error: {e.error}" if e.error else ""))
