"""Where passphrases come from: ``--password-file F``, ``--password-command CMD``, the
``LAMINA_PASSWORD`` environment variable, or a prompt when stdin is a terminal, in that
order; never from an option's value (it would be in the shell history and ``ps``).

Commands that may meet an encrypted image or repository take :func:`password_options`; the
lower layers ask for a passphrase only when they need one (:func:`current_source`, lazy
and asked at most once per command). New passphrases (``repo init --encrypt``, ``backup
--encrypt``, ``key add``, ``key passwd``) come from :func:`new_passphrase`: the same sources
(``--new-password-file``/``--new-password-command``/``LAMINA_NEW_PASSWORD`` for the *new*
one of ``key add|passwd``), or a prompt asked twice.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from lamina.core.crypto.keyring import KeyLocator, Keyring, PassphraseSource
from lamina.core.crypto.masterkey import MasterKey
from lamina.errors import UsageError

ENV = "LAMINA_PASSWORD"
NEW_ENV = "LAMINA_NEW_PASSWORD"
#: How a user gives a passphrase (in errors).
HINT = f"set {ENV}, or use --password-file or --password-command"
#: Longest passphrase read from a file or a command.
MAX_PASSPHRASE = 4096
_META = "lamina.passphrase"
_COMMAND_TIMEOUT = 60.0

F = TypeVar("F", bound=Callable[..., Any])


def _read_file(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSPHRASE + 1)
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    return _clean(data, f"{option} {path}")


def _run(command: str, option: str) -> bytes:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if not argv:
        raise UsageError(f"{option} is empty")
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              timeout=_COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{option} {argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        raise UsageError(f"{option} {argv[0]} failed with exit {done.returncode}")
    return _clean(done.stdout, f"{option} {argv[0]}")


def _clean(data: bytes, what: str) -> bytes:
    """One trailing newline is not part of the passphrase (``echo pw > file``)."""
    if len(data) > MAX_PASSPHRASE:
        raise UsageError(f"the passphrase from {what} is longer than {MAX_PASSPHRASE} bytes")
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    if not data:
        raise UsageError(f"the passphrase from {what} is empty")
    return data


def _given(file: str | None, command: str | None, env: str, file_option: str,
           command_option: str) -> bytes | None:
    """The passphrase from a file, a command or ``env``; None when none is given."""
    if file is not None and command is not None:
        raise UsageError(f"give {file_option} or {command_option}, not both")
    if file is not None:
        return _read_file(file, file_option)
    if command is not None:
        return _run(command, command_option)
    value = os.environ.get(env)
    if value is not None:
        return _clean(os.fsencode(value), env)
    return None


def _prompt(text: str, confirm: bool) -> bytes | None:
    if not sys.stdin.isatty():
        return None
    value = click.prompt(text, hide_input=True, confirmation_prompt=confirm, err=True,
                         default="", show_default=False)
    return _clean(str(value).encode("utf-8"), "the prompt")


def password_options(f: F) -> F:
    """Add ``--password-file`` and ``--password-command`` to a command; what they say is
    kept for :func:`current_source` (the command function does not receive them)."""
    @functools.wraps(f)
    def wrapper(*args: Any, password_file: str | None = None,
                password_command: str | None = None, **kwargs: Any) -> Any:
        click.get_current_context().meta[_META] = (password_file, password_command)
        return f(*args, **kwargs)

    wrapped = click.option(
        "--password-command", "password_command", default=None, metavar="CMD",
        help=f"Run CMD (no shell) and use its output as the passphrase (else {ENV}, "
             "else a prompt on a terminal).")(wrapper)
    wrapped = click.option(
        "--password-file", "password_file", default=None, type=click.Path(dir_okay=False),
        help="Read the passphrase from this file (one trailing newline ignored).")(wrapped)
    return cast(F, wrapped)


def new_password_options(f: F) -> F:
    """Add ``--new-password-file`` and ``--new-password-command`` (``key add|passwd``)."""
    f = click.option("--new-password-command", "new_password_command", default=None,
                     metavar="CMD", help=f"The new passphrase: CMD's output (else "
                                         f"{NEW_ENV}, else a prompt).")(f)
    return click.option("--new-password-file", "new_password_file", default=None,
                        type=click.Path(dir_okay=False),
                        help="The new passphrase: this file's content.")(f)


def _options() -> tuple[str | None, str | None]:
    ctx = click.get_current_context(silent=True)
    found = None if ctx is None else ctx.meta.get(_META)  # meta is shared by nested contexts
    return found if found is not None else (None, None)


def current_source() -> PassphraseSource:
    """The running command's passphrase source: lazy (nothing is read or prompted until
    called), asked at most once; returns None when no source gives one. Raises UsageError
    (a bad file or command)."""
    file, command = _options()
    cache: list[bytes | None] = []

    def source() -> bytes | None:
        if not cache:
            given = _given(file, command, ENV, "--password-file", "--password-command")
            cache.append(given if given is not None else _prompt("passphrase", False))
        return cache[0]

    return source


def standalone_keyring(images: Sequence[str] = ()) -> Keyring:
    """The keyring of a command on image files: it unlocks an encrypted image's own key
    with the command's passphrase, asked only when such an image is met; an image of a
    local encrypted repository (``R/images/ID.lamina``) is opened with that repository's
    key, unlocked with the same passphrase (:func:`_repository_locator`)."""
    source = current_source()
    return Keyring(passphrase=source, hint=HINT,
                   locate=_repository_locator(images, source) if images else None)


#: Why an encrypted image was not authenticated although a passphrase was given.
REPOSITORY_IMAGE_HINT = ("it is sealed under a repository's key, and it is not inside that "
                         "repository: verify it there ('lamina verify --repo REPO')")


def unauthenticated_hint() -> str:
    """What to tell a user whose encrypted image could not be authenticated: how to give
    a passphrase, or (one was given) that the image's key is a repository's. Never
    prompts. Raises UsageError (a bad password file or command)."""
    file, command = _options()
    if _given(file, command, ENV, "--password-file", "--password-command") is None:
        return HINT
    return REPOSITORY_IMAGE_HINT


def _repository_locator(images: Sequence[str], source: PassphraseSource) -> KeyLocator:
    """Finds the master key of an image in ``images`` that lies in a local encrypted
    repository's ``images/`` directory: the repository is opened with the passphrase
    (AuthenticationError if it is wrong); None without a passphrase, or when the image is
    in no repository that has that key."""
    def locate(key_id: bytes) -> MasterKey | None:
        from lamina.errors import LaminaError
        from lamina.repository import layout as L
        from lamina.repository.repository import Repository

        for image in images:
            folder = Path(image).resolve().parent
            root = folder.parent
            if folder.name != L.IMAGES_PREFIX.rstrip("/") or not (root / L.CONFIG_KEY).is_file():
                continue
            if source() is None:
                return None
            try:
                repo = Repository.open(root, passphrase=source, hint=HINT)
            except (UsageError, LaminaError) as exc:
                if exc.exit_code == 14:  # a wrong passphrase for this repository: say so
                    raise
                continue
            if repo.master is not None and repo.master.key_id == key_id:
                return repo.master
        return None

    return locate


def new_passphrase(what: str, file: str | None = None, command: str | None = None,
                   *, env: str = ENV) -> bytes:
    """A passphrase to create a key with: ``file``/``command`` (the ``--new-password-*``
    options when given), else the command's ``--password-*`` options (``env`` =
    ``LAMINA_PASSWORD``), else ``env``, else a prompt asked twice. UsageError when none."""
    if file is None and command is None and env == ENV:
        file, command = _options()
    options = ("--password-file", "--password-command") if env == ENV else (
        "--new-password-file", "--new-password-command")
    value = _given(file, command, env, *options)
    if value is None:
        value = _prompt("new passphrase", True)
    if value is None:
        raise UsageError(f"{what} needs a passphrase: set {env}, or use {options[0]} or "
                         f"{options[1]}")
    return value
