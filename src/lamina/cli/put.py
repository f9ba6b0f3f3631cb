"""``lamina put DB TABLE KEY VALUE``."""

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


@click.command("put")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("key")
@click.argument("value")
@hex_option
@json_option
def command(db: str, table: str, key: str, value: str, as_hex: bool, as_json: bool) -> None:
    """Set KEY to VALUE in a btree table (one commit)."""
    k, v = encode_arg(key, as_hex, "key"), encode_arg(value, as_hex, "value")
    with open_database(db) as database:
        seq = database.put(table, k, v)
    if as_json:
        emit_json({"table": table, "key": decode_out(k, as_hex), "commit_seq": seq})
    else:
        click.echo(f"ok (commit seq {seq})")
