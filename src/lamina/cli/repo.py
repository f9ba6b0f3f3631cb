"""``lamina repo init REPO``, and what every ``--repo`` command shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from lamina.cli.common import (
    TIMEOUT,
    cancellation,
    cancellation_if,
    emit_json,
    human_bytes,
    human_ms,
    iso_time,
    json_option,
    open_database,
    progress_bar,
)
from lamina.cli.passphrase import HINT, current_source, new_passphrase, password_options
from lamina.errors import UsageError

if TYPE_CHECKING:
    from lamina.repository import Repository

DEFAULT_LOCK_TIMEOUT = 60.0
#: What a restore's progress bar says while it reads, then while it proves the result.
RESTORE_PHASES = ("copying", "proving the root hash, checking")
#: The same for a verification.
VERIFY_PHASES = ("reading", "checking")

_S3_ENDPOINT = "lamina.s3_endpoint"


def _remember_endpoint(ctx: click.Context, _param: click.Parameter,
                       value: str | None) -> str | None:
    if value is not None:
        ctx.meta[_S3_ENDPOINT] = value
    return value


#: ``--s3-endpoint URL``: the object store of an ``s3://`` repository, overriding
#: ``AWS_ENDPOINT_URL`` (read by :func:`open_repository`, not passed to the command).
s3_endpoint_option = click.option(
    "--s3-endpoint", default=None, metavar="URL", expose_value=False,
    callback=_remember_endpoint,
    help="Object store endpoint for an s3:// repository (overrides AWS_ENDPOINT_URL).")

_lock_timeout = click.option(
    "--lock-timeout", type=TIMEOUT, default=DEFAULT_LOCK_TIMEOUT, show_default=True,
    help="Seconds to wait for the repository lock (then exit 8).")


def lock_timeout_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--lock-timeout`` and ``--s3-endpoint``: what every ``--repo`` command takes."""
    return _lock_timeout(s3_endpoint_option(f))


def s3_endpoint() -> str | None:
    """The ``--s3-endpoint`` given to the running command, if any."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.find_root().meta.get(_S3_ENDPOINT)


def open_repository(path: str, lock_timeout: float) -> Repository:
    """Open the repository at ``path``, a directory or ``s3://BUCKET/PREFIX`` (errors
    become one line and an exit code); an encrypted one with the command's passphrase
    (:mod:`lamina.cli.passphrase`)."""
    from lamina.repository import Repository

    return Repository.open(path, lock_timeout=lock_timeout, s3_endpoint=s3_endpoint(),
                           passphrase=current_source(), hint=HINT)


def note_rebuilt(repo: Repository, reason: str | None) -> None:
    """Say on stderr, in one line, that the index was rebuilt from the images (and why)."""
    if reason:
        click.echo(f"lamina: note: index of repository {repo.url} rebuilt: {reason}", err=True)


@click.group("repo")
def command() -> None:
    """Manage backup repositories."""


@command.command("init")
@click.argument("repo", type=click.Path())
@s3_endpoint_option
@click.option("--chain-limit", type=click.IntRange(min=0), default=None,
              help="Most layers on one full image before a backup is a full again "
                   "[default: 7].")
@click.option("--encrypt", is_flag=True,
              help="Encrypt and authenticate every backup (AES-256-GCM) under a random "
                   "master key, kept in a key file under a passphrase.")
@password_options
@json_option
def init(repo: str, chain_limit: int | None, encrypt: bool, as_json: bool) -> None:
    """Create a repository in REPO: a new or empty directory, or s3://BUCKET/PREFIX (the
    bucket is created if missing; endpoint and credentials from the AWS settings)."""
    from lamina.repository import Repository
    from lamina.repository.layout import DEFAULT_CHAIN_LIMIT

    passphrase = new_passphrase("repo init --encrypt") if encrypt else None
    created = Repository.init(repo, chain_limit=DEFAULT_CHAIN_LIMIT if chain_limit is None
                              else chain_limit, s3_endpoint=s3_endpoint(),
                              passphrase=passphrase)
    key = created.keyfile
    if as_json:
        emit_json({"path": created.url,
                   "repository_id": str(created.config.repository_id),
                   "chain_limit": created.config.chain_limit, "encrypted": encrypt,
                   "key": None if key is None else key.id})
        return
    click.echo(f"repository {created.config.repository_id} created in {created.url} "
               f"(chain limit {created.config.chain_limit} layers"
               f"{'' if key is None else f', encrypted, key {key.id[:8]}'})")


def _check_target(image: str | None, repo_path: str | None, what: str) -> str:
    if repo_path is None:
        raise UsageError(f"missing {what} (or --repo REPO)")
    if image is not None and image != "latest":
        raise UsageError(f"give {what} or --repo, not both")
    return repo_path


def backup_to_repo(db: str, image: str | None, repo_path: str | None, *, full: bool,
                   tables: str | None, codec: str, lock_timeout: float,
                   show_progress: bool | None, as_json: bool, resume: bool = False,
                   abandon: bool = False, resume_lease: float | None = None,
                   vp: str = "begin") -> None:
    """``lamina backup DB --repo REPO [--full | --resume | --abandon] [--vp end]``: prints
    the new backup's id (``--abandon``: the interrupted backup given up)."""
    from lamina.core.pins import DEFAULT_LEASE_NS

    repo_path = _check_target(image, repo_path, "IMAGE")
    if tables is not None:
        raise UsageError("--tables cannot be used with --repo (a repository keeps whole "
                         "databases, so layers and chains stay complete)")
    if resume and abandon:
        raise UsageError("give --resume or --abandon, not both")
    if (resume or abandon) and full:
        raise UsageError("--full cannot be used with --resume or --abandon (the interrupted "
                         "backup's kind is kept)")
    if abandon and resume_lease is not None:
        raise UsageError("--resume-lease cannot be used with --abandon")
    from lamina.repository.repository import MAX_RESUME_LEASE_S
    if resume_lease is not None and not 0 < resume_lease <= MAX_RESUME_LEASE_S:
        raise UsageError("--resume-lease must be a positive duration of at most 366 days")
    repo = open_repository(repo_path, lock_timeout)
    if abandon:
        with open_database(db) as database:
            pin = repo.abandon(database)
        if as_json:
            emit_json({"abandoned": None if pin is None else pin.describe()})
        elif pin is None:
            click.echo(f"no interrupted backup of {db} into {repo.url} to abandon")
        else:
            click.echo(f"abandoned backup {pin.pin_id} (validity point: commit seq "
                       f"{pin.vp_seq} at {iso_time(pin.vp_wall_ns)}); its pin is released")
        return
    lease = DEFAULT_LEASE_NS / 1e9 if resume_lease is None else resume_lease
    with cancellation() as cancel, open_database(db) as database, \
            progress_bar("backup", show_progress, cancel=cancel) as progress:
        result = repo.backup(database, full=full, codec=codec, progress=progress,
                             cancel=cancel, resume=resume, resume_lease=lease, vp=vp)
    note_rebuilt(repo, result.index_rebuilt)
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(str(result.backup_id))
    resumed = ""
    if result.resumed:
        resumed = (f"; resumed: {result.parts.get('parts_skipped', 0)} part(s) already "
                   f"stored, {result.parts.get('parts_stored', 0)} stored now")
    click.echo(f"{result.kind} backup ({result.reason}): commit seq "
               f"{result.result.vp.commit_seq}, {human_bytes(result.result.size)}, VP age at "
               f"completion {human_ms(result.result.vp_age_ns)} (--vp {vp}){resumed}",
               err=True)


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
                sealed = ", encrypted, authenticated" if entry["details"].get(
                    "authenticated") else ""
                click.echo(f"ok: backup {entry['backup_id']} ({entry['images']} image(s)"
                           f"{', deep' if deep else ''}{sealed})")
            else:
                click.echo(f"FAILED: backup {entry['backup_id']}: {entry['error']}")
        if not report.results:
            click.echo("no backups to verify")
    if report.first_error is not None:
        raise report.first_error
