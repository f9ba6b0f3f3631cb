"""Repository layout and the config file format (constants in one place).

A repository is a set of objects addressed by keys (``/``-separated, see
:mod:`lamina.repository.storage`)::

    LAMINAREPO                  config: magic, format version, repository id, settings
    images/<backup-id>.lamina   one backup image per backup (published only when complete)
    index.json                  derived data: one record per image (see index.py)
    locks/...                   lease objects of the repository lock (see lock.py)
    keys/<key-id>.json          an encrypted repository's key files (one per passphrase)

A local repository also has ``tmp/`` (prune's staging of synthetic fulls, never listed)
and ``uploads/`` (resumable uploads of images being written, never listed); neither holds
committed data. An ``s3://BUCKET/PREFIX`` repository keeps key ``K`` in the object
``PREFIX/K`` (its resumable uploads are the store's multipart uploads, each with an
``uploads/NAME`` object describing it).

The config file is canonical JSON (sorted keys, no whitespace) of an object holding
``magic``, ``version``, ``repository_id``, ``created_ns``, ``chain_limit``, for an encrypted
repository ``encryption`` = ``{"cipher": "aes-256-gcm", "key_id": HEX}`` (the master key's
id: every image must be sealed under it), and ``checksum`` = ``xxh3_64`` (hex, 16 digits)
of the canonical JSON of every other field.
It is read in the order magic (else NotADatabaseError), version (newer: VersionError),
checksum (CorruptionError), then the fields.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import xxhash

from lamina.core.json_doc import load_versioned
from lamina.errors import CorruptionError, UsageError

#: The config object's key; its presence marks a directory as a repository.
CONFIG_KEY = "LAMINAREPO"
CONFIG_MAGIC = "LAMINA-REPOSITORY"
#: Repository format version this build writes and reads (up to).
FORMAT_VERSION = 1
#: Largest config file accepted (a sane bound before parsing).
MAX_CONFIG_SIZE = 64 * 1024

#: Where images live: ``images/<backup-id>.lamina``.
IMAGES_PREFIX = "images/"
IMAGE_SUFFIX = ".lamina"
#: The index object (derived data, rebuilt from the images when it disagrees with them).
INDEX_KEY = "index.json"
INDEX_MAGIC = "LAMINA-REPOSITORY-INDEX"
INDEX_VERSION = 1

#: Key files of an encrypted repository: ``keys/<key-file-id>.json``.
KEYS_PREFIX = "keys/"
KEY_SUFFIX = ".json"
CIPHER = "aes-256-gcm"

#: Local-only staging directory (not objects); the prefix of the lease objects.
STAGING_DIR = "tmp"
LOCKS_DIR = "locks"
#: Local-only: resumable uploads of images being written (:mod:`~.uploads`), kept until
#: published or abandoned (never emptied by prune, unlike ``tmp/``).
UPLOADS_DIR = "uploads"

#: Default longest chain: a new backup is a layer only while the chain it would extend has
#: fewer than this many layers on top of its full image.
DEFAULT_CHAIN_LIMIT = 7


def image_key(backup_id: uuid.UUID | str) -> str:
    """The key of the image standing for ``backup_id``."""
    return f"{IMAGES_PREFIX}{backup_id}{IMAGE_SUFFIX}"


def backup_id_of_key(key: str) -> uuid.UUID | None:
    """The backup id an image key names, or None for a key that is not an image's."""
    if not (key.startswith(IMAGES_PREFIX) and key.endswith(IMAGE_SUFFIX)):
        return None
    stem = key[len(IMAGES_PREFIX):-len(IMAGE_SUFFIX)]
    try:
        parsed = uuid.UUID(stem)
    except ValueError:
        return None
    return parsed if str(parsed) == stem else None  # only the canonical spelling


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace, no NaN), for checksums."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=False).encode("utf-8")


def checksum(obj: Any) -> str:
    """``xxh3_64`` of the canonical JSON of ``obj``, as 16 hex digits."""
    return f"{xxhash.xxh3_64_intdigest(canonical_json(obj)):016x}"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    """The repository's config file: identity and settings."""

    repository_id: uuid.UUID
    created_ns: int
    chain_limit: int = DEFAULT_CHAIN_LIMIT
    #: The master key's id of an encrypted repository (None: not encrypted).
    key_id: bytes | None = None

    @property
    def encrypted(self) -> bool:
        """True for an encrypted repository."""
        return self.key_id is not None

    @classmethod
    def new(cls, chain_limit: int = DEFAULT_CHAIN_LIMIT,
            key_id: bytes | None = None) -> RepoConfig:
        """A fresh config (new repository id, now). Raises UsageError for a bad limit."""
        if chain_limit < 0:
            raise UsageError("the chain limit must be 0 or more layers")
        return cls(uuid.uuid4(), time.time_ns(), chain_limit, key_id)

    def encode(self) -> bytes:
        """The config file's bytes."""
        body: dict[str, Any] = {"magic": CONFIG_MAGIC, "version": FORMAT_VERSION,
                                "repository_id": str(self.repository_id),
                                "created_ns": self.created_ns,
                                "chain_limit": self.chain_limit}
        if self.key_id is not None:
            body["encryption"] = {"cipher": CIPHER, "key_id": self.key_id.hex()}
        return canonical_json({**body, "checksum": checksum(body)}) + b"\n"

    @classmethod
    def decode(cls, data: bytes, where: object) -> RepoConfig:
        """Parse and validate config bytes read from ``where`` (named in errors).

        Raises NotADatabaseError (no magic: not a repository), VersionError (a newer
        format), CorruptionError (checksum or fields).
        """
        obj = load_versioned(data, where=where, magic=CONFIG_MAGIC, newest=FORMAT_VERSION,
                             max_size=MAX_CONFIG_SIZE, kind="repository config",
                             format_name="repository format")
        body = {k: v for k, v in obj.items() if k != "checksum"}
        if obj.get("checksum") != checksum(body):
            raise CorruptionError("repository config checksum mismatch", path=where)
        try:
            config = cls(uuid.UUID(str(obj["repository_id"])), int(obj["created_ns"]),
                         int(obj["chain_limit"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptionError(f"repository config field: {exc}", path=where) from exc
        if config.chain_limit < 0:
            raise CorruptionError("repository config chain_limit is negative", path=where)
        if "encryption" in obj:
            enc = obj["encryption"]
            try:
                key_id = bytes.fromhex(enc["key_id"]) if enc.get("cipher") == CIPHER else b""
            except (AttributeError, TypeError, ValueError):
                key_id = b""
            if len(key_id) != 16:
                raise CorruptionError("repository config encryption field is invalid",
                                      path=where)
            config = replace(config, key_id=key_id)
        return config
