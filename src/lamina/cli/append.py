"""``lamina append DB TABLE ROW...`` (or ``-`` for rows from stdin, one per line)."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import (
    TIMEOUT,
    emit_json,
    encode_arg,
    hex_option,
    json_option,
    open_database,
)
from lamina.database import DEFAULT_LOCK_TIMEOUT
from lamina.errors import UsageError


@click.command("append")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.argument("rows", nargs=-1, required=True)
@click.option("--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
              help="Seconds to wait for the table's writer lock (then exit 8).")
@hex_option
@json_option
def command(db: str, table: str, rows: tuple[str, ...], lock_timeout: float, as_hex: bool,
            as_json: bool) -> None:
    """Append rows to an archive table in one commit; prints the row ids."""
    if rows == ("-",):
        if sys.stdin.isatty():
            raise UsageError("'-' reads rows from stdin, which is a terminal; redirect it "
                             "(< FILE, COMMAND |)")
        data = [encode_arg(line.rstrip("\n"), as_hex, "row")
                for line in sys.stdin if line.strip("\n")]
    elif "-" in rows:
        raise UsageError("'-' (rows from stdin) must be the only ROW argument")
    else:
        data = [encode_arg(r, as_hex, "row") for r in rows]
    ids: list[int] = []
    if data:
        with open_database(db) as database:
            database.lock_timeout = lock_timeout
            ids = database.append_many(table, data)
    if as_json:
        emit_json({"table": table, "rows": len(ids),
                   "first_row_id": ids[0] if ids else None,
                   "last_row_id": ids[-1] if ids else None})
    elif not ids:
        click.echo("nothing to append")
    else:
        click.echo(f"appended rows {ids[0]}..{ids[-1]}" if len(ids) > 1
                   else f"appended row {ids[0]}")
