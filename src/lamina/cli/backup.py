"""``lamina backup DB IMAGE|- [--base BASE]``: a consistent online backup while writers go on
(with ``--base``, an incremental layer on top of an earlier image)."""

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
from lamina.cli.repo import lock_timeout_option


@click.command("backup")
@click.argument("db", type=click.Path())
@click.argument("image", required=False)
@click.option("--tables", default=None, help="Comma-separated tables (default: all).")
@click.option("--compress", "codec", type=click.Choice(["zstd", "zlib", "none"]),
              default="zstd", show_default=True)
@click.option("--level", type=int, default=None, help="Compression level.")
@click.option("--repo", "repo_path", default=None, type=click.Path(),
              help="Back up into this repository (a layer when possible) instead of IMAGE.")
@click.option("--full", is_flag=True, help="With --repo: a full image, never a layer.")
@click.option("--base", "base", default=None, type=click.Path(dir_okay=False),
              help="Write a layer: only what changed after this earlier image of DB (full "
                   "or layer); restore it with its chain.")
@click.option("--driver", default=None,
              help="Force backup drivers: native|snapshot|default for every table, or per "
                   "table as t1=default,t2=snapshot (default: native, else snapshot, else "
                   "default).")
@click.option("--max-rate", type=float, default=None, metavar="MB/S",
              help="Bound the backup's read rate (MB/s, 10^6 bytes per second).")
@click.option("--table-lock-timeout", type=float, default=30.0, show_default=True,
              help="Seconds the default driver tries to lock its tables (then exit 8).")
@lock_timeout_option
@progress_option
@json_option
def command(db: str, image: str | None, tables: str | None, codec: str, level: int | None,
            repo_path: str | None, full: bool, base: str | None, driver: str | None,
            max_rate: float | None,
            table_lock_timeout: float, lock_timeout: float,
            show_progress: bool | None, as_json: bool) -> None:
    """Back up DB into IMAGE (a new file, or - for stdout), or into a repository with
    --repo (prints the backup id)."""
    from lamina import online

    if repo_path is not None or image is None:
        if base is not None:
            from lamina.errors import UsageError
            raise UsageError("--base names the base image of IMAGE; a repository picks "
                             "the base itself")
        from lamina.cli.repo import backup_to_repo
        backup_to_repo(db, image, repo_path, full=full, tables=tables, codec=codec,
                       lock_timeout=lock_timeout, show_progress=show_progress,
                       as_json=as_json)
        return

    target = sys.stdout.buffer if image == "-" else image
    with open_database(db) as database, progress_bar("backup", show_progress) as progress:
        result = online.backup(database, target, tables=split_tables(tables), codec=codec,
                               level=level, progress=progress, driver=driver,
                               max_rate=max_rate, lock_timeout=table_lock_timeout,
                               base=base)
    summary = online.describe(result)
    out = click.echo if image != "-" else (lambda msg: click.echo(msg, err=True))
    if as_json:
        if image == "-":
            import json
            click.echo(json.dumps(summary, sort_keys=True), err=True)
        else:
            emit_json(summary)
        return
    kind = "layer" if base is not None else "image"
    out(f"{kind} {summary['image_id']} -> {image}")
    out(f"validity point: commit seq {summary['vp_commit_seq']}, "
        f"time {summary['vp_time_ns'] / 1e9:.6f}")
    out(f"{human_bytes(summary['bytes'])} written ({human_bytes(summary['raw_bytes'])} raw) "
        f"in {summary['seconds']:.2f}s; commit blocker held {summary['blocker_held_ms']:.3f} ms")
    for table, driver in sorted(summary["drivers"].items()):
        out(f"  {table}: {driver} driver")
