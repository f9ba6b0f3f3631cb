"""Helpers of the encryption tests: a small database holding a marker, sealed images of
it, and surgery on sealed images (pieces put back with valid checksums, so a test reaches
the authentication checks behind them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lamina
from lamina import online
from lamina.backup import image_format as F
from lamina.core.crypto.keyfile import KeyFile
from lamina.core.crypto.keyring import Keyring, SealSpec, using
from lamina.core.crypto.masterkey import MasterKey

MARKER = b"PLAINTEXT-MARKER-7f3a"
PASSPHRASE = b"correct horse"


def make_db(path: Path, rows: int = 200, *, archive: bool = True) -> None:
    """A database with a btree and (``archive``) an archive table, every value and row
    holding :data:`MARKER`."""
    db = lamina.open(path, create=True)
    try:
        db.create_table("t")
        with db.write() as txn:
            table = txn.table("t")
            for i in range(rows):
                table.put(b"k%05d" % i, MARKER + b" value %d" % i)
            txn.commit()
        if archive:
            db.create_table("a", engine="archive")
            db.append_many("a", [MARKER + b" row %d" % i for i in range(rows)])
    finally:
        db.close()


def change(path: Path, n: int = 5) -> None:
    """Commit ``n`` more marker values (for a layer)."""
    db = lamina.open(path)
    try:
        for i in range(n):
            db.put("t", b"new%03d" % i, MARKER + b" changed %d" % i)
    finally:
        db.close()


def sealing(passphrase: bytes = PASSPHRASE) -> Keyring:
    """A standalone image's keyring: a new master key wrapped under ``passphrase``."""
    master = MasterKey.generate()
    return Keyring(passphrase=lambda: passphrase,
                   seal=SealSpec(master, KeyFile.create(master, passphrase).encode()))


def opening(passphrase: bytes | None = PASSPHRASE) -> Keyring:
    """A reader's keyring that unlocks images with ``passphrase`` (None: no passphrase)."""
    return Keyring(passphrase=lambda: passphrase)


def backup(db_path: Path, target: Path, keyring: Keyring, base: Path | None = None) -> None:
    """An image of ``db_path`` at ``target`` written under ``keyring``."""
    db = lamina.open(db_path)
    try:
        with using(keyring):
            online.backup(db, target, base=base)
    finally:
        db.close()


@dataclass
class Sealed:
    """A sealed image in pieces."""

    header: bytes
    seal: bytes
    catalog: bytes
    chunks: list[bytes]
    manifest: bytes
    footer: bytes

    def build(self) -> bytes:
        """Reassemble as is (the footer is kept: an attacker cannot recompute its MAC)."""
        return (self.header + self.seal + self.catalog + b"".join(self.chunks)
                + self.manifest + self.footer)


def split(image: bytes) -> Sealed:
    """Split a valid sealed image into its pieces."""
    pos = F.HEADER_SIZE
    _block, wlen, _sum = F.decode_seal_head(image[pos: pos + F.SEAL_HEAD_SIZE], pos)
    seal = image[pos: pos + F.SEAL_HEAD_SIZE + wlen]
    pos += len(seal)
    _d, _t, length, _c = F.decode_catalog_head(image[pos: pos + F.CATALOG_HEAD_SIZE], pos)
    catalog = image[pos: pos + F.CATALOG_HEAD_SIZE + length]
    pos += len(catalog)
    chunks = []
    while image[pos: pos + 4] == F.CHUNK_MAGIC:
        head = F.decode_chunk_header(image[pos: pos + F.CHUNK_HEAD_SIZE], pos)
        end = pos + F.CHUNK_HEAD_SIZE + head.stored_length
        chunks.append(image[pos:end])
        pos = end
    return Sealed(image[:F.HEADER_SIZE], seal, catalog, chunks, image[pos: -F.FOOTER_SIZE],
                  image[-F.FOOTER_SIZE:])


def rechunk(chunk: bytes, *, seq: int | None = None, payload: bytes | None = None) -> bytes:
    """``chunk`` with another sequence number and/or payload, checksums recomputed (what a
    forger without the key can do)."""
    fields = list(F.CHUNK_HEAD.unpack_from(chunk))
    body = chunk[F.CHUNK_HEAD_SIZE:] if payload is None else payload
    if seq is not None:
        fields[2] = seq
    fields[7] = len(body)
    fields[8] = F.xxh3(body)
    head = F.CHUNK_HEAD.pack(*fields)
    return head + F.CHUNK_HEAD_CHECKSUM.pack(F.xxh3(head)) + body
