"""``lamina create-table DB TABLE --engine btree|archive``."""

from __future__ import annotations

import click

from lamina.cli.common import open_database


@click.command("create-table")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.option("--engine", type=click.Choice(["btree", "archive"]), default="btree",
              show_default=True)
@click.option("--codec", type=click.Choice(["zstd", "zlib", "none"]), default="zstd",
              show_default=True, help="Archive tables: block compression.")
@click.option("--level", type=int, default=None, help="Archive tables: compression level.")
def command(db: str, table: str, engine: str, codec: str, level: int | None) -> None:
    """Create a table (creates the database too if DB does not exist)."""
    with open_database(db, create=True) as database:
        info = database.create_table(table, engine, codec=codec, level=level)
    click.echo(f"created {info.engine} table {info.name!r} (id {info.table_id})")
