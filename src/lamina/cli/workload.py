"""``lamina workload DB ...`` runs the verifiable workload; ``lamina workload verify`` proves a
database holds exactly its state after a commit seq."""

from __future__ import annotations

from pathlib import Path
from typing import IO

import click

from lamina import workload
from lamina.cli.common import emit_json, json_option, open_database


class _WorkloadGroup(click.Group):
    """``workload DB`` runs; ``workload verify DB`` verifies (a DB named 'verify' needs ./)."""

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


@click.group("workload", cls=_WorkloadGroup)
def command() -> None:
    """Commit a deterministic mix of btree puts/deletes and archive appends, or verify one."""


@command.command("run")
@click.argument("db", type=click.Path())
@click.option("--seconds", type=float, default=None, help="Run this long.")
@click.option("--steps", type=int, default=None, help="Run this many commits.")
@click.option("--rate", type=float, default=None, help="At most this many commits per second.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Append every commit's step and seq here (needed to verify).")
@json_option
def run_command(db: str, seconds: float | None, steps: int | None, rate: float | None, seed: int,
                log_path: str | None, as_json: bool) -> None:
    """Run the workload against DB (created if missing)."""
    log: IO[str] | None = open(log_path, "w") if log_path else None  # noqa: SIM115
    try:
        with open_database(db, create=True) as database:
            done = workload.run(database, seed=seed, seconds=seconds, steps=steps, rate=rate,
                                log=log)
            seq = database.stat()["commit_seq"]
    finally:
        if log is not None:
            log.close()
    if as_json:
        emit_json({"commits": done, "last_commit_seq": seq, "seed": seed})
    else:
        click.echo(f"{done} commits, last commit seq {seq}")


@command.command("verify")
@click.argument("db", type=click.Path())
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--at", "at_seq", type=int, default=None,
              help="Commit seq to verify against (default: the VP the database was restored at).")
@json_option
def verify_command(db: str, log_path: str, at_seq: int | None, as_json: bool) -> None:
    """Prove DB holds exactly the workload state after commit --at (exit 7 if not)."""
    with open_database(db, readonly=True) as database:
        summary = workload.verify(database, Path(log_path), at_seq)
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"ok: state after seq {summary['at_seq']} "
                   f"({summary['commits_applied']} workload commits) matches")
