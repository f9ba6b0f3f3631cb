"""``lamina get DB TABLE KEY``: print the value, or exit 3 when the key is absent."""

from __future__ import annotations

import click

from lamina.cli.common import decode_out, encode_arg, hex_option, open_database
from lamina.errors import NotFoundError


@click.command("get")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@hex_option
def command(db: str, table: str, key: str, as_hex: bool) -> None:
    """Print the value of KEY in a btree table."""
    with open_database(db, readonly=True) as database:
        value = database.get(table, encode_arg(key, as_hex, "key"))
    if value is None:
        raise NotFoundError(f"key {key!r} not found in table {table!r}")
    click.echo(decode_out(value, as_hex))
