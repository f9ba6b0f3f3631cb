"""``lamina list --repo REPO``: every backup in a repository, with its chain and sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from lamina.cli.common import emit_json, human_bytes, iso_time, json_option
from lamina.cli.passphrase import password_options
from lamina.cli.repo import lock_timeout_option, note_rebuilt, open_repository

if TYPE_CHECKING:
    from lamina.repository import Repository


@click.command("list")
@click.option("--repo", "repo_path", required=True, type=click.Path(), help="Repository.")
@click.option("--points", "points", is_flag=True,
              help="List restorable points (oldest first): VP time and seq, images a "
                   "restore reads, chain size.")
@click.option("--database", default=None, help="With --points: only this database (id or "
              "prefix).")
@lock_timeout_option
@password_options
@json_option
def command(repo_path: str, points: bool, database: str | None, lock_timeout: float,
            as_json: bool) -> None:
    """List backups: id, kind, base, database, VP time and seq, size, chain size."""
    repo = open_repository(repo_path, lock_timeout)
    if points or database is not None:
        _points(repo, database, as_json)
        return
    entries, rebuilt = repo.list()
    note_rebuilt(repo, rebuilt)
    if as_json:
        emit_json({"backups": [e.to_json() for e in entries], "index_rebuilt": rebuilt})
        return
    if not entries:
        click.echo("no backups")
        return
    click.echo(f"{'ID':36}  {'KIND':9}  {'BASE':8}  {'DATABASE':8}  {'VP TIME (UTC)':27}  "
               f"{'SEQ':>8}  {'SIZE':>10}  {'CHAIN':>10}")
    for e in entries:
        j = e.to_json()
        kind = "full*" if j["synthetic"] else j["kind"]
        if e.record.error is not None:
            click.echo(f"{j['id']:36}  damaged: {e.record.error}")
            continue
        line = (f"{j['id']:36}  {kind:9}  {(j['base'] or '-')[:8]:8}  "
                f"{j['database_id'][:8]:8}  {iso_time(j['vp_time_ns']):27}  {j['vp_seq']:>8}  "
                f"{human_bytes(j['size']):>10}  {human_bytes(j['chain_size']):>10}")
        click.echo(line + (f"  BROKEN: {e.problem}" if e.problem else ""))
    if any(e.to_json()["synthetic"] for e in entries):
        click.echo("full*: a synthetic full (a layer's chain merged by prune)")


def _points(repo: Repository, database: str | None, as_json: bool) -> None:
    """``list --points``: every restorable point, oldest VP first."""
    from lamina.repository.points import list_points

    found, rebuilt = list_points(repo, database)
    note_rebuilt(repo, rebuilt)
    if as_json:
        emit_json({"points": [p.to_json() for p in found], "index_rebuilt": rebuilt})
        return
    if not found:
        click.echo("no restorable points")
        return
    click.echo(f"{'VP TIME (UTC)':32}  {'SEQ':>8}  {'ID':36}  {'KIND':5}  {'IMAGES':>6}  "
               f"{'CHAIN':>10}")
    for p in found:
        j = p.to_json()
        click.echo(f"{j['vp_time']:32}  {p.vp_seq:>8}  {j['id']:36}  {p.kind:5}  "
                   f"{p.images:>6}  {human_bytes(p.chain_bytes):>10}")
