"""The hash chain of an archive table's blocks (docs/format.md, "Archive block chain").

Each generation of a table starts its chain at :data:`CHAIN_START` (32 zero bytes); every
block committed to it extends the chain::

    head' = BLAKE2b-256(head || block bytes)

where *block bytes* are the block exactly as stored in ``NAME.ARZ``: its 56-byte header
(commit seq and checksums included) followed by its stored payload. The head after the
last committed block is stored in the ``.ARM`` meta with each commit (and in an optimized
generation's ``.ARZ`` header as its base state), so the database root hash can include it
without reading data, while the checker and every restore recompute it from the blocks.

BLAKE2b (hashlib) rather than BLAKE3: both are cryptographic; BLAKE3 is not installed here
and BLAKE2b (measured in bench/root_hash.py) hashes hundreds of MiB/s per core.

Pure and thread-safe (a :class:`ChainHasher` belongs to one thread).
"""

from __future__ import annotations

import hashlib

#: Bytes of a chain head.
CHAIN_HASH_SIZE = 32
#: The head of a generation with no blocks.
CHAIN_START = bytes(CHAIN_HASH_SIZE)


def extend(head: bytes, block: bytes | bytearray | memoryview) -> bytes:
    """The chain head after ``block`` (its header and stored payload) follows ``head``."""
    h = hashlib.blake2b(head, digest_size=CHAIN_HASH_SIZE)
    h.update(block)
    return h.digest()


class ChainHasher:
    """A running chain: :meth:`add` one block at a time (its bytes may come in pieces via
    :meth:`add_parts`); :attr:`head` is the head after the blocks added so far."""

    def __init__(self, head: bytes = CHAIN_START) -> None:
        self.head = head

    def add(self, block: bytes | bytearray | memoryview) -> bytes:
        """Extend the chain by one block's bytes; returns the new head."""
        self.head = extend(self.head, block)
        return self.head

    def add_parts(self, *parts: bytes | bytearray | memoryview) -> bytes:
        """Extend the chain by one block given as consecutive pieces (header, payload)."""
        h = hashlib.blake2b(self.head, digest_size=CHAIN_HASH_SIZE)
        for p in parts:
            h.update(p)
        self.head = h.digest()
        return self.head


__all__ = ["CHAIN_HASH_SIZE", "CHAIN_START", "ChainHasher", "extend"]
