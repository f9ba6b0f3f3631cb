"""The ``LAMINA`` identity file: marks a directory as a Lamina database and names it.

It holds the database id (a UUID that backups record as their source), the creation time,
and — for a database made by a restore — where it came from. It is written once at creation
(and once by a restore), always atomically, and is the last file a creation writes, so a
directory without it is not (yet) a database. Format: docs/format.md, "Identity file".
"""

from __future__ import annotations

import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from lamina.core import fileio
from lamina.errors import CorruptionError, NotADatabaseError, VersionError, storage_error

FILE_NAME = "LAMINA"
MAGIC = b"LAMINADB"
VERSION = 1
# magic[8], version u32, flags u32, db_id[16], created_ns u64,
# restored_from_image[16], restored_vp_seq u64, restored_vp_time_ns u64,
# incarnation[16], origin_incarnation[16], checksum u64
_LAYOUT = struct.Struct("<8sII16sQ16sQQ16s16s")
_CHECKSUM = struct.Struct("<Q")
SIZE = _LAYOUT.size + _CHECKSUM.size  # 112
_NIL = bytes(16)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a database is, and which history it has.

    ``db_id`` names the database and survives a restore; ``incarnation`` names one history
    of it: new at creation and at every restore (a restored copy and its source diverge
    from the restore's VP on). ``restored_from`` (None unless a restore created it) is the
    image, ``restored_vp_seq`` its VP, and ``origin_incarnation`` the incarnation that image
    was taken from: this history shares that one's up to that seq.
    """

    db_id: uuid.UUID
    created_ns: int
    restored_from: uuid.UUID | None = None
    restored_vp_seq: int = 0
    restored_vp_time_ns: int = 0
    incarnation: uuid.UUID = field(default_factory=uuid.uuid4)
    origin_incarnation: uuid.UUID | None = None

    @classmethod
    def new(cls) -> Identity:
        """A fresh identity with a random id and incarnation, created now."""
        return cls(uuid.uuid4(), time.time_ns())

    def shares_history_with(self, incarnation: uuid.UUID, vp_seq: int) -> bool:
        """True if the state of incarnation ``incarnation`` at commit seq ``vp_seq`` is part
        of this database's own history (a base a layer of it may build on)."""
        if incarnation == self.incarnation:
            return True
        return incarnation == self.origin_incarnation and vp_seq <= self.restored_vp_seq

    def encode(self) -> bytes:
        """The file's bytes."""
        body = _LAYOUT.pack(MAGIC, VERSION, 0, self.db_id.bytes, self.created_ns,
                            self.restored_from.bytes if self.restored_from else _NIL,
                            self.restored_vp_seq, self.restored_vp_time_ns,
                            self.incarnation.bytes,
                            self.origin_incarnation.bytes if self.origin_incarnation else _NIL)
        return body + _CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))

    @classmethod
    def decode(cls, data: bytes, path: object = FILE_NAME) -> Identity:
        """Parse and validate (magic, then version, then checksum)."""
        if len(data) < 8 or data[:8] != MAGIC:
            raise NotADatabaseError(f"{path} is not a Lamina identity file (bad magic)")
        if len(data) < 12:
            raise CorruptionError("identity file truncated", path=path)
        version = struct.unpack_from("<I", data, 8)[0]
        if version > VERSION:
            raise VersionError(f"{path} is database format version {version}; "
                               f"this build knows up to {VERSION}")
        if len(data) != SIZE:
            raise CorruptionError(f"identity file is {len(data)} bytes, expected {SIZE}",
                                  path=path)
        (checksum,) = _CHECKSUM.unpack_from(data, _LAYOUT.size)
        if checksum != xxhash.xxh3_64_intdigest(data[: _LAYOUT.size]):
            raise CorruptionError("identity file checksum mismatch", path=path)
        (_m, _v, _flags, db_id, created, restored, vp_seq, vp_time, incarnation,
         origin) = _LAYOUT.unpack_from(data)
        return cls(uuid.UUID(bytes=db_id), created,
                   None if restored == _NIL else uuid.UUID(bytes=restored), vp_seq, vp_time,
                   uuid.UUID(bytes=incarnation),
                   None if origin == _NIL else uuid.UUID(bytes=origin))

    @classmethod
    def read(cls, directory: Path) -> Identity:
        """Read ``directory/LAMINA``; FileNotFoundError if absent, NotADatabaseError if it is
        not a file, StorageError if the OS refuses."""
        path = directory / FILE_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise
        except IsADirectoryError as exc:
            raise NotADatabaseError(f"{path} is a directory, not a Lamina identity file") \
                from exc
        except OSError as exc:
            raise storage_error(exc, "read", path) from exc
        return cls.decode(data, path)

    def write(self, directory: Path, *, sync: bool = True) -> None:
        """Atomically (re)write ``directory/LAMINA``."""
        fileio.atomic_write_file(directory / FILE_NAME, self.encode(), sync=sync)
