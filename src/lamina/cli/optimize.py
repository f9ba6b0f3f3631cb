"""``lamina optimize DB TABLE``: rewrite an archive table into larger blocks."""

from __future__ import annotations

import click

from lamina.cli.common import emit_json, flatten, human_key, human_value, json_option, open_database


@click.command("optimize")
@click.argument("db", type=click.Path())
@click.argument("table")
@json_option
def command(db: str, table: str, as_json: bool) -> None:
    """Rewrite TABLE as a new generation of larger blocks (readers keep the old one)."""
    with open_database(db) as database:
        stats = database.archive(table).optimize()
    if as_json:
        emit_json(stats)
    else:
        click.echo(", ".join(f"{human_key(k)} {human_value(k, v)}" for k, v in flatten(stats)))
