"""``lamina get DB TABLE KEY``: print the value, or exit 3 when the key is absent."""

from __future__ import annotations

import click

from lamina.cli.common import (
    TIMEOUT,
    decode_out,
    emit_json,
    encode_arg,
    hex_option,
    json_option,
    open_database,
)
from lamina.database import DEFAULT_LOCK_TIMEOUT
from lamina.errors import NotFoundError


@click.command("get")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@click.option("--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
              help="Seconds to wait for a lock (then exit 8); a read never waits for writers.")
@hex_option
@json_option
def command(db: str, table: str, key: str, lock_timeout: float, as_hex: bool,
            as_json: bool) -> None:
    """Print the value of KEY in a btree table."""
    k = encode_arg(key, as_hex, "key")
    with open_database(db, readonly=True) as database:
        database.lock_timeout = lock_timeout
        value = database.get(table, k)
    if value is None:
        raise NotFoundError(f"key {key} not found in table {table}")
    if as_json:
        emit_json({"table": table, "key": decode_out(k, as_hex),
                   "value": decode_out(value, as_hex)})
    else:
        click.echo(decode_out(value, as_hex))
