"""``lamina backup DB IMAGE|- [--base BASE] [--vp begin|end]``: a consistent online backup
while writers go on (with ``--base``, an incremental layer on top of an earlier image; with
``--vp end``, at-end drivers: the validity point after the bulk copy)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from lamina.cli.common import (
    DURATION,
    POSITIVE,
    TIMEOUT,
    cancellation,
    check_level,
    emit_json,
    human_bytes,
    human_ms,
    iso_time,
    json_option,
    open_database,
    progress_bar,
    progress_option,
    split_tables,
    stdout_is_terminal,
)
from lamina.cli.passphrase import password_options
from lamina.cli.repo import lock_timeout_option
from lamina.errors import UsageError

if TYPE_CHECKING:
    from lamina.core.crypto.keyring import Keyring

#: The default driver's table-lock timeout (seconds) when --table-lock-timeout is not given.
DEFAULT_TABLE_LOCK_TIMEOUT = 30.0


def check_driver_choice(driver: str | None) -> None:
    """Validate ``--driver`` before any work: driver names, syntax, and no table (or the
    overall choice) given twice. Table names are checked against the catalog later."""
    if driver is None:
        return
    from lamina import online

    online.parse_driver_choice(driver)  # names and syntax (DriverChoiceError: exit 2)
    seen: set[str] = set()
    for part in driver.split(","):
        name, sep, _ = part.partition("=")
        table = name.strip() if sep else "*"
        if table in seen:
            what = "every table" if table == "*" else f"table {table!r}"
            raise UsageError(f"--driver chooses a driver for {what} twice")
        seen.add(table)


def _check_driver_tables(driver: str | None, tables: list[str] | None,
                         names: set[str]) -> None:
    """A table named in ``--driver`` must be in the backup: checked from the catalog before
    the backup starts (so that a typo is not a failed backup in the history)."""
    if driver is None:
        return
    from lamina import online
    from lamina.errors import DriverChoiceError

    _, per_table = online.parse_driver_choice(driver)
    in_backup = names if tables is None else names & set(tables)
    for name in per_table:
        if name not in in_backup:
            raise DriverChoiceError(f"driver chosen for table {name!r}, which is not in "
                                    "this backup")


def _keyring(encrypt: bool) -> Keyring:
    """The keys of a backup to IMAGE: with ``encrypt``, a new master key that the image
    carries wrapped under the passphrase (which also opens an encrypted ``--base``)."""
    from lamina.cli.passphrase import HINT, new_passphrase, standalone_keyring
    from lamina.core.crypto.keyfile import KeyFile
    from lamina.core.crypto.keyring import Keyring, SealSpec
    from lamina.core.crypto.masterkey import MasterKey

    if not encrypt:
        return standalone_keyring()
    secret = new_passphrase("backup --encrypt")
    master = MasterKey.generate()
    return Keyring(passphrase=lambda: secret, hint=HINT,
                   seal=SealSpec(master, KeyFile.create(master, secret).encode()))


@click.command("backup")
@click.argument("db", type=click.Path())
@click.argument("image", required=False)
@click.option("--tables", default=None, help="Comma-separated tables (default: all).")
@click.option("--compress", "codec", type=click.Choice(["zstd", "zlib", "none"]),
              default="zstd", show_default=True)
@click.option("--level", type=int, default=None,
              help="Compression level (zstd -7..22, zlib 0..9; none takes no level).")
@click.option("--repo", "repo_path", default=None, type=click.Path(),
              help="Back up into this repository (a layer when possible) instead of IMAGE.")
@click.option("--full", is_flag=True, help="With --repo: a full image, never a layer.")
@click.option("--resume", is_flag=True,
              help="With --repo: finish the interrupted backup of DB into REPO (same image, "
                   "only the missing parts are stored).")
@click.option("--abandon", is_flag=True,
              help="With --repo: give up the interrupted backup of DB into REPO (release "
                   "its pin, remove its upload).")
@click.option("--resume-lease", type=DURATION, default=None, metavar="DURATION",
              help="With --repo: how long an interrupted backup stays resumable "
                   "(e.g. 30m, 2h) [default: 1h].")
@click.option("--base", "base", default=None, type=click.Path(dir_okay=False),
              help="Write a layer: only what changed after this earlier image of DB (full "
                   "or layer); restore it with its chain.")
@click.option("--driver", default=None,
              help="Force backup drivers: native|snapshot|default for every table, or per "
                   "table as t1=default,t2=snapshot (default: native, else snapshot, else "
                   "default).")
@click.option("--vp", "vp", type=click.Choice(["begin", "end"]), default="begin",
              show_default=True,
              help="Where the validity point lies: begin (at-begin drivers: the VP first, "
                   "then all data) or end (at-end drivers: the bulk first, then the VP; the "
                   "image is DB as of the end of the backup). Native drivers only.")
@click.option("--max-rate", type=POSITIVE, default=None, metavar="MB/S",
              help="Bound the backup's read rate (MB/s, 10^6 bytes per second).")
@click.option("--table-lock-timeout", type=TIMEOUT, default=None,
              help="Seconds the default driver tries to lock its tables (then exit 8) "
                   f"[default: {DEFAULT_TABLE_LOCK_TIMEOUT:g}].")
@click.option("--encrypt", is_flag=True,
              help="Encrypt and authenticate the image (AES-256-GCM) under a new key that "
                   "the image carries, wrapped under a passphrase.")
@lock_timeout_option
@password_options
@progress_option
@json_option
def command(db: str, image: str | None, tables: str | None, codec: str, level: int | None,
            repo_path: str | None, full: bool, resume: bool, abandon: bool,
            resume_lease: float | None, base: str | None, driver: str | None,
            vp: str, max_rate: float | None,
            table_lock_timeout: float | None, encrypt: bool, lock_timeout: float,
            show_progress: bool | None, as_json: bool) -> None:
    """Back up DB into IMAGE (a new file, or - for stdout), or into a repository with
    --repo (prints the backup id). Ctrl-C or SIGTERM cancels cleanly (exit 10)."""
    from lamina import online

    check_level(codec, level)
    check_driver_choice(driver)
    table_list = split_tables(tables)
    if repo_path is not None or image is None:
        for given, option in ((base, "--base"), (driver, "--driver"), (max_rate, "--max-rate"),
                              (level, "--level"), (table_lock_timeout, "--table-lock-timeout")):
            if given is not None:
                raise UsageError(f"{option} cannot be used with --repo (the repository "
                                 "picks the base and takes native backups)")
        if encrypt:
            raise UsageError("--encrypt applies to an IMAGE; a repository is encrypted when "
                             "it is created (lamina repo init --encrypt)")
        from lamina.cli.repo import backup_to_repo
        backup_to_repo(db, image, repo_path, full=full, tables=tables, codec=codec,
                       lock_timeout=lock_timeout, show_progress=show_progress,
                       as_json=as_json, resume=resume, abandon=abandon,
                       resume_lease=resume_lease, vp=vp)
        return
    for given, option in ((resume, "--resume"), (abandon, "--abandon"),
                          (resume_lease is not None, "--resume-lease")):
        if given:
            raise UsageError(f"{option} applies only with --repo")
    if full:
        raise UsageError("--full applies only with --repo (an IMAGE is a full image unless "
                         "--base makes it a layer)")
    if image == "-" and stdout_is_terminal():
        raise UsageError("refusing to write a binary backup image to a terminal; redirect "
                         "stdout (> FILE, | COMMAND) or name an IMAGE file")

    from lamina.core.crypto import keyring as keyrings

    target = sys.stdout.buffer if image == "-" else image
    with keyrings.using(_keyring(encrypt)), cancellation() as cancel, \
            open_database(db) as database, \
            progress_bar("backup", show_progress, cancel=cancel) as progress:
        _check_driver_tables(driver, table_list, {t.name for t in database.tables()})
        result = online.backup(database, target, tables=table_list, codec=codec,
                               level=level, progress=progress, cancel=cancel, driver=driver,
                               max_rate=max_rate,
                               lock_timeout=DEFAULT_TABLE_LOCK_TIMEOUT
                               if table_lock_timeout is None else table_lock_timeout,
                               base=base, vp=vp)
    summary = online.describe(result)
    for cleaned in result.cleaned:  # what killed backups to IMAGE left behind
        click.echo(f"lamina: {cleaned}", err=True)
    out = click.echo if image != "-" else (lambda msg: click.echo(msg, err=True))
    if as_json:
        if image == "-":
            import json

            from lamina.cli.common import json_ready
            click.echo(json.dumps(json_ready(summary), sort_keys=True), err=True)
        else:
            emit_json(summary)
        return
    kind = "layer" if base is not None else "image"
    out(f"{'encrypted ' if encrypt else ''}{kind} {summary['image_id']} -> {image}")
    out(f"validity point: commit seq {summary['vp_commit_seq']} at "
        f"{iso_time(summary['vp_time_ns'])} (--vp {vp}; VP age at completion "
        f"{human_ms(result.vp_age_ns)})")
    out(f"root hash: {summary['root_hash']}")
    out(f"{human_bytes(summary['bytes'])} written ({human_bytes(summary['raw_bytes'])} raw) "
        f"in {summary['seconds']:.2f} s; commit blocker held "
        f"{human_ms(result.blocker_held_ns)}")
    for table, used in sorted(summary["drivers"].items()):
        out(f"  {table}: {used} driver")
