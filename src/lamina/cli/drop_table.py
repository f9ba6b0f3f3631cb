"""``lamina drop-table DB TABLE``."""

from __future__ import annotations

import click

from lamina.cli.common import open_database


@click.command("drop-table")
@click.argument("db", type=click.Path())
@click.argument("table")
def command(db: str, table: str) -> None:
    """Drop a table and all its data."""
    with open_database(db) as database:
        database.drop_table(table)
    click.echo(f"dropped table {table!r}")
