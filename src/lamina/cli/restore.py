"""``lamina restore IMAGE|- --to DEST`` or ``lamina restore FULL LAYER... --to DEST``: restore
an image, or a chain in one pass, into a new, verified database directory."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import (
    cancellation,
    emit_json,
    iso_time,
    json_option,
    only_with_repo,
    progress_bar,
    progress_option,
    split_tables,
)
from lamina.cli.passphrase import password_options, standalone_keyring
from lamina.cli.repo import RESTORE_PHASES, lock_timeout_option, proven_note


@click.command("restore")
@click.argument("images", nargs=-1)
@click.option("--to", "dest", required=True, type=click.Path(), help="New database directory.")
@click.option("--tables", default=None, help="Comma-separated tables to restore (default: all).")
@click.option("--force", is_flag=True,
              help="Replace DEST if it is a Lamina database no process has open (or an empty "
                   "directory).")
@click.option("--repo", "repo_path", default=None, type=click.Path(),
              help="Restore a backup of this repository (IMAGE omitted or 'latest').")
@click.option("--id", "backup_id", default=None, help="With --repo: the backup to restore.")
@click.option("--at", default=None,
              help="With --repo: the newest point with VP time <= AT (ISO 8601, UTC if no "
                   "zone; epoch seconds; now; relative: -5m, '5m ago').")
@click.option("--database", default=None,
              help="With --repo: the database (id or prefix) when it holds several.")
@click.option("--page-size", type=click.IntRange(min=1), default=None,
              help="Restore a logical (snapshot/default driver) image into this btree page "
                   "size; tables are rebuilt compact.")
@click.option("--check", "run_check", is_flag=True,
              help="Also run the whole checker (key order, counts, free list) before "
                   "publishing; the root hash is always proven.")
@lock_timeout_option
@password_options
@progress_option
@json_option
def command(images: tuple[str, ...], dest: str, tables: str | None, force: bool,
            repo_path: str | None, backup_id: str | None, at: str | None,
            database: str | None, page_size: int | None, run_check: bool,
            lock_timeout: float, show_progress: bool | None, as_json: bool) -> None:
    """Restore IMAGE (a file, or - for stdin) into DEST; published only once proven.
    Several images -- a full image, then its layers in chain order -- are restored as one
    chain in one pass, to the last one's validity point. With --repo, restore a backup's
    whole chain (the latest, --id or --at). Ctrl-C or SIGTERM cancels cleanly (exit 10)."""
    from lamina.engines.btree import format as btree_format
    from lamina.errors import UsageError

    only_with_repo(repo_path, id=backup_id, at=at, database=database)
    if page_size is not None and not btree_format.valid_page_size(page_size):
        raise UsageError(f"--page-size {page_size} is not a power of two in 1024..65536")
    at_ns = None
    if at is not None:
        import time

        from lamina.repository.timespec import parse_at
        at_ns = parse_at(at, time.time_ns())  # UsageError before the repository is opened
    table_list = split_tables(tables)
    image = images[0] if images else None
    if repo_path is not None or image is None:
        if len(images) > 1:
            raise UsageError("with --repo, name at most one backup")
        if page_size is not None:
            raise UsageError("--page-size cannot be used with --repo")
        from lamina.cli.repo import restore_from_repo
        if at_ns is not None:  # the newest point at or before it, to the nanosecond
            from lamina.cli.repo import open_repository
            from lamina.repository.points import point_at
            if repo_path is None:
                raise UsageError("--at needs --repo")
            if backup_id is not None:
                raise UsageError("give a backup id or a time, not both")
            backup_id = str(point_at(open_repository(repo_path, lock_timeout), at_ns,
                                     database).backup_id)
            at = None
        restore_from_repo(image, repo_path, dest, backup_id=backup_id, at=at,
                          database=database, tables=table_list, force=force,
                          lock_timeout=lock_timeout, show_progress=show_progress,
                          as_json=as_json, check=run_check)
        return
    from lamina.core.crypto import keyring as keyrings

    with keyrings.using(standalone_keyring([i for i in images if i != "-"])):
        _restore_images(images, dest, table_list, force, page_size, show_progress, as_json,
                        run_check)


def _restore_images(images: tuple[str, ...], dest: str, table_list: list[str] | None,
                    force: bool, page_size: int | None, show_progress: bool | None,
                    as_json: bool, run_check: bool) -> None:
    """Restore image files (or stdin): one image, or a chain."""
    from lamina import online
    from lamina.errors import UsageError

    image = images[0]
    if "-" in images and len(images) > 1:
        raise UsageError("'-' (an image from stdin) must be the only IMAGE")
    if image == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read a backup image from a terminal; redirect stdin "
                         "(< FILE, COMMAND |) or name an IMAGE file")

    if _is_chain(images):
        if page_size is not None:
            raise UsageError("--page-size applies to logical images, not to chains")
        with cancellation() as cancel, \
                progress_bar("restore", show_progress, cancel=cancel,
                             phases=RESTORE_PHASES) as progress:
            summary = online.restore_chain(list(images), dest, tables=table_list,
                                           force=force, progress=progress, cancel=cancel,
                                           check=run_check)
    else:
        source = sys.stdin.buffer if image == "-" else image
        with cancellation() as cancel, \
                progress_bar("restore", show_progress, cancel=cancel,
                             phases=RESTORE_PHASES) as progress:
            summary = online.restore(source, dest, tables=table_list, force=force,
                                     progress=progress, cancel=cancel, page_size=page_size,
                                     check=run_check)
    for cleaned in summary.cleaned:  # what killed restores to DEST left behind
        click.echo(f"lamina: {cleaned}", err=True)
    if as_json:
        emit_json(summary.to_json())
        return
    info = summary.to_json()
    what = f"chain of {len(images)} images" if len(images) > 1 else "image"
    click.echo(f"restored {what} {info['image_id']} into {dest}: state at commit seq "
               f"{info['vp_commit_seq']} ({iso_time(info['vp_time_ns'])}), "
               f"{len(info['tables'])} table(s), {info['seconds']:.2f} s; "
               f"{proven_note(run_check or len(images) > 1)}")


def _is_chain(images: tuple[str, ...]) -> bool:
    """Several images, or one layer (refused by the chain code with a clear ChainError)."""
    if len(images) != 1:
        return True
    if images[0] == "-":
        return False
    from lamina.backup.image_format import ImageKind
    from lamina.backup.image_reader import read_info

    return read_info(images[0]).manifest.kind == ImageKind.LAYER
