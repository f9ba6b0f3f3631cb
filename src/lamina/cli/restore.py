"""``lamina restore IMAGE|- --to DEST``: restore into a new, verified database directory."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import emit_json, json_option, progress_bar, progress_option, split_tables


@click.command("restore")
@click.argument("image")
@click.option("--to", "dest", required=True, type=click.Path(), help="New database directory.")
@click.option("--tables", default=None, help="Comma-separated tables to restore (default: all).")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@progress_option
@json_option
def command(image: str, dest: str, tables: str | None, force: bool, show_progress: bool | None,
            as_json: bool) -> None:
    """Restore IMAGE (a file, or - for stdin) into DEST; published only once proven."""
    from lamina.backup import online

    source = sys.stdin.buffer if image == "-" else image
    with progress_bar("restore", show_progress) as progress:
        summary = online.restore(source, dest, tables=split_tables(tables), force=force,
                                 progress=progress)
    if as_json:
        emit_json(summary.to_json())
        return
    info = summary.to_json()
    click.echo(f"restored image {info['image_id']} into {dest}: state at commit seq "
               f"{info['vp_commit_seq']}, {len(info['tables'])} table(s), "
               f"{info['seconds']:.2f}s; root hash and checker verified")
