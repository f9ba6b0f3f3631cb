"""``lamina stat DB``: what the database holds (btree pages and tables, archive tables)."""

from __future__ import annotations

import click

from lamina.cli.common import echo_fields, emit_json, json_option, open_database


@click.command("stat")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """Show statistics: commit seq, btree depth/pages/entries, archive rows/bytes/ratio."""
    with open_database(db, readonly=True) as database:
        stats = database.stat()
    if as_json:
        emit_json(stats)
        return
    echo_fields(stats)
