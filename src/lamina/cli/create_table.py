"""``lamina create-table DB TABLE --engine btree|archive``."""

from __future__ import annotations

import dataclasses

import click

from lamina.cli.common import check_level, emit_json, json_option, open_database
from lamina.core.names import validate_table_name
from lamina.errors import UsageError


@click.command("create-table")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.option("--engine", type=click.Choice(["btree", "archive"]), default="btree",
              show_default=True)
@click.option("--codec", type=click.Choice(["zstd", "zlib", "none"]), default=None,
              help="Archive tables: block compression [default: zstd].")
@click.option("--level", type=int, default=None,
              help="Archive tables: compression level (zstd -7..22, zlib 0..9).")
@json_option
def command(db: str, table: str, engine: str, codec: str | None, level: int | None,
            as_json: bool) -> None:
    """Create a table (creates the database too if DB does not exist)."""
    validate_table_name(table)  # before DB is created
    if engine != "archive":
        for given, option in ((codec, "--codec"), (level, "--level")):
            if given is not None:
                raise UsageError(f"{option} applies to archive tables only "
                                 f"(--engine archive), not to {engine} tables")
    codec = codec or "zstd"
    check_level(codec, level, option="--codec")
    with open_database(db, create=True) as database:
        info = database.create_table(table, engine, codec=codec, level=level)
    if as_json:
        emit_json(dataclasses.asdict(info))
    else:
        click.echo(f"created {info.engine} table {info.name} (id {info.table_id})")
