"""``lamina put DB TABLE KEY VALUE``."""

from __future__ import annotations

import click

from lamina.cli.common import encode_arg, hex_option, open_database


@click.command("put")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@click.argument("value")
@hex_option
def command(db: str, table: str, key: str, value: str, as_hex: bool) -> None:
    """Set KEY to VALUE in a btree table (one commit)."""
    with open_database(db) as database:
        seq = database.put(table, encode_arg(key, as_hex, "key"),
                           encode_arg(value, as_hex, "value"))
    click.echo(f"ok (commit seq {seq})")
