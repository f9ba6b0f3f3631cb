"""``lamina info IMAGE``: header, catalog, validity point and sizes, without reading data."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from lamina.cli.common import (
    emit_json,
    flatten,
    human_bytes,
    human_key,
    human_value,
    json_option,
)
from lamina.cli.passphrase import password_options, standalone_keyring, unauthenticated_hint
from lamina.core.identity import FILE_NAME as IDENTITY_FILE
from lamina.errors import NotADatabaseError


def _facts(facts: Mapping[str, Any]) -> str:
    return ", ".join(f"{human_key(k)} {human_value(k, v)}" for k, v in flatten(facts)) or "-"


def _refuse_directory(image: str) -> None:
    """An image is a file: a directory (a database, most likely) is not one (exit 5)."""
    path = Path(image)
    if not path.is_dir():
        return
    if (path / IDENTITY_FILE).exists():
        raise NotADatabaseError(f"{image} is not a Lamina image: it is a database directory "
                                f"(describe a database with `lamina stat {image}`)")
    raise NotADatabaseError(f"{image} is not a Lamina image: it is a directory")


@click.command("info")
@click.argument("image", type=click.Path())
@password_options
@json_option
def command(image: str, as_json: bool) -> None:
    """Describe a backup image from its header and trailer only. Of an encrypted image
    without its passphrase: only what is not secret (no tables, drivers or VP facts)."""
    from lamina.backup.image_reader import read_info

    _refuse_directory(image)
    summary = read_info(image, keyring=standalone_keyring([image])).to_json()
    if as_json:
        emit_json(summary)
        return
    scalars = [(k, v) for k, v in summary.items() if not isinstance(v, dict | list)]
    for key, value in scalars:
        click.echo(f"{human_key(key)}: {human_value(key, value)}")
    vp = summary.get("vp")
    if isinstance(vp, Mapping):
        click.echo(f"vp: commit seq {vp.get('commit_seq')} at "
                   f"{human_value('wall_ns', vp.get('wall_ns'))}")
    if summary.get("encrypted") and not summary.get("authenticated"):
        click.echo(f"tables: (encrypted image, not authenticated: {unauthenticated_hint()}; "
                   "then its tables are shown)")
        return
    drivers = summary.get("drivers") or []
    click.echo("drivers:" if drivers else "drivers: -")
    for d in drivers:
        click.echo(f"  {d.get('name')} v{d.get('version')} ({d.get('kind')}, common stream "
                   f"{d.get('common_stream')}): {_facts(d.get('vp_info') or {})}")
    tables = summary.get("tables") or []
    click.echo("tables:" if tables else "tables: -")
    for t in tables:
        click.echo(f"  {t.get('name')}: {t.get('engine')} table id {t.get('table_id')}, "
                   f"{t.get('driver')} driver, stream {t.get('stream')}, "
                   f"{human_bytes(t.get('raw_bytes') or 0)} raw, "
                   f"{human_bytes(t.get('stored_bytes') or 0)} stored, "
                   f"{t.get('chunks')} chunks, hash {t.get('hash')}")
    for key, value in summary.items():
        if key not in ("vp", "drivers", "tables") and isinstance(value, dict | list):
            click.echo(f"{human_key(key)}: {human_value(key, value)}")
