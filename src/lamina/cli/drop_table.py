"""``lamina drop-table DB TABLE``."""

from __future__ import annotations

import click

from lamina.cli.common import emit_json, json_option, open_database


@click.command("drop-table")
@click.argument("db", type=click.Path())
@click.argument("table")
@json_option
def command(db: str, table: str, as_json: bool) -> None:
    """Drop a table and all its data."""
    with open_database(db) as database:
        database.drop_table(table)
    if as_json:
        emit_json({"table": table, "dropped": True})
    else:
        click.echo(f"dropped table {table}")
