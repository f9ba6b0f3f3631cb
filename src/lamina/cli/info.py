"""``lamina info IMAGE``: header, catalog, validity point and sizes, without reading data."""

from __future__ import annotations

import click

from lamina.cli.common import emit_json, human_bytes, json_option


@click.command("info")
@click.argument("image", type=click.Path())
@json_option
def command(image: str, as_json: bool) -> None:
    """Describe a backup image from its header and trailer only."""
    from lamina.backup.image_reader import read_info

    summary = read_info(image).to_json()
    if as_json:
        emit_json(summary)
        return
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            continue
        click.echo(f"{key}: {human_bytes(value) if key.endswith('size') else value}")
    for key, value in summary.items():
        if isinstance(value, list):
            click.echo(f"{key}:")
            for item in value:
                click.echo(f"  {item}")
        elif isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
