"""``lamina key list|add|remove|passwd --repo REPO``: the passphrases of an encrypted
repository (one master key, one key file per passphrase; nothing here touches a backup)."""

from __future__ import annotations

import click

from lamina.cli.common import emit_json, iso_time, json_option
from lamina.cli.passphrase import NEW_ENV, new_passphrase, new_password_options, password_options
from lamina.cli.repo import lock_timeout_option, open_repository

repo_option = click.option("--repo", "repo_path", required=True, type=click.Path(),
                           help="The encrypted repository.")


@click.group("key")
def command() -> None:
    """Manage the passphrases (key files) of an encrypted repository."""


@command.command("list")
@repo_option
@lock_timeout_option
@password_options
@json_option
def list_keys(repo_path: str, lock_timeout: float, as_json: bool) -> None:
    """List the key files (id, creation time, host, user, KDF); * marks the one that
    opened the repository."""
    repo = open_repository(repo_path, lock_timeout)
    files = repo.keys.list()
    current = repo.keyfile.id if repo.keyfile is not None else None
    if as_json:
        emit_json({"keys": [{**k.to_json(), "current": k.id == current} for k in files]})
        return
    for k in files:
        kdf = k.kdf.to_json()
        params = ", ".join(f"{name} {value}" for name, value in kdf.items()
                           if name not in ("algorithm", "salt"))
        click.echo(f"{'*' if k.id == current else ' '} {k.id[:8]}  {iso_time(k.created_ns)}  "
                   f"{k.username or '-'}@{k.hostname or '-'}  {kdf['algorithm']} ({params})")


@command.command("add")
@repo_option
@lock_timeout_option
@password_options
@new_password_options
@json_option
def add(repo_path: str, lock_timeout: float, new_password_file: str | None,
        new_password_command: str | None, as_json: bool) -> None:
    """Add a passphrase: a new key file for the same master key (opened with a current
    passphrase; the new one from --new-password-file/--new-password-command,
    LAMINA_NEW_PASSWORD or a prompt)."""
    repo = open_repository(repo_path, lock_timeout)
    secret = new_passphrase("key add", new_password_file, new_password_command, env=NEW_ENV)
    assert repo.master is not None  # repo.keys raises for a plaintext repository
    keys = repo.keys
    with repo.exclusive("key add"):
        added = keys.add(repo.master, secret)
    if as_json:
        emit_json({"added": added.id})
        return
    click.echo(f"key {added.id[:8]} added to {repo.url}")


@command.command("remove")
@click.argument("key_id")
@repo_option
@lock_timeout_option
@password_options
@json_option
def remove(key_id: str, repo_path: str, lock_timeout: float, as_json: bool) -> None:
    """Remove the key file KEY_ID (an id or a unique prefix); never the last one."""
    repo = open_repository(repo_path, lock_timeout)
    keys = repo.keys
    with repo.exclusive("key remove"):
        removed = keys.remove(key_id)
    if as_json:
        emit_json({"removed": removed.id})
        return
    click.echo(f"key {removed.id[:8]} removed from {repo.url}")


@command.command("passwd")
@repo_option
@lock_timeout_option
@password_options
@new_password_options
@json_option
def passwd(repo_path: str, lock_timeout: float, new_password_file: str | None,
           new_password_command: str | None, as_json: bool) -> None:
    """Change the passphrase of the key file that the current passphrase opens: that one
    key file is rewritten (same id, new salt); no backup is touched."""
    repo = open_repository(repo_path, lock_timeout)
    keys = repo.keys
    assert repo.master is not None and repo.keyfile is not None  # encrypted (repo.keys)
    secret = new_passphrase("key passwd", new_password_file, new_password_command,
                            env=NEW_ENV)
    with repo.exclusive("key passwd"):
        changed = keys.passwd(repo.keyfile, repo.master, secret)
    if as_json:
        emit_json({"changed": changed.id})
        return
    click.echo(f"passphrase of key {changed.id[:8]} changed in {repo.url}")
