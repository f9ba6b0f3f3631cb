"""Sealing an image: AES-256-GCM per chunk, a keyed BLAKE2b over the image's metadata, and a
Poly1305 over every byte (docs/format.md, "Encrypted images").

* A chunk's stored payload is ``AES-256-GCM(chunk_key, nonce, compressed payload, ad)``
  (ciphertext then the 16-byte tag). The nonce is the chunk's index in the image (0, 1, ...)
  as 8 little-endian bytes and 4 zero bytes; the associated data is the image id and the
  chunk's stream, sequence number, flags, codec and both lengths. A chunk changed, moved to
  another position (the index and sequence differ) or to another image (another key and id)
  fails its tag.
* The manifest's trailing hash is ``BLAKE2b-128(key=manifest_key)`` of the header, crypto
  block, catalog block and manifest body: what ``info`` reads is authenticated without
  reading the chunks.
* The footer's image hash is ``Poly1305(image_mac_key)`` of every byte before the footer: a
  verification with the key proves every stored byte without decrypting any.

Objects here are used by one thread (the image writer's or reader's).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305

from lamina.core.crypto.masterkey import ImageKeys

TAG_SIZE = 16
MAC_SIZE = 16
#: nonce = chunk index u64 LE + 4 zero bytes
NONCE = struct.Struct("<Q4x")
#: ad = image_id[16] stream u32 seq u32 flags u8 codec u8 raw_len u32 stored_len u32
CHUNK_AD = struct.Struct("<16sIIBBII")


def chunk_ad(image_id: uuid.UUID, stream: int, seq: int, flags: int, codec: int,
             raw_length: int, stored_length: int) -> bytes:
    """The associated data that binds a chunk to its image and place (module doc)."""
    return CHUNK_AD.pack(image_id.bytes, stream, seq, flags, codec, raw_length, stored_length)


class ChunkCipher:
    """AES-256-GCM over chunk payloads with one image's chunk key."""

    def __init__(self, keys: ImageKeys) -> None:
        self._aead = AESGCM(keys.chunk_key)

    def seal(self, index: int, ad: bytes, payload: bytes | bytearray | memoryview) -> bytes:
        """Ciphertext and tag of chunk number ``index`` (``len(payload) + 16`` bytes)."""
        return self._aead.encrypt(NONCE.pack(index), payload, ad)

    def open(self, index: int, ad: bytes, sealed: bytes) -> bytes | None:
        """The payload, or None when the tag does not verify (tampered or moved)."""
        try:
            return self._aead.decrypt(NONCE.pack(index), sealed, ad)
        except InvalidTag:
            return None


class ImageMac:
    """Poly1305 over a byte stream, with ``update``/``digest`` like a hasher. Single use:
    ``digest`` may be called once; bytes fed after it (the footer) are not covered."""

    def __init__(self, keys: ImageKeys) -> None:
        self._mac: Poly1305 | None = Poly1305(keys.image_mac_key)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed ``data`` (ignored once the tag was taken)."""
        if self._mac is not None:
            self._mac.update(data)

    def digest(self) -> bytes:
        """The 16-byte tag (consumes the MAC)."""
        assert self._mac is not None, "ImageMac.digest() called twice"
        mac, self._mac = self._mac, None
        return mac.finalize()


class NoMac:
    """Stands in for :class:`ImageMac` when the key is absent: the MAC is not checked."""

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Ignore ``data``."""

    def digest(self) -> bytes | None:
        """None: nothing was computed."""
        return None


def manifest_mac(keys: ImageKeys, data: bytes) -> bytes:
    """The 16-byte keyed BLAKE2b of header, crypto block, catalog and manifest body."""
    return hashlib.blake2b(data, key=keys.manifest_key, digest_size=MAC_SIZE).digest()


def same(a: bytes, b: bytes) -> bool:
    """Constant-time equality of two MACs."""
    return hmac.compare_digest(a, b)
