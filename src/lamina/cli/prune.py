"""``lamina prune --repo REPO --keep-last N ...``: forget old backups, never a needed one."""

from __future__ import annotations

import click

from lamina.cli.common import cancellation, emit_json, human_bytes, json_option
from lamina.cli.passphrase import password_options
from lamina.cli.repo import lock_timeout_option, note_rebuilt, open_repository


@click.command("prune")
@click.option("--repo", "repo_path", required=True, type=click.Path(), help="Repository.")
@click.option("--keep-last", type=click.IntRange(min=0), default=0,
              help="Keep the N newest backups (per database).")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0,
              help="Keep the newest backup of each of the N last days with backups (UTC).")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0,
              help="Keep the newest backup of each of the N last ISO weeks with backups.")
@click.option("--dry-run", is_flag=True, help="Only say what would be merged and deleted.")
@lock_timeout_option
@password_options
@json_option
def command(repo_path: str, keep_last: int, keep_daily: int, keep_weekly: int, dry_run: bool,
            lock_timeout: float, as_json: bool) -> None:
    """Delete backups the policy does not keep, unless a kept backup's chain needs them;
    merge chains into synthetic fulls where that frees space. Safe to kill and re-run."""
    from lamina.repository import KeepPolicy

    policy = KeepPolicy(last=keep_last, daily=keep_daily, weekly=keep_weekly)
    repo = open_repository(repo_path, lock_timeout)
    with cancellation() as cancel:  # a signal cancels cleanly, also while waiting
        result = repo.prune(policy, dry_run=dry_run, cancel=cancel)
    note_rebuilt(repo, result.index_rebuilt)
    report = result.to_json()
    if as_json:
        emit_json(report)
        return
    verb = "would" if dry_run else "did"
    click.echo(f"policy {report['policy']}: {len(report['keep'])} kept, "
               f"{len(report['also_needed'])} kept for their chains, "
               f"{len(report['merge'])} merge(s), {len(report['delete'])} deletion(s) "
               f"({verb} free {human_bytes(report['bytes_freed'])})")
    for m in report["merge"]:
        click.echo(f"  merge {m['backup_id']} ({len(m['chain'])} images -> synthetic full)")
    for d in report["delete"]:
        click.echo(f"  delete {d['backup_id']} ({d['kind']}, seq {d['vp_seq']})")
    for b in report["broken"]:
        click.echo(f"  kept with a broken chain: {b}")
    stale = report["stale_uploads_removed"]
    if stale:
        click.echo(f"stale uploads removed: {len(stale)}")
        for u in stale:
            click.echo(f"  removed {u['kind']} {u['name']}: {u['reason']}")
    for r in report["refused"]:  # damage keeps what the policy alone would delete
        click.echo(f"  refused: delete {r['backup_id']} ({r['kind']}, seq {r['vp_seq']}): "
                   f"{r['reason']}")
