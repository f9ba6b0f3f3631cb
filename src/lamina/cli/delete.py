"""``lamina delete DB TABLE KEY``: exit 3 when the key was absent."""

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


@click.command("delete")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@click.option("--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
              help="Seconds to wait for the database's writer lock (then exit 8).")
@hex_option
@json_option
def command(db: str, table: str, key: str, lock_timeout: float, as_hex: bool,
            as_json: bool) -> None:
    """Delete KEY from a btree table (one commit)."""
    k = encode_arg(key, as_hex, "key")
    with open_database(db) as database:
        database.lock_timeout = lock_timeout
        found = database.delete(table, k)
    if not found:
        raise NotFoundError(f"key {key} not found in table {table}")
    if as_json:
        emit_json({"table": table, "key": decode_out(k, as_hex), "deleted": True})
    else:
        click.echo("deleted")
