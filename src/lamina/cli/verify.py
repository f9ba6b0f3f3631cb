"""``lamina verify IMAGE... [--deep]``: prove an image, or a chain, sound without restoring
it."""

from __future__ import annotations

import sys

import click

from lamina.cli.common import (
    cancellation,
    emit_json,
    json_option,
    only_with_repo,
    progress_bar,
    progress_option,
)
from lamina.cli.passphrase import password_options, standalone_keyring, unauthenticated_hint
from lamina.cli.repo import VERIFY_PHASES, lock_timeout_option


@click.command("verify")
@click.argument("images", nargs=-1)
@click.option("--deep", is_flag=True,
              help="Also rebuild the Merkle root from the btree pages and decode every "
                   "archive block (no database is written; a chain is assembled in a "
                   "temporary directory).")
@click.option("--repo", "repo_path", default=None, type=click.Path(),
              help="Verify this repository's chains (every backup, or --id) instead of IMAGE.")
@click.option("--id", "backup_id", default=None, help="With --repo: the backup to verify.")
@lock_timeout_option
@password_options
@progress_option
@json_option
def command(images: tuple[str, ...], deep: bool, repo_path: str | None, backup_id: str | None,
            lock_timeout: float, show_progress: bool | None, as_json: bool) -> None:
    """Check every chunk checksum, stream hash, the manifest and footer (exit 4 if bad).
    Several images (a full image, then its layers in order) are verified as a chain: its
    links (exit 11 if broken), every image, and with --deep the Merkle root at the last
    layer's validity point. With --repo, verify each backup's whole chain (exit with the
    first failure's code). Ctrl-C or SIGTERM cancels (exit 10)."""
    from lamina.errors import UsageError

    only_with_repo(repo_path, id=backup_id)
    image = images[0] if images else None
    if repo_path is not None or image is None:
        if len(images) > 1:
            raise UsageError("with --repo, name at most one backup")
        from lamina.cli.repo import verify_repo
        verify_repo(image, repo_path, backup_id=backup_id, deep=deep,
                    lock_timeout=lock_timeout, show_progress=show_progress, as_json=as_json)
        return
    from lamina.core.crypto import keyring as keyrings

    with keyrings.using(standalone_keyring([i for i in images if i != "-"])):
        _verify_images(images, deep, show_progress, as_json)


def _auth_note(report: dict[str, object]) -> str:
    """What the verification proved of an encrypted image."""
    if not report.get("encrypted"):
        return ""
    if report.get("authenticated"):
        return "; encrypted, authenticated with its key"
    return ("; encrypted: checksums only, NOT authenticated (no key: "
            f"{unauthenticated_hint()})")


def _verify_images(images: tuple[str, ...], deep: bool, show_progress: bool | None,
                   as_json: bool) -> None:
    """Verify image files (or stdin): one image, or a chain."""
    from lamina import online
    from lamina.errors import UsageError

    image = images[0]
    if "-" in images and len(images) > 1:
        raise UsageError("'-' (an image from stdin) must be the only IMAGE")
    if image == "-" and sys.stdin.isatty():
        raise UsageError("refusing to read a backup image from a terminal; redirect stdin "
                         "(< FILE, COMMAND |) or name an IMAGE file")

    # The glue checks the signal-driven token before every chunk (like backup and
    # restore): a signal cancels cleanly at the next one (CancelledError, exit 10).
    if len(images) > 1 or (deep and image != "-" and _is_layer(image)):
        with cancellation() as cancel, \
                progress_bar("verify", show_progress, cancel=cancel,
                             phases=VERIFY_PHASES) as progress:
            report = online.verify_chain(list(images), deep=deep, progress=progress,
                                         cancel=cancel)
        if as_json:
            emit_json(report)
            return
        deep_note = f", deep: Merkle root {report['root_hash']}" if deep else ""
        click.echo(f"ok: chain of {len(report['images'])} images verified up to image "
                   f"{report['image_id']} (commit seq {report['vp']['commit_seq']}, "
                   f"{report['chunks']} chunks{deep_note}){_auth_note(report)}")
        return
    source = sys.stdin.buffer if image == "-" else image
    if deep:
        with cancellation() as cancel, \
                progress_bar("verify", show_progress, cancel=cancel,
                             phases=VERIFY_PHASES) as progress:
            report = online.verify(source, deep=True, progress=progress, cancel=cancel)
    else:
        with cancellation() as cancel:
            report = online.verify(source, deep=False, cancel=cancel)
    if as_json:
        emit_json(report)
        return
    click.echo(f"ok: image {report['image_id']} verified ({report['chunks']} chunks, "
               f"{report['streams']} streams{', deep' if deep else ''}){_auth_note(report)}")


def _is_layer(image: str) -> bool:
    """A deep verification of a single layer needs its chain (the chain code says so)."""
    from lamina.backup.image_format import ImageKind
    from lamina.backup.image_reader import read_info

    return read_info(image).manifest.kind == ImageKind.LAYER
