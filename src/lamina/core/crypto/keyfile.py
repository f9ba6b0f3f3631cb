"""Key files: a master key wrapped under a passphrase-derived key (docs/format.md, "Key
file"). A repository keeps one per passphrase under ``keys/``; a standalone encrypted image
carries one in its crypto block.

A key file is canonical JSON (sorted keys, no whitespace) of::

    magic "LAMINA-KEY", version 1, id (16 random bytes, hex), created_ns, hostname,
    username, kdf {...} (see kdf.py), cipher "aes-256-gcm", nonce (12 bytes, hex),
    master_id (the master key's id, hex), sealed (hex)

``sealed`` is AES-256-GCM under the derived key of the 64 master-key bytes, with the
canonical JSON of every *other* field as associated data: changing any field (the KDF
parameters included) makes the passphrase fail, as does a wrong passphrase; the two cannot
be told apart, on purpose. Decoding checks magic, then version, then every field and bound,
before any derivation runs. Pure; thread-safe.
"""

from __future__ import annotations

import getpass
import json
import secrets
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from lamina.core.crypto.kdf import KdfParams
from lamina.core.crypto.masterkey import KEY_ID_SIZE, MASTER_SIZE, MasterKey
from lamina.core.json_doc import load_versioned
from lamina.errors import AuthenticationError, CorruptionError

MAGIC = "LAMINA-KEY"
VERSION = 1
CIPHER = "aes-256-gcm"
#: Largest key file accepted (bounded before parsing).
MAX_KEY_FILE_SIZE = 16 * 1024
NONCE_SIZE = 12
_FIELDS = {"magic", "version", "id", "created_ns", "hostname", "username", "kdf", "cipher",
           "nonce", "master_id", "sealed"}


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True).encode("ascii")


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = ""
    return socket.gethostname()[:128], user[:128]


@dataclass(frozen=True, slots=True)
class KeyFile:
    """One key file (see the module doc); ``sealed`` is the wrapped master key."""

    id: str
    created_ns: int
    hostname: str
    username: str
    kdf: KdfParams
    nonce: bytes
    master_id: bytes
    sealed: bytes

    @classmethod
    def create(cls, master: MasterKey, passphrase: bytes,
               kdf: KdfParams | None = None) -> KeyFile:
        """A new key file wrapping ``master`` under ``passphrase`` (fresh id, salt, nonce;
        the real KDF cost unless ``kdf`` is given or the test-only knob is set)."""
        host, user = _who()
        draft = cls(secrets.token_hex(KEY_ID_SIZE), time.time_ns(), host, user,
                    kdf or KdfParams.new(), secrets.token_bytes(NONCE_SIZE), master.key_id, b"")
        return draft._seal(master, passphrase)

    def rewrap(self, master: MasterKey, passphrase: bytes) -> KeyFile:
        """This key file (same id) wrapping ``master`` under a new passphrase, with a fresh
        salt and nonce (``key passwd``)."""
        draft = replace(self, kdf=KdfParams.new(), nonce=secrets.token_bytes(NONCE_SIZE),
                        master_id=master.key_id, sealed=b"")
        return draft._seal(master, passphrase)

    def _seal(self, master: MasterKey, passphrase: bytes) -> KeyFile:
        kek = self.kdf.derive(passphrase)
        return replace(self, sealed=AESGCM(kek).encrypt(self.nonce, master.to_bytes(),
                                                        self._ad()))

    def _fields(self) -> dict[str, Any]:
        return {"magic": MAGIC, "version": VERSION, "id": self.id,
                "created_ns": self.created_ns, "hostname": self.hostname,
                "username": self.username, "kdf": self.kdf.to_json(), "cipher": CIPHER,
                "nonce": self.nonce.hex(), "master_id": self.master_id.hex()}

    def _ad(self) -> bytes:
        return _canonical(self._fields())

    def encode(self) -> bytes:
        """The key file's bytes."""
        return _canonical({**self._fields(), "sealed": self.sealed.hex()}) + b"\n"

    def to_json(self) -> dict[str, Any]:
        """What ``key list`` shows (nothing secret): id, creation, host, user, KDF."""
        kdf = {k: v for k, v in self.kdf.to_json().items() if k != "salt"}
        return {"id": self.id, "created_ns": self.created_ns, "hostname": self.hostname,
                "username": self.username, "kdf": kdf}

    def unwrap(self, passphrase: bytes, where: object) -> MasterKey:
        """The master key, or AuthenticationError (wrong passphrase, or a tampered key
        file: indistinguishable) naming ``where``."""
        kek = self.kdf.derive(passphrase)
        try:
            raw = AESGCM(kek).decrypt(self.nonce, self.sealed, self._ad())
        except InvalidTag:
            raise AuthenticationError(f"authentication failed: wrong passphrase for key "
                                      f"{self.id[:8]} ({where}), or its key file was "
                                      "tampered with") from None
        master = MasterKey.from_bytes(raw)
        if master.key_id != self.master_id:  # pragma: no cover - the AD binds master_id
            raise AuthenticationError(f"authentication failed: key {self.id[:8]} ({where}) "
                                      "holds another master key than it names")
        return master

    @classmethod
    def decode(cls, data: bytes, where: object) -> KeyFile:
        """Parse and bound key-file bytes read from ``where``. Raises NotADatabaseError (no
        magic), VersionError (newer), CorruptionError (any field wrong or out of bounds)."""
        obj = load_versioned(data, where=where, magic=MAGIC, newest=VERSION,
                             max_size=MAX_KEY_FILE_SIZE, kind="key file",
                             format_name="key file format", encoding="ascii")

        def bad(what: str) -> CorruptionError:
            return CorruptionError(f"key file: {what}", path=where)

        if set(obj) != _FIELDS:
            raise bad("unexpected or missing fields")
        if obj["cipher"] != CIPHER:
            raise bad(f"unknown cipher {obj['cipher']!r}")

        def text(name: str, limit: int) -> str:
            value = obj[name]
            if not isinstance(value, str) or len(value) > limit:
                raise bad(f"{name} must be a string of at most {limit} characters")
            return value

        def hexbytes(name: str, size: int) -> bytes:
            value = text(name, 2 * size)
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) != size:
                raise bad(f"{name} must be {size} bytes of hex")
            return raw

        created = obj["created_ns"]
        if not isinstance(created, int) or isinstance(created, bool) or created < 0:
            raise bad("created_ns must be a non-negative integer")
        key_id = hexbytes("id", KEY_ID_SIZE).hex()
        return cls(key_id, created, text("hostname", 128), text("username", 128),
                   KdfParams.from_json(obj["kdf"], where), hexbytes("nonce", NONCE_SIZE),
                   hexbytes("master_id", KEY_ID_SIZE),
                   hexbytes("sealed", MASTER_SIZE + 16))

