"""The image side of encryption: what the image writer and reader call to seal and open a
sealed image (crypto primitives: :mod:`lamina.core.crypto`; byte layout: docs/format.md,
"Encrypted images").

* :class:`ImageSealer` (writer): picks a fresh salt (or takes the one an interrupted backup
  recorded, so its resume writes the same bytes), derives the image's keys, encrypts each
  chunk payload with its index in the image as nonce, and computes the manifest MAC and the
  whole-image Poly1305.
* :class:`ImageOpener` (reader): finds the master key (known, or unwrapped from the image's
  own key file with a passphrase) and does the reverse; without a key it still lets a
  reader check every checksum (``authenticated`` is then False).

In a sealed image every stream hash in the manifest is over the *stored* (encrypted) bytes,
so it can be checked without the key and says nothing about the plaintext.

Not thread-safe: each object belongs to one image writer or reader.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from lamina.backup import image_format
from lamina.core.crypto import keyring as keyrings
from lamina.core.crypto.masterkey import IMAGE_SALT_SIZE, image_keys
from lamina.core.crypto.sealing import ChunkCipher, ImageMac, NoMac, chunk_ad, manifest_mac
from lamina.errors import AuthenticationError, UsageError


def sealing_keyring(keyring: keyrings.Keyring | None) -> keyrings.Keyring | None:
    """``keyring``, or the current one (:func:`lamina.core.crypto.keyring.current`)."""
    return keyring if keyring is not None else keyrings.current()


class ImageSealer:
    """Seals one image under ``spec`` (see the module doc), with ``salt`` (default: a fresh
    random one). A given salt must be the one an interrupted writer of this very image
    drew (a resume): the same key, salt and nonces then seal the same plaintext into the
    same bytes; sealing other plaintext under them would reuse nonces (the resume guards
    against it, :mod:`lamina.repository.resumable`). Raises UsageError (a salt of a wrong
    size)."""

    def __init__(self, spec: keyrings.SealSpec, image_id: uuid.UUID,
                 salt: bytes | None = None) -> None:
        if salt is not None and len(salt) != IMAGE_SALT_SIZE:
            raise UsageError(f"an image salt has {IMAGE_SALT_SIZE} bytes, not {len(salt)}")
        self.image_id = image_id
        self.block = image_format.SealBlock(
            spec.master.key_id, secrets.token_bytes(IMAGE_SALT_SIZE) if salt is None else salt,
            spec.wrapped)
        self._keys = image_keys(spec.master, self.block.salt, image_id)
        self._cipher = ChunkCipher(self._keys)
        self._metadata: list[bytes] = []
        self._index = 0

    def block_bytes(self) -> bytes:
        """The crypto block written after the header."""
        return image_format.encode_seal_block(self.block)

    def image_mac(self) -> ImageMac:
        """A fresh whole-image Poly1305 (the footer's image hash)."""
        return ImageMac(self._keys)

    def metadata(self, data: bytes) -> None:
        """Feed header, crypto block or catalog bytes to the manifest MAC."""
        self._metadata.append(data)

    def manifest_mac(self, body: bytes) -> bytes:
        """The manifest's trailing MAC over the metadata fed so far and ``body``."""
        return manifest_mac(self._keys, b"".join(self._metadata) + body)

    def seal_chunk(self, stream: int, seq: int, last: bool, codec: image_format.Codec,
                   raw_length: int, payload: bytes | bytearray | memoryview) -> bytes:
        """The stored bytes of the next chunk (ciphertext and tag); chunks must be sealed
        in the order they are written."""
        flags = image_format.chunk_flags(last, codec, True)
        ad = chunk_ad(self.image_id, stream, seq, flags, int(codec), raw_length,
                      len(payload) + image_format.SEAL_TAG_SIZE)
        sealed = self._cipher.seal(self._index, ad, payload)
        self._index += 1
        return sealed


class ImageOpener:
    """Opens one sealed image read from ``path`` (see the module doc). ``authenticated``
    is True when the key was found: then chunks can be opened and MACs checked."""

    def __init__(self, header: image_format.ImageHeader, block: image_format.SealBlock,
                 keyring: keyrings.Keyring | None, path: object) -> None:
        self.image_id = header.image_id
        self.path = path
        self.hint = keyring.hint if keyring is not None else "give its passphrase"
        master = None if keyring is None else keyring.master_for(
            block.key_id, block.wrapped, path or "image")
        self._keys = None if master is None else image_keys(master, block.salt,
                                                            header.image_id)
        self._cipher = None if self._keys is None else ChunkCipher(self._keys)
        self._index = 0

    @property
    def authenticated(self) -> bool:
        """True when the image's key is at hand."""
        return self._keys is not None

    def require(self, what: str) -> None:
        """AuthenticationError unless the key is at hand (``what`` needs it)."""
        if self._keys is None:
            raise AuthenticationError(f"{self.path or 'image'} is encrypted: {what} needs "
                                      f"its key ({self.hint})")

    def image_mac(self, skip: bool = False) -> ImageMac | NoMac:
        """The whole-image Poly1305 to check, or a stand-in (without the key, or
        ``skip``: a reader that opens every chunk)."""
        return NoMac() if self._keys is None or skip else ImageMac(self._keys)

    def manifest_mac(self, metadata: bytes) -> image_format.ManifestMac | None:
        """The manifest MAC function over ``metadata`` + body, or None without the key."""
        keys = self._keys
        if keys is None:
            return None
        return lambda body: manifest_mac(keys, metadata + body)

    def open_chunk(self, head: image_format.ChunkHeader, payload: bytes, where: str) -> bytes:
        """The compressed payload of the next chunk (chunks in image order), or
        AuthenticationError: changed, or moved from another position or image."""
        assert self._cipher is not None  # require() first
        ad = chunk_ad(self.image_id, head.stream, head.seq, head.flags, int(head.codec),
                      head.raw_length, head.stored_length)
        opened = self._cipher.open(self._index, ad, payload)
        self._index += 1
        if opened is None:
            raise AuthenticationError(f"authentication failed: {where} of "
                                      f"{self.path or 'image'} does not verify under its key "
                                      "(tampered, or moved from another image or position)")
        return opened

    def skip_chunk(self) -> None:
        """Count a chunk that was not opened (a verification without decryption)."""
        self._index += 1


def describe(header: image_format.ImageHeader, authenticated: bool) -> dict[str, Any]:
    """The encryption fields of ``info``/``verify`` reports."""
    return {"encrypted": header.sealed, "authenticated": authenticated if header.sealed
            else False}
