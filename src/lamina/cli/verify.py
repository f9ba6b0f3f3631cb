"""``lamina verify IMAGE [--deep]``: prove an image sound without restoring it."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import emit_json, json_option, progress_bar, progress_option


@click.command("verify")
@click.argument("image")
@click.option("--deep", is_flag=True,
              help="Also rebuild the Merkle root from the btree pages and decode every "
                   "archive block (no database is written).")
@progress_option
@json_option
def command(image: str, deep: bool, show_progress: bool | None, as_json: bool) -> None:
    """Check every chunk checksum, stream hash, the manifest and footer (exit 4 if bad)."""
    from lamina.backup import online

    source = sys.stdin.buffer if image == "-" else image
    with progress_bar("verify", show_progress) as progress:
        report = online.verify(source, deep=deep, progress=progress)
    if as_json:
        emit_json(report)
        return
    click.echo(f"ok: image {report['image_id']} verified ({report['chunks']} chunks, "
               f"{report['streams']} streams{', deep' if deep else ''})")
