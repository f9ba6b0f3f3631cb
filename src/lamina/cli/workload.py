"""``lamina workload DB ...`` runs the verifiable workload; ``lamina workload verify`` proves a
database holds exactly its state after a commit seq."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import click

from lamina import workload
from lamina.cli.common import (
    POSITIVE,
    Number,
    cancellation,
    emit_json,
    json_option,
    open_database,
)
from lamina.errors import CancelledError, UsageError


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


def _first_step(path: Path, seed: int) -> int:
    """The step a run logging to ``path`` starts at (checked before any work).

    A new log, or one with no commit yet, starts at step 0 (and is rewritten). An existing
    log is continued: the run goes on from the step after its last one, so the log keeps
    describing every commit the workload made (``workload verify`` replays it). A log of
    another seed, or whose last line is torn, is refused (UsageError) rather than mixed
    up; so is a log of another database (checked once DB is open)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    if not path.read_text().endswith("\n"):
        raise UsageError(f"{path} ends with a torn line; give a new --log file")
    log = workload.WorkloadLog.read(path)
    if log.seed != seed:
        raise UsageError(f"{path} is the log of a workload with --seed {log.seed}, not {seed}")
    return max((number for number, _seq in log.commits), default=-1) + 1


def _log_db_id(path: Path) -> str | None:
    try:
        with open(path) as f:
            header = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return None
    value = header.get("db_id") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


@command.command("run")
@click.argument("db", type=click.Path())
@click.option("--seconds", type=Number(min=0), default=None, help="Run this long.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Run this many commits.")
@click.option("--rate", type=POSITIVE, default=None,
              help="At most this many commits per second.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Append every commit's step and seq here (needed to verify); an existing "
                   "log of this database and seed is continued where it ended.")
@json_option
def run_command(db: str, seconds: float | None, steps: int | None, rate: float | None, seed: int,
                log_path: str | None, as_json: bool) -> None:
    """Run the workload against DB (created if missing). Ctrl-C or SIGTERM stops it after
    the commit under way (exit 10); every commit made until then is in the log."""
    if seconds is None and steps is None:
        raise UsageError("workload needs --seconds or --steps")
    path = None if log_path is None else Path(log_path)
    first_step = 0 if path is None else _first_step(path, seed)
    if first_step and not Path(db).exists():
        raise UsageError(f"{path} is the log of another database ({db} does not exist)")
    with open_database(db, create=True) as database:
        log: IO[str] | None = None
        if path is not None:
            logged = _log_db_id(path) if first_step else None
            if logged is not None and logged != str(database.identity.db_id):
                raise UsageError(f"{path} is the log of another database ({logged})")
            log = open(path, "a" if first_step else "w")  # noqa: SIM115 - closed below
        try:
            with cancellation() as cancel:
                def stop_if_cancelled(step: int, seq: int) -> None:
                    # Between two commits, each logged: the log describes the database.
                    if cancel.is_set():
                        raise CancelledError(f"workload cancelled after commit seq {seq}")

                done = workload.run(database, seed=seed, seconds=seconds, steps=steps,
                                    rate=rate, log=log, first_step=first_step,
                                    on_commit=stop_if_cancelled)
            seq = database.stat()["commit_seq"]
        finally:
            if log is not None:
                log.close()
    if as_json:
        emit_json({"commits": done, "first_step": first_step, "last_commit_seq": seq,
                   "seed": seed})
    else:
        click.echo(f"{done} commits, last commit seq {seq}")


@command.command("verify")
@click.argument("db", type=click.Path())
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--at", "at_seq", type=click.IntRange(min=0), default=None,
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
