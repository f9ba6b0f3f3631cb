"""``lamina history DB``: every backup of the database and how it ended."""

from __future__ import annotations

import time

import click

from lamina.cli.common import emit_json, human_bytes, json_option, open_database


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


@click.command("history")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """List backups: id, start, VP time and seq, end, state, bytes, drivers, error."""
    from lamina.backup.history import BackupHistory

    with open_database(db, readonly=True) as database:
        entries = BackupHistory(database.path, database.lockfile).entries()
    if as_json:
        emit_json([e.to_json() for e in entries])
        return
    for e in entries:
        drivers = ",".join(sorted(set(e.drivers.values()))) or "-"
        line = (f"{e.backup_id[:8]}  {_when(e.started_ns)}  {e.shown_state():9}  "
                f"vp seq {e.vp_commit_seq or '-'} at {_when(e.vp_time_ns)}  "
                f"ended {_when(e.ended_ns)}  {human_bytes(e.bytes)}  {drivers}")
        click.echo(line + (f"  error: {e.error}" if e.error else ""))
