"""Passphrase key derivation: Argon2id (``cryptography`` >= 44) or, where that is missing,
``hashlib.scrypt``; the parameters and salt travel with the key file they protect.

Defaults are the real cost (Argon2id t=3, m=64 MiB, p=4, as borg 2 uses; scrypt N=2^17, r=8,
p=1: ~0.2-0.5 s here). Test-only knob: when the environment variable ``LAMINA_TEST_CHEAP_KDF``
is set (to anything non-empty), *new* key files get the cheapest parameters this module
accepts, so test suites can create hundreds of keys; it is read only when set, never
changes how an existing key file is opened (its own parameters are used), and must never be
set in production.

Parameters read from a file are untrusted: :func:`KdfParams.from_json` bounds every one
before use (at most 1 GiB of memory, 64 passes), so a hostile key file cannot make a reader
allocate or spin without limit. Pure functions; thread-safe.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import Any

from lamina.errors import CorruptionError

try:  # Argon2id arrived in cryptography 44
    from cryptography.hazmat.primitives.kdf import argon2 as _argon2
except ImportError:  # pragma: no cover - depends on the installed cryptography
    _argon2 = None  # type: ignore[assignment]

#: Argon2id's class, or None where the installed cryptography lacks it.
Argon2id: Any = None if _argon2 is None else _argon2.Argon2id

#: The environment variable of the test-only knob (see the module doc).
CHEAP_KDF_ENV = "LAMINA_TEST_CHEAP_KDF"
ARGON2ID = "argon2id"
SCRYPT = "scrypt"
SALT_SIZE = 16
KEY_SIZE = 32

#: Real parameters (the defaults).
ARGON2_TIME, ARGON2_MEMORY_KIB, ARGON2_LANES = 3, 64 * 1024, 4
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 17, 8, 1
#: Bounds accepted from a key file.
MAX_MEMORY_KIB = 1024 * 1024
MAX_TIME = 64
MAX_LANES = 64
MAX_SCRYPT_N = 1 << 20
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16


@dataclass(frozen=True, slots=True)
class KdfParams:
    """One derivation: the algorithm, its cost parameters and the salt.

    Argon2id uses ``time_cost`` (passes), ``memory_kib`` and ``lanes``; scrypt uses ``n``
    (``memory_kib`` unused), ``r`` and ``p`` (stored in ``time_cost`` and ``lanes``).
    """

    algorithm: str
    time_cost: int
    memory_kib: int
    lanes: int
    salt: bytes

    @classmethod
    def new(cls) -> KdfParams:
        """Fresh parameters with a random salt: the real cost, unless the test-only knob
        is set (module doc); Argon2id when available, else scrypt."""
        cheap = bool(os.environ.get(CHEAP_KDF_ENV))
        salt = secrets.token_bytes(SALT_SIZE)
        if Argon2id is not None:
            if cheap:
                return cls(ARGON2ID, 1, 8, 1, salt)
            return cls(ARGON2ID, ARGON2_TIME, ARGON2_MEMORY_KIB, ARGON2_LANES, salt)
        if cheap:  # pragma: no cover - without Argon2id
            return cls(SCRYPT, SCRYPT_R, 1 << 4, SCRYPT_P, salt)
        return cls(SCRYPT, SCRYPT_R, SCRYPT_N, SCRYPT_P, salt)  # pragma: no cover

    def to_json(self) -> dict[str, Any]:
        """The key file's ``kdf`` object."""
        if self.algorithm == ARGON2ID:
            return {"algorithm": ARGON2ID, "time_cost": self.time_cost,
                    "memory_kib": self.memory_kib, "lanes": self.lanes,
                    "salt": self.salt.hex()}
        return {"algorithm": SCRYPT, "n": self.memory_kib, "r": self.time_cost,
                "p": self.lanes, "salt": self.salt.hex()}

    @classmethod
    def from_json(cls, obj: Any, where: object) -> KdfParams:
        """Parse and bound a key file's ``kdf`` object. Raises CorruptionError naming
        ``where`` for a missing, mistyped or out-of-bounds field, or an algorithm this build
        cannot run."""
        def bad(what: str) -> CorruptionError:
            return CorruptionError(f"key file kdf: {what}", path=where)

        if not isinstance(obj, dict):
            raise bad("not an object")

        def num(name: str, low: int, high: int) -> int:
            value = obj.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise bad(f"{name} must be an integer in {low}..{high}")
            return value

        salt_hex = obj.get("salt")
        try:
            salt = bytes.fromhex(salt_hex) if isinstance(salt_hex, str) else b""
        except ValueError:
            salt = b""
        if not 8 <= len(salt) <= 64:
            raise bad("salt must be 8 to 64 bytes of hex")
        algorithm = obj.get("algorithm")
        if algorithm == ARGON2ID:
            if Argon2id is None:  # pragma: no cover - depends on the installed cryptography
                raise bad("argon2id needs cryptography >= 44")
            lanes = num("lanes", 1, MAX_LANES)
            params = cls(ARGON2ID, num("time_cost", 1, MAX_TIME),
                         num("memory_kib", 8 * lanes, MAX_MEMORY_KIB), lanes, salt)
            if set(obj) != {"algorithm", "time_cost", "memory_kib", "lanes", "salt"}:
                raise bad("unexpected fields")
            return params
        if algorithm == SCRYPT:
            n = num("n", 2, MAX_SCRYPT_N)
            if n & (n - 1):
                raise bad("n must be a power of two")
            r, p = num("r", 1, MAX_SCRYPT_R), num("p", 1, MAX_SCRYPT_P)
            if 128 * r * n // 1024 > MAX_MEMORY_KIB:
                raise bad("n * r needs more than 1 GiB")
            if set(obj) != {"algorithm", "n", "r", "p", "salt"}:
                raise bad("unexpected fields")
            return cls(SCRYPT, r, n, p, salt)
        raise bad(f"unknown algorithm {algorithm!r}")

    def derive(self, passphrase: bytes) -> bytes:
        """The 32-byte key-encryption key for ``passphrase`` (slow on purpose)."""
        if self.algorithm == ARGON2ID:
            assert Argon2id is not None  # from_json/new checked
            return bytes(Argon2id(salt=self.salt, length=KEY_SIZE, iterations=self.time_cost,
                                  lanes=self.lanes, memory_cost=self.memory_kib
                                  ).derive(passphrase))
        n, r, p = self.memory_kib, self.time_cost, self.lanes
        return hashlib.scrypt(passphrase, salt=self.salt, n=n, r=r, p=p,
                              maxmem=128 * r * n + (16 << 20), dklen=KEY_SIZE)
