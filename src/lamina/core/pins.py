"""Durable backup pins: the ``BACKUP_PINS`` file of a database (docs/format.md, "Backup
pins").

A pin is a lease on a validity point (VP) that an interrupted backup to a repository may
resume to. It is not tied to a live process: it lives in this file, and a mirror of each
pin's btree txnid and expiry sits in the lock file (:meth:`LockFile.publish_pins
<lamina.core.lockfile.LockFile.publish_pins>`), where every writer of every process sees
it. While a pin's lease runs, writers reuse no btree page that the pinned snapshot needs
(they treat it as one more reader), and archive ``optimize`` retains the generation it
replaces (:mod:`lamina.engines.archive.generations`); archive data is append-only, so its
VP position, a length, needs nothing more. Once the lease expires the pin holds nothing
back, whether or not anyone removes its record.

File format: a 24-byte header, magic ``LAMPINS\\0`` (8), version u32, body length u32,
xxh3_64 of the body u64; then the body, canonical JSON ``{"pins": [record...]}`` (see
:class:`PinRecord`). Read in the order magic, version, length bound, checksum, fields.
Version 2 added each record's ``seal`` (:class:`PinSeal`); version 1 files are still read
(their pins have no seal).
The file is replaced atomically (write, fsync, rename) under the lock file's ``pins_lock``.

Concurrency: :func:`update` serializes every change across processes (``pins_lock``);
:func:`load` reads without a lock (the file is replaced whole, never written in place).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import xxhash

from lamina.core import fileio
from lamina.core.lockfile import LockFile
from lamina.core.lockfile_format import PIN_ENTRIES
from lamina.errors import CorruptionError, NotADatabaseError, VersionError, storage_error

log = logging.getLogger("lamina.pins")

FILE_NAME = "BACKUP_PINS"
MAGIC = b"LAMPINS\x00"
VERSION = 2
#: The oldest version read (1: no ``seal`` field).
MIN_VERSION = 1
#: magic[8], version u32, body length u32, xxh3_64(body) u64.
HEADER = struct.Struct("<8sIIQ")
#: Largest body accepted (a sane bound before parsing): 8 pins of a few KiB each.
MAX_BODY = 1 << 20
#: How many pins a database keeps at once (the lock file's mirror has this many entries).
MAX_PINS = PIN_ENTRIES
#: Default lease of a pin: one hour.
DEFAULT_LEASE_NS = 3600 * 10**9
#: Sizes of a seal's master key id and image salt: ``KEY_ID_SIZE`` and ``IMAGE_SALT_SIZE``
#: of :mod:`lamina.core.crypto.masterkey` (not imported: it loads ``cryptography``, which
#: opening a database does not need; a test checks they agree).
SEAL_KEY_ID_SIZE = 16
SEAL_SALT_SIZE = 32


@dataclass(frozen=True)
class PinSeal:
    """How the image of an interrupted backup into an encrypted repository was sealed: the
    master key's id and the image's salt (its HKDF salt), lowercase hex. Both are written
    in the image's crypto block anyway; no key is ever recorded. A resume seals with the
    same salt, so it writes the same bytes and skips the parts already stored."""

    key_id: str
    salt: str

    def __post_init__(self) -> None:
        for name, size in (("key_id", SEAL_KEY_ID_SIZE), ("salt", SEAL_SALT_SIZE)):
            value = getattr(self, name)
            if (not isinstance(value, str) or len(value) != 2 * size
                    or value.strip("0123456789abcdef")):
                raise ValueError(f"seal {name} is not {size} bytes of lowercase hex")

    @classmethod
    def of(cls, key_id: bytes, salt: bytes) -> PinSeal:
        """From the raw bytes. Raises ValueError (wrong sizes)."""
        return cls(key_id.hex(), salt.hex())

    def raw(self) -> tuple[bytes, bytes]:
        """(key id, salt) as bytes."""
        return bytes.fromhex(self.key_id), bytes.fromhex(self.salt)


@dataclass(frozen=True)
class PinRecord:
    """One durable pin.

    ``pin_id`` is the id of the image the interrupted backup was writing; ``scope`` names
    what the pin is for (a repository id: one pin per repository); ``txnid`` is the btree
    txnid of the pinned snapshot (at least 1); ``vp_seq`` and ``vp_wall_ns`` the VP;
    ``created_ns`` and ``expires_ns`` the lease (wall clock, ns since the epoch); ``pid``
    and ``host`` the process that took it (for messages and liveness only); ``where`` a
    human description of the target (a repository URL); ``resume`` what the backup layer
    needs to redo the image byte for byte (opaque here); ``seal`` how its image is sealed
    (None: not encrypted, or a version-1 record).
    """

    pin_id: str
    scope: str
    txnid: int
    vp_seq: int
    vp_wall_ns: int
    created_ns: int
    expires_ns: int
    pid: int
    host: str
    where: str = ""
    resume: dict[str, Any] = field(default_factory=dict)
    seal: PinSeal | None = None

    def expired(self, now_ns: int | None = None) -> bool:
        """True once the lease is over (at ``now_ns``, default the wall clock)."""
        return (time.time_ns() if now_ns is None else now_ns) >= self.expires_ns

    def owner_alive(self) -> bool:
        """True if the process that took the pin may still run (same host, pid exists)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self, now_ns: int | None = None) -> dict[str, Any]:
        """JSON-ready summary (``lamina stat``): everything but the resume payload and the
        seal, plus ``state`` (``active`` or ``expired``) and ``expires_in_s``."""
        now = time.time_ns() if now_ns is None else now_ns
        out = {k: v for k, v in asdict(self).items() if k not in ("resume", "seal")}
        out["state"] = "expired" if self.expired(now) else "active"
        out["expires_in_s"] = max(0.0, (self.expires_ns - now) / 1e9)
        return out


def path_of(directory: str | os.PathLike[str]) -> Path:
    """The pin file of the database in ``directory``."""
    return Path(directory) / FILE_NAME


def encode(pins: list[PinRecord]) -> bytes:
    """The whole file for ``pins``. Pure."""
    body = json.dumps({"pins": [asdict(p) for p in pins]}, sort_keys=True,
                      separators=(",", ":"), allow_nan=False).encode("utf-8")
    return HEADER.pack(MAGIC, VERSION, len(body), xxhash.xxh3_64_intdigest(body)) + body


_FIELDS = {"pin_id": str, "scope": str, "txnid": int, "vp_seq": int, "vp_wall_ns": int,
           "created_ns": int, "expires_ns": int, "pid": int, "host": str, "where": str,
           "resume": dict}


def _seal(item: dict[str, Any], version: int) -> PinSeal | None:
    """A record's ``seal``: required in version 2 (null or exactly ``key_id`` and
    ``salt``), absent in version 1. Raises ValueError, KeyError."""
    if version < 2:
        if "seal" in item:
            raise ValueError("a version 1 pin has no seal field")
        return None
    value = item["seal"]
    if value is None:
        return None
    if not isinstance(value, dict) or sorted(value) != ["key_id", "salt"]:
        raise ValueError("field seal is not null or {key_id, salt}")
    return PinSeal(value["key_id"], value["salt"])


def decode(raw: bytes, path: Path) -> list[PinRecord]:
    """The pins in the file bytes ``raw``: magic, then version, then the declared length
    (bounded), then the checksum, then the fields. Raises NotADatabaseError, VersionError,
    CorruptionError naming ``path``. Pure."""
    if len(raw) < HEADER.size or raw[:8] != MAGIC:
        raise NotADatabaseError(f"{path} is not a Lamina pin file (bad magic)")
    _magic, version, length, check = HEADER.unpack_from(raw)
    if version > VERSION:
        raise VersionError(f"{path} is pin file version {version}; this build reads up "
                           f"to {VERSION}")
    if version < MIN_VERSION:
        raise CorruptionError(f"pin file version {version} does not exist", path=path)
    if length > MAX_BODY or HEADER.size + length != len(raw):
        raise CorruptionError(f"pin file body of {length} bytes does not match the file "
                              f"({len(raw) - HEADER.size} bytes)", path=path)
    body = raw[HEADER.size:]
    if xxhash.xxh3_64_intdigest(body) != check:
        raise CorruptionError("pin file checksum mismatch", path=path)
    try:
        data = json.loads(body)
        items = data["pins"]
        if not isinstance(items, list) or len(items) > MAX_PINS:
            raise ValueError(f"pins must be a list of at most {MAX_PINS}")
        out = []
        for item in items:
            kwargs: dict[str, Any] = {}
            for name, kind in _FIELDS.items():
                value = item[name]
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise ValueError(f"field {name} is not {kind.__name__}")
                kwargs[name] = value
            out.append(PinRecord(**kwargs, seal=_seal(item, version)))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CorruptionError(f"pin file: {exc}", path=path) from None
    return out


def load(directory: str | os.PathLike[str]) -> list[PinRecord]:
    """Every pin recorded for the database in ``directory`` (expired ones too); [] when
    the file does not exist. Raises CorruptionError & co. for a damaged file,
    StorageError."""
    path = path_of(directory)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER.size + MAX_BODY + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    return decode(raw, path)


def _mirror(pins: list[PinRecord]) -> list[tuple[int, int]]:
    return [(max(1, p.txnid), p.expires_ns) for p in pins]


def seed(lockfile: LockFile, directory: str | os.PathLike[str]) -> None:
    """Mirror the recorded pins into a lock file being initialized (the caller is the
    database's only process). A damaged pin file pins nothing: it is logged and left for
    :func:`update` to replace (a resume then finds no pin and says so)."""
    try:
        pins = load(directory)
    except (CorruptionError, NotADatabaseError, VersionError) as exc:
        log.warning("ignoring the backup pins of %s: %s", directory, exc)
        pins = []
    lockfile.publish_pins(_mirror(pins))


def update(lockfile: LockFile, directory: str | os.PathLike[str],
           change: Callable[[list[PinRecord]], list[PinRecord]], *,
           timeout: float | None = 30.0, sync: bool = True) -> list[PinRecord]:
    """Apply ``change`` to the recorded pins under ``pins_lock``, write the file (removed
    when no pin is left) and mirror the result into the lock file; returns the new list.

    Expired pins are dropped before ``change`` sees the list (``change`` runs under the
    lock, so it may decide by the clock); when more than
    :data:`MAX_PINS` are left the oldest are dropped (they pin nothing resumable then). A
    damaged file counts as no pins (it is replaced). Raises LockedError, StorageError.
    """
    with lockfile.pins_lock.held(timeout):
        try:
            current = load(directory)
        except (CorruptionError, NotADatabaseError, VersionError) as exc:
            log.warning("replacing the damaged backup pins of %s: %s", directory, exc)
            current = []
        now = time.time_ns()
        pins = change([p for p in current if not p.expired(now)])
        pins = sorted(pins, key=lambda p: p.created_ns)[-MAX_PINS:]
        # The mirror holds a pin from before its record is written until after its record
        # is removed, so no writer reuses a page that a recorded pin needs, even if this
        # process dies between the two writes (a mirror entry without a record just holds
        # pages until the next update or its expiry).
        ids = {p.pin_id for p in pins}
        keep = pins + [p for p in current if p.pin_id not in ids and not p.expired(now)]
        lockfile.publish_pins(_mirror(keep[:MAX_PINS]))
        path = path_of(directory)
        if pins:
            fileio.atomic_write_file(path, encode(pins), sync=sync)
        elif current:
            fileio.unlink(path)
            if sync:
                fileio.fsync_dir(path.parent)
        lockfile.publish_pins(_mirror(pins))
        return pins


def add(lockfile: LockFile, directory: str | os.PathLike[str], pin: PinRecord) -> None:
    """Record ``pin``, replacing any pin of the same scope. The caller pins the same txnid
    with a live reader slot while this runs (see :meth:`LockFile.publish_pins`)."""
    update(lockfile, directory, lambda pins: [p for p in pins if p.scope != pin.scope] + [pin])


def remove(lockfile: LockFile, directory: str | os.PathLike[str], pin_id: str) -> bool:
    """Release the pin ``pin_id`` (a pin another backup replaced is left alone); returns
    True if it was recorded (and unexpired)."""
    found = False

    def change(pins: list[PinRecord]) -> list[PinRecord]:
        nonlocal found
        found = any(p.pin_id == pin_id for p in pins)
        return [p for p in pins if p.pin_id != pin_id]

    update(lockfile, directory, change)
    return found


def extend(pin: PinRecord, lease_ns: int, now_ns: int | None = None) -> PinRecord:
    """``pin`` with a lease of ``lease_ns`` from now. Pure."""
    now = time.time_ns() if now_ns is None else now_ns
    return replace(pin, expires_ns=now + lease_ns)


__all__ = ["DEFAULT_LEASE_NS", "FILE_NAME", "MAX_PINS", "PinRecord", "PinSeal", "add", "decode",
           "encode", "extend", "load", "path_of", "remove", "seed", "update"]
