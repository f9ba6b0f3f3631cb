"""``lamina put DB TABLE KEY VALUE``."""

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


@click.command("put")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@click.argument("value")
@click.option("--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
              help="Seconds to wait for the database's writer lock (then exit 8).")
@hex_option
@json_option
def command(db: str, table: str, key: str, value: str, lock_timeout: float, as_hex: bool,
            as_json: bool) -> None:
    """Set KEY to VALUE in a btree table (one commit)."""
    k, v = encode_arg(key, as_hex, "key"), encode_arg(value, as_hex, "value")
    with open_database(db) as database:
        database.lock_timeout = lock_timeout
        seq = database.put(table, k, v)
    if as_json:
        emit_json({"table": table, "key": decode_out(k, as_hex), "commit_seq": seq})
    else:
        click.echo(f"ok (commit seq {seq})")
