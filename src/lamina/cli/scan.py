"""``lamina scan DB TABLE``: key/value pairs of a btree table, or rows of an archive table."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator

import click

from lamina.cli.common import (
    decode_out,
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
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most this many entries.")
@hex_option
@json_option
def command(db: str, table: str, prefix: str | None, start: str | None, limit: int | None,
            as_hex: bool, as_json: bool) -> None:
    """Print entries in key order (btree) or row-id order (archive), one per line; with
    --json one JSON object per line (JSON Lines), streamed as it is read."""
    pfx = None if prefix is None else encode_arg(prefix, as_hex, "prefix")
    # Written through stdout's buffer, one line per entry: memory stays constant however
    # many entries there are, and a reader sees the first lines at once.
    write = sys.stdout.write
    dumps = json.JSONEncoder(sort_keys=True).encode
    with open_database(db, readonly=True) as database:
        info = database.table_info(table)
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
                    write(dumps({"row_id": row_id, "row": decode_out(row, as_hex)}) + "\n")
                else:
                    write(f"{row_id}\t{decode_out(row, as_hex)}\n")
        else:
            with database.read() as txn:
                t = txn.table(table)
                if pfx is not None:
                    items = t.prefix(pfx)
                    if start is not None:
                        lo = encode_arg(start, as_hex, "start")
                        items = (kv for kv in items if kv[0] >= lo)
                else:
                    items = t.items(encode_arg(start, as_hex, "start") if start else None)
                for key, value in itertools.islice(items, limit):
                    k, v = decode_out(key, as_hex), decode_out(value, as_hex)
                    if as_json:
                        write(dumps({"key": k, "value": v}) + "\n")
                    else:
                        write(f"{k}\t{v}\n")
    sys.stdout.flush()
