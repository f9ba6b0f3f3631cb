"""``lamina stat DB``: what the database holds (btree pages and tables, archive tables)."""

from __future__ import annotations

from typing import Any

import click

from lamina.cli.common import emit_json, human_bytes, json_option, open_database


def _flatten(prefix: str, obj: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(obj, dict):
        for key in sorted(obj):
            _flatten(f"{prefix}.{key}" if prefix else str(key), obj[key], out)
    else:
        out.append((prefix, obj))


@click.command("stat")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """Show statistics: commit seq, btree depth/pages/entries, archive rows/bytes/ratio."""
    with open_database(db, readonly=True) as database:
        stats = database.stat()
    if as_json:
        emit_json(stats)
        return
    rows: list[tuple[str, Any]] = []
    _flatten("", stats, rows)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        shown = human_bytes(value) if key.endswith("bytes") and isinstance(value, int) else value
        click.echo(f"{key.ljust(width)}  {shown}")
