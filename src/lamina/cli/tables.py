"""``lamina tables DB``: list the catalog."""

from __future__ import annotations

import dataclasses

import click

from lamina.cli.common import emit_json, json_option, open_database


@click.command("tables")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """List tables: name, engine, id, creation commit seq."""
    with open_database(db, readonly=True) as database:
        tables = database.tables()
    if as_json:
        emit_json([dataclasses.asdict(t) for t in tables])
        return
    for t in tables:
        click.echo(f"{t.name}\t{t.engine}\tid={t.table_id}\tcreated_seq={t.created_seq}")
