"""``lamina delete DB TABLE KEY``: exit 3 when the key was absent."""

from __future__ import annotations

import click

from lamina.cli.common import encode_arg, hex_option, open_database
from lamina.errors import NotFoundError


@click.command("delete")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@hex_option
def command(db: str, table: str, key: str, as_hex: bool) -> None:
    """Delete KEY from a btree table (one commit)."""
    with open_database(db) as database:
        found = database.delete(table, encode_arg(key, as_hex, "key"))
    if not found:
        raise NotFoundError(f"key {key!r} not found in table {table!r}")
    click.echo("deleted")
