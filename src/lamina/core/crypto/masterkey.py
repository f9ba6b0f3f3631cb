"""The master key: one random encryption key and one random MAC key (restic's shape), and
the per-image keys derived from it.

Why per-image keys: every image gets a fresh 32-byte random salt, and its chunk key, manifest
MAC key and one-time Poly1305 key are HKDF-SHA256 of the master key with that salt and the
image id. So no two images share a chunk key (even a synthetic full image that keeps the
id of the backup it replaces), and within one image the AES-GCM nonce is the chunk's index
in the image (a counter): a (key, nonce) pair can never repeat. Pure; thread-safe.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
MASTER_SIZE = 2 * KEY_SIZE
KEY_ID_SIZE = 16
IMAGE_SALT_SIZE = 32


@dataclass(frozen=True, slots=True)
class MasterKey:
    """An encryption key and a MAC key, 32 random bytes each. ``key_id`` names the pair
    without revealing it (a keyed BLAKE2b of a constant under the MAC key)."""

    enc_key: bytes
    mac_key: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        """A fresh random master key."""
        return cls(secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE))

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        """The master key from its 64 bytes (encryption key, then MAC key)."""
        if len(raw) != MASTER_SIZE:
            raise ValueError(f"a master key is {MASTER_SIZE} bytes, not {len(raw)}")
        return cls(raw[:KEY_SIZE], raw[KEY_SIZE:])

    def to_bytes(self) -> bytes:
        """The 64 key bytes (secret)."""
        return self.enc_key + self.mac_key

    @property
    def key_id(self) -> bytes:
        """16 bytes naming this master key in key files and image headers."""
        return hashlib.blake2b(b"lamina master key id", key=self.mac_key,
                               digest_size=KEY_ID_SIZE).digest()

    def __repr__(self) -> str:  # never print key bytes
        return f"MasterKey(id={self.key_id.hex()})"


@dataclass(frozen=True, slots=True)
class ImageKeys:
    """The keys of one image: AES-256-GCM chunk key, manifest MAC key (keyed BLAKE2b) and
    the one-time Poly1305 key of the whole-image MAC."""

    chunk_key: bytes
    manifest_key: bytes
    image_mac_key: bytes

    def __repr__(self) -> str:
        return "ImageKeys(...)"


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def image_keys(master: MasterKey, salt: bytes, image_id: uuid.UUID) -> ImageKeys:
    """The keys of the image ``image_id`` sealed with ``salt`` (its crypto block's): the
    chunk key from the encryption key, both MAC keys from the MAC key."""
    chunk = _hkdf(master.enc_key, salt, b"lamina image chunk key v1" + image_id.bytes, KEY_SIZE)
    macs = _hkdf(master.mac_key, salt, b"lamina image mac keys v1" + image_id.bytes,
                 2 * KEY_SIZE)
    return ImageKeys(chunk, macs[:KEY_SIZE], macs[KEY_SIZE:])
