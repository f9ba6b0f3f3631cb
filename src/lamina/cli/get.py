"""``lamina get DB TABLE KEY``: print the value, or exit 3 when the key is absent."""

from __future__ import annotations

import click

from lamina.cli.common import (
    decode_out,
    emit_json,
    encode_arg,
    hex_option,
    json_option,
    open_database,
)
from lamina.errors import NotFoundError


@click.command("get")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@hex_option
@json_option
def command(db: str, table: str, key: str, as_hex: bool, as_json: bool) -> None:
    """Print the value of KEY in a btree table."""
    k = encode_arg(key, as_hex, "key")
    with open_database(db, readonly=True) as database:
        value = database.get(table, k)
    if value is None:
        raise NotFoundError(f"key {key} not found in table {table}")
    if as_json:
        emit_json({"table": table, "key": decode_out(k, as_hex),
                   "value": decode_out(value, as_hex)})
    else:
        click.echo(decode_out(value, as_hex))
