"""An encrypted repository's key files (restic-style): one random master key, one key file
per passphrase under ``keys/``, all through the repository's :class:`Storage` (so they live
wherever its images do). Format: :mod:`lamina.core.crypto.keyfile`, docs/format.md.

* :meth:`RepoKeys.unlock` tries every key file with a passphrase (AuthenticationError when
  none opens);
* :meth:`RepoKeys.add` writes a new key file for the same master key;
* :meth:`RepoKeys.passwd` rewrites one key file (same id) under a new passphrase: the data
  is never touched;
* :meth:`RepoKeys.remove` deletes one, never the last.

Concurrency: each key file is published by one atomic put; ``add``/``remove``/``passwd``
are serialized by the caller (the repository's exclusive lock).
"""

from __future__ import annotations

import re

from lamina.core.crypto.keyfile import MAX_KEY_FILE_SIZE, KeyFile
from lamina.core.crypto.masterkey import MasterKey
from lamina.errors import AuthenticationError, NotFoundError, UsageError
from lamina.repository import layout as L
from lamina.repository.storage import Storage

_ID = re.compile(r"[0-9a-f]{32}\Z")


def key_object(key_id: str) -> str:
    """The storage key of key file ``key_id``."""
    return f"{L.KEYS_PREFIX}{key_id}{L.KEY_SUFFIX}"


class RepoKeys:
    """The key files of one repository (see the module doc)."""

    def __init__(self, storage: Storage, key_id: bytes) -> None:
        self.storage = storage
        #: The master key id the repository's config names.
        self.key_id = key_id

    def _where(self, key: str) -> str:
        return f"{self.storage.url}/{key}"

    def list(self) -> list[KeyFile]:
        """Every key file, by id. Raises CorruptionError & co. for a damaged one (naming
        it), StorageError."""
        out = []
        for stat in self.storage.list(L.KEYS_PREFIX):
            name = stat.key[len(L.KEYS_PREFIX):]
            if not (name.endswith(L.KEY_SUFFIX) and _ID.match(name[:-len(L.KEY_SUFFIX)])):
                continue
            out.append(KeyFile.decode(
                self.storage.get_bytes(stat.key, limit=MAX_KEY_FILE_SIZE),
                self._where(stat.key)))
        return sorted(out, key=lambda k: (k.created_ns, k.id))

    def unlock(self, passphrase: bytes) -> tuple[MasterKey, KeyFile]:
        """The master key and the key file ``passphrase`` opens. Raises
        AuthenticationError (no key file opens with it, or none holds the config's key),
        CorruptionError (a damaged key file), StorageError."""
        files = [k for k in self.list() if k.master_id == self.key_id]
        if not files:
            raise AuthenticationError(f"authentication failed: repository "
                                      f"{self.storage.url} has no key file for its master key")
        for keyfile in files:
            try:
                return keyfile.unwrap(passphrase, self._where(key_object(keyfile.id))), keyfile
            except AuthenticationError:
                continue
        raise AuthenticationError(f"authentication failed: wrong passphrase for repository "
                                  f"{self.storage.url} (no key file opens with it)")

    def add(self, master: MasterKey, passphrase: bytes) -> KeyFile:
        """Write a new key file wrapping ``master`` under ``passphrase``; returns it."""
        keyfile = KeyFile.create(master, passphrase)
        self.storage.put_bytes(key_object(keyfile.id), keyfile.encode())
        return keyfile

    def find(self, prefix: str) -> KeyFile:
        """The one key file whose id starts with ``prefix``. Raises NotFoundError,
        UsageError (ambiguous)."""
        wanted = prefix.strip().lower()
        matches = [k for k in self.list() if k.id.startswith(wanted)] if wanted else []
        if not matches:
            raise NotFoundError(f"no key {prefix} in repository {self.storage.url}")
        if len(matches) > 1:
            raise UsageError(f"key id {prefix} is ambiguous ({len(matches)} keys match)")
        return matches[0]

    def remove(self, prefix: str) -> KeyFile:
        """Delete the key file ``prefix`` names; refuses (UsageError) to delete the last
        one, which would make every image unreadable."""
        keyfile = self.find(prefix)
        if len([k for k in self.list() if k.master_id == self.key_id]) <= 1:
            raise UsageError(f"key {keyfile.id[:8]} is the repository's last key: removing "
                             "it would make every backup unreadable")
        self.storage.delete(key_object(keyfile.id))
        return keyfile

    def passwd(self, keyfile: KeyFile, master: MasterKey, passphrase: bytes) -> KeyFile:
        """Rewrite ``keyfile`` (same id) under a new ``passphrase``; only that one key
        file changes."""
        new = keyfile.rewrap(master, passphrase)
        self.storage.put_bytes(key_object(new.id), new.encode())
        return new
