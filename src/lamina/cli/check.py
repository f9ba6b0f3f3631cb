"""``lamina check DB``: run the checker; exit 0 when clean, 7 with the findings when not."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import echo_fields, emit_json, json_option, open_database, phase_status
from lamina.errors import CheckFailedError


@click.command("check")
@click.argument("db", type=click.Path())
@json_option
def command(db: str, as_json: bool) -> None:
    """Prove the database is sound: every page, hash, count, block and meta."""
    with open_database(db, readonly=True) as database, phase_status("check") as phase:
        report = database.check(progress=phase)
    if as_json:
        emit_json(report.to_json())
    else:
        echo_fields(report.stats)
        for finding in report.findings:
            click.echo(f"FINDING {finding}")
        click.echo("ok: no problems found" if report.ok
                   else f"{len(report.findings)} problem(s) found")
    if not report.ok:
        sys.exit(CheckFailedError.exit_code)
