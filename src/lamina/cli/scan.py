"""``lamina scan DB TABLE``: key/value pairs of a btree table, or rows of an archive table."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import click

from lamina.cli.common import (
    decode_out,
    emit_json,
    encode_arg,
    hex_option,
    json_option,
    open_database,
)
from lamina.errors import UsageError


@click.command("scan")
@click.argument("db", type=click.Path())
@click.argument("table")
@click.option("--prefix", default=None, help="Btree: only keys starting with this.")
@click.option("--start", default=None,
              help="Btree: first key (>=). Archive: first row id (default 1).")
@click.option("--limit", type=int, default=None, help="At most this many entries.")
@hex_option
@json_option
def command(db: str, table: str, prefix: str | None, start: str | None, limit: int | None,
            as_hex: bool, as_json: bool) -> None:
    """Print entries in key order (btree) or row-id order (archive), one per line."""
    with open_database(db, readonly=True) as database:
        info = database.table_info(table)
        out: list[dict[str, object]] = []
        if info.engine == "archive":
            if prefix is not None:
                raise UsageError("--prefix applies to btree tables only")
            try:
                first = int(start) if start is not None else 1
            except ValueError as exc:
                raise UsageError(f"--start for an archive table is a row id, not {start!r}") \
                    from exc
            rows: Iterator[tuple[int, bytes]] = database.scan(table, first)
            for row_id, row in itertools.islice(rows, limit):
                if as_json:
                    out.append({"row_id": row_id, "row": decode_out(row, as_hex)})
                else:
                    click.echo(f"{row_id}\t{decode_out(row, as_hex)}")
        else:
            with database.read() as txn:
                t = txn.table(table)
                if prefix is not None:
                    pfx = encode_arg(prefix, as_hex, "prefix")
                    items = t.prefix(pfx)
                    if start is not None:
                        lo = encode_arg(start, as_hex, "start")
                        items = (kv for kv in items if kv[0] >= lo)
                else:
                    items = t.items(encode_arg(start, as_hex, "start") if start else None)
                for key, value in itertools.islice(items, limit):
                    k, v = decode_out(key, as_hex), decode_out(value, as_hex)
                    if as_json:
                        out.append({"key": k, "value": v})
                    else:
                        click.echo(f"{k}\t{v}")
    if as_json:
        emit_json(out)
