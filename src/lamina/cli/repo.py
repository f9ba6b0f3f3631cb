"""``lamina repo init REPO``, and what every ``--repo`` command shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from lamina.cli.common import (
    TIMEOUT,
    cancellation,
    cancellation_if,
    emit_json,
    human_bytes,
    json_option,
    open_database,
    progress_bar,
)
from lamina.errors import UsageError

if TYPE_CHECKING:
    from lamina.repository import Repository

DEFAULT_LOCK_TIMEOUT = 60.0
#: What a restore's progress bar says while it reads, then while it proves the result.
RESTORE_PHASES = ("copying", "proving the root hash, checking")
#: The same for a verification.
VERIFY_PHASES = ("reading", "checking")

lock_timeout_option = click.option(
    "--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
    help="Seconds to wait for the repository lock (then exit 8).")


def open_repository(path: str, lock_timeout: float) -> Repository:
    """Open the repository at ``path`` (errors become one line and an exit code)."""
    from lamina.repository import Repository

    return Repository.open(path, lock_timeout=lock_timeout)


def note_rebuilt(repo: Repository, reason: str | None) -> None:
    """Say on stderr, in one line, that the index was rebuilt from the images (and why)."""
    if reason:
        click.echo(f"lamina: note: index of repository {repo.path} rebuilt: {reason}", err=True)


@click.group("repo")
def command() -> None:
    """Manage backup repositories."""


@command.command("init")
@click.argument("repo", type=click.Path())
@click.option("--chain-limit", type=click.IntRange(min=0), default=None,
              help="Most layers on one full image before a backup is a full again "
                   "[default: 7].")
@json_option
def init(repo: str, chain_limit: int | None, as_json: bool) -> None:
    """Create a repository in REPO (a new or empty directory)."""
    from lamina.repository import Repository
    from lamina.repository.layout import DEFAULT_CHAIN_LIMIT

    created = Repository.init(repo, chain_limit=DEFAULT_CHAIN_LIMIT if chain_limit is None
                              else chain_limit)
    if as_json:
        emit_json({"path": str(created.path),
                   "repository_id": str(created.config.repository_id),
                   "chain_limit": created.config.chain_limit})
        return
    click.echo(f"repository {created.config.repository_id} created in {created.path} "
               f"(chain limit {created.config.chain_limit} layers)")


def _check_target(image: str | None, repo_path: str | None, what: str) -> str:
    if repo_path is None:
        raise UsageError(f"missing {what} (or --repo REPO)")
    if image is not None and image != "latest":
        raise UsageError(f"give {what} or --repo, not both")
    return repo_path


def backup_to_repo(db: str, image: str | None, repo_path: str | None, *, full: bool,
                   tables: str | None, codec: str, lock_timeout: float,
                   show_progress: bool | None, as_json: bool) -> None:
    """``lamina backup DB --repo REPO [--full]``: prints the new backup's id."""
    repo_path = _check_target(image, repo_path, "IMAGE")
    if tables is not None:
        raise UsageError("--tables cannot be used with --repo (a repository keeps whole "
                         "databases, so layers and chains stay complete)")
    repo = open_repository(repo_path, lock_timeout)
    with cancellation() as cancel, open_database(db) as database, \
            progress_bar("backup", show_progress, cancel=cancel) as progress:
        result = repo.backup(database, full=full, codec=codec, progress=progress,
                             cancel=cancel)
    note_rebuilt(repo, result.index_rebuilt)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(str(result.backup_id))
    click.echo(f"{result.kind} backup ({result.reason}): commit seq "
               f"{result.result.vp.commit_seq}, {human_bytes(result.result.size)}", err=True)


def restore_from_repo(image: str | None, repo_path: str | None, dest: str, *,
                      backup_id: str | None, at: str | None, database: str | None,
                      tables: list[str] | None, force: bool, lock_timeout: float,
                      show_progress: bool | None, as_json: bool, check: bool = False) -> None:
    """``lamina restore --repo REPO [--id ID | --at TIME | latest] --to DEST [--check]``."""
    repo_path = _check_target(image, repo_path, "IMAGE")
    repo = open_repository(repo_path, lock_timeout)
    with cancellation() as cancel, \
            progress_bar("restore", show_progress, cancel=cancel,
                         phases=RESTORE_PHASES) as progress:
        result = repo.restore(dest, backup_id, at, database=database, tables=tables,
                              force=force, progress=progress, cancel=cancel, check=check)
    note_rebuilt(repo, result.index_rebuilt)
    info = result.to_json()
    if as_json:
        emit_json(info)
        return
    click.echo(f"restored backup {info['backup_id']} ({len(info['chain'])} image(s)) into "
               f"{dest}: state at commit seq {info['vp_commit_seq']}, "
               f"{len(info['tables'])} table(s), {info['seconds']:.2f}s; "
               f"{proven_note(check or len(info['chain']) > 1)}")


def proven_note(checked: bool) -> str:
    """What a restore's closing line says it proved (``checked``: the checker ran too)."""
    return "root hash and checker verified" if checked else "root hash verified"


def verify_repo(image: str | None, repo_path: str | None, *, backup_id: str | None,
                deep: bool, lock_timeout: float, show_progress: bool | None,
                as_json: bool) -> None:
    """``lamina verify --repo REPO [--id ID]``: exits with the first failure's code."""
    repo_path = _check_target(image, repo_path, "IMAGE")
    repo = open_repository(repo_path, lock_timeout)
    # Deep: the token, checked before every chunk, cancels cleanly at the next one. Else
    # a signal interrupts at once (also while waiting for the repository lock, which does
    # not check the token); verifying writes nothing either way.
    with cancellation_if(deep) as cancel, \
            progress_bar("verify", show_progress, cancel=cancel,
                         phases=VERIFY_PHASES) as progress:
        report = repo.verify(backup_id, deep=deep, progress=progress, cancel=cancel)
    note_rebuilt(repo, report.index_rebuilt)
    if as_json:
        emit_json(report.to_json())
    else:
        for entry in report.results:
            if entry["ok"]:
                click.echo(f"ok: backup {entry['backup_id']} ({entry['images']} image(s)"
                           f"{', deep' if deep else ''})")
            else:
                click.echo(f"FAILED: backup {entry['backup_id']}: {entry['error']}")
        if not report.results:
            click.echo("no backups to verify")
    if report.first_error is not None:
        raise report.first_error
