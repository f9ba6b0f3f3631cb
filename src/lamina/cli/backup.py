"""``lamina backup DB IMAGE|-``: a consistent online backup while writers go on."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import (
    emit_json,
    human_bytes,
    json_option,
    open_database,
    progress_bar,
    progress_option,
    split_tables,
)


@click.command("backup")
@click.argument("db", type=click.Path())
@click.argument("image")
@click.option("--tables", default=None, help="Comma-separated tables (default: all).")
@click.option("--compress", "codec", type=click.Choice(["zstd", "zlib", "none"]),
              default="zstd", show_default=True)
@click.option("--level", type=int, default=None, help="Compression level.")
@progress_option
@json_option
def command(db: str, image: str, tables: str | None, codec: str, level: int | None,
            show_progress: bool | None, as_json: bool) -> None:
    """Back up DB into IMAGE (a new file, or - for stdout)."""
    from lamina.backup import online

    target = sys.stdout.buffer if image == "-" else image
    with open_database(db) as database, progress_bar("backup", show_progress) as progress:
        result = online.backup(database, target, tables=split_tables(tables), codec=codec,
                               level=level, progress=progress)
    summary = online.describe(result)
    out = click.echo if image != "-" else (lambda msg: click.echo(msg, err=True))
    if as_json:
        if image == "-":
            import json
            click.echo(json.dumps(summary, sort_keys=True), err=True)
        else:
            emit_json(summary)
        return
    out(f"image {summary['image_id']} -> {image}")
    out(f"validity point: commit seq {summary['vp_commit_seq']}, "
        f"time {summary['vp_time_ns'] / 1e9:.6f}")
    out(f"{human_bytes(summary['bytes'])} written ({human_bytes(summary['raw_bytes'])} raw) "
        f"in {summary['seconds']:.2f}s; commit blocker held {summary['blocker_held_ms']:.3f} ms")
    for table, driver in sorted(summary["drivers"].items()):
        out(f"  {table}: {driver} driver")
