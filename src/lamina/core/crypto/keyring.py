"""The keys a process may use for images: master keys by id, a passphrase source that
unlocks keys wrapped inside standalone images, and (for writers) the key new images are
sealed with.

Why a context variable: whether to encrypt, and with which key, is decided at the top (the
CLI, a repository) and used at the bottom (the image reader and writer), through layers (the
backup kernel, drivers, the chain code) that should neither carry nor see secrets. The
reader and writer look the keyring up *once*, when they are constructed
(:func:`current`), so work they hand to other threads needs no context. ``using`` sets it
for the current thread or task only.

A :class:`Keyring` may be shared by threads (its cache is locked).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from lamina.core.crypto.keyfile import KeyFile
from lamina.core.crypto.masterkey import MasterKey
from lamina.errors import AuthenticationError

#: Returns the passphrase, or None when none can be had (no variable, file or terminal).
PassphraseSource = Callable[[], bytes | None]


@dataclass(frozen=True, slots=True)
class SealSpec:
    """How new images are sealed: under ``master``, carrying ``wrapped`` (a key file's
    bytes: a standalone image's own wrapped key; empty for a repository's images, whose
    key files live in the repository)."""

    master: MasterKey
    wrapped: bytes = b""


#: Finds the master key of an id that no image carries (a repository image's key lives in
#: its repository's key files): the key, or None. May raise AuthenticationError.
KeyLocator = Callable[[bytes], MasterKey | None]


class Keyring:
    """Master keys by id, an optional passphrase source, an optional :class:`SealSpec`, and
    ``required``: when set (a label such as ``"repository R is encrypted"``), plaintext
    images are refused. ``hint`` says how a user gives a passphrase (used in errors).
    ``locate`` is asked for a key that is not known and that an image does not carry
    (a repository image read as a file: the CLI looks in the repository around it)."""

    def __init__(self, masters: Iterable[MasterKey] = (), *,
                 passphrase: PassphraseSource | None = None, seal: SealSpec | None = None,
                 required: str | None = None,
                 hint: str = "give its passphrase",
                 locate: KeyLocator | None = None) -> None:
        self._masters = {m.key_id: m for m in masters}
        self._passphrase = passphrase
        self._locate = locate
        self._lock = threading.Lock()
        self.seal = seal
        self.required = required
        self.hint = hint
        if seal is not None:
            self._masters[seal.master.key_id] = seal.master

    def add(self, master: MasterKey) -> None:
        """Make ``master`` usable."""
        with self._lock:
            self._masters[master.key_id] = master

    def master_for(self, key_id: bytes, wrapped: bytes, where: object) -> MasterKey | None:
        """The master key named ``key_id``: known already, found by ``locate`` (when
        ``wrapped`` is empty), or unwrapped from ``wrapped`` (a key file's bytes) with the
        passphrase. None when it cannot be had (no such key
        and nothing to unwrap, or no passphrase available). Raises AuthenticationError (a
        wrong passphrase, or a key file that wraps another key), CorruptionError &co. (a
        damaged key file)."""
        with self._lock:
            known = self._masters.get(key_id)
            if known is None and not wrapped and self._locate is not None:
                known = self._locate(key_id)  # a key kept elsewhere (a repository's)
                if known is not None:
                    self._masters[key_id] = known
            if known is not None or not wrapped or self._passphrase is None:
                return known
            keyfile = KeyFile.decode(wrapped, where)
            if keyfile.master_id != key_id:
                raise AuthenticationError(f"authentication failed: {where} names key "
                                          f"{key_id.hex()[:8]}, but carries another key")
            passphrase = self._passphrase()
            if passphrase is None:
                return None
            master = keyfile.unwrap(passphrase, where)
            self._masters[key_id] = master
            return master


_CURRENT: ContextVar[Keyring | None] = ContextVar("lamina_keyring", default=None)


def current() -> Keyring | None:
    """The keyring set by the innermost :func:`using` of this thread or task, or None."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(keyring: Keyring | None) -> Iterator[Keyring | None]:
    """Make ``keyring`` current inside the ``with`` block (None: no keys)."""
    token = _CURRENT.set(keyring)
    try:
        yield keyring
    finally:
        _CURRENT.reset(token)
