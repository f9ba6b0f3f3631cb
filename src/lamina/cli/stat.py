"""``lamina stat DB``: what the database holds (btree pages and tables, archive tables)."""

from __future__ import annotations

import click

from lamina.cli.common import echo_fields, emit_json, iso_time, json_option, open_database


@click.command("stat")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """Show statistics: commit seq, btree depth/pages/entries, archive rows/bytes/ratio,
    and interrupted backups that can be resumed (their durable pins)."""
    with open_database(db, readonly=True) as database:
        stats = database.stat()
    if as_json:
        emit_json(stats)
        return
    shown = stats.pop("pins", [])
    echo_fields(stats)
    for pin in shown:
        state = ("lease active" if pin["state"] == "active"
                 else "expired: 'lamina backup DB --repo REPO --abandon' cleans up")
        click.echo(f"interrupted backup {pin['pin_id']} into {pin['where']}: validity point "
                   f"commit seq {pin['vp_seq']} at {iso_time(pin['vp_wall_ns'])}; "
                   f"resumable until {iso_time(pin['expires_ns'])} ({state})")
