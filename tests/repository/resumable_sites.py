"""Where the resumable-backup tests run: a database beside a repository that is a local
directory or an ``s3://`` prefix on the local SeaweedFS server, with the one API the tests
need for both (image bytes, uploads and their parts, leftovers, a copy of the state a kill
leaves).

Sizes per kind: a local repository takes 64 KiB parts, S3 at least 5 MiB, so an S3 site's
values are :attr:`Kind.scale` times larger (the images have about as many parts either way;
a "small" site keeps scale 1 where a test needs no parts, e.g. page-reuse counts).

A copy (:meth:`Site.copy`) is taken while the backup process is stopped (SIGSTOP): the
database directory as a kill would leave it (its files, page cache included), and the
repository: a local directory is copied whole (its ``uploads/`` too); an S3 prefix's objects
are copied server side into another prefix and the parts of each unfinished upload are
recorded (number, size, ETag). S3 has no call that copies an unfinished part, so
:meth:`Copy.finish` uploads those parts into the copy from the uninterrupted image's bytes
once the original process published it — and asserts that each ETag the store answers is
the one recorded, i.e. the stored part was byte for byte that part of the uninterrupted
image.
"""

from __future__ import annotations

import functools
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import lamina
from lamina.core import pins
from lamina.database import Database
from lamina.errors import NotFoundError
from lamina.repository import Repository
from lamina.repository import layout as L
from lamina.repository.s3multipart import MultipartUpload
from lamina.repository.s3storage import S3Storage
from lamina.repository.s3uploads import S3_MIN_PART_SIZE
from lamina.repository.upload_store import uploads_of
from lamina.repository.uploads import PartInfo, UploadStore

#: The passphrase of the encrypted sites (keys derived cheaply: CHEAP_KDF_ENV).
PASSPHRASE = b"resumable pw"


@dataclass(frozen=True)
class Kind:
    """A repository kind: its part size, the value scale of a "big" site, the range of
    chunk numbers (about 1 MiB of image each) at which a seeded stop lands in a big site's
    layer (before its last part; on S3 maybe with no part stored yet: the first ones may
    still be in flight), and the range for its full backup (9 S3 parts) that lands after
    at least one part is stored and before the last two: a writer keeps at most 4 parts
    in flight, so at chunk 28 (5 parts handed over) one is stored."""

    name: str
    part: int
    scale: int
    chunks: tuple[int, int]
    full_chunks: tuple[int, int]


KINDS = {"local": Kind("local", 64 * 1024, 1, (2, 6), (2, 4)),
         "s3": Kind("s3", S3_MIN_PART_SIZE, 24, (8, 22), (28, 38))}


def populate(db: Database, seed: int, n: int = 1500, scale: int = 1) -> None:
    """Btree keys with incompressible values (so the image has many parts) and archive
    rows; values are ``scale`` times the base sizes."""
    rng = random.Random(seed)
    if "t" not in {t.name for t in db.tables()}:
        db.create_table("t")
        db.create_table("ev", "archive")
    with db.write() as txn:
        table = txn.table("t")
        for _ in range(n):
            table.put(b"k%05d" % rng.randrange(4 * n),
                      rng.randbytes(rng.randrange(100, 1500) * scale))
    db.append_many("ev", [rng.randbytes(rng.randrange(50, 400)) for _ in range(n // 2)])


def content(path: Path) -> tuple[dict[bytes, bytes], list[bytes]]:
    """Every pair of table ``t`` and every row of ``ev`` of the database at ``path``."""
    with lamina.open(path, create=False, readonly=True) as db, db.read() as txn:
        return dict(txn.table("t").items()), [row for _i, row in db.scan("ev")]


@dataclass
class Site:
    """A database ``db`` and its repository at ``url`` (encrypted with
    :data:`PASSPHRASE` if ``encrypted``); ``scale`` sizes its values."""

    kind: Kind
    db: Path
    url: str
    encrypted: bool = False
    scale: int = 1

    @property
    def part(self) -> int:
        """The part size its backups use."""
        return self.kind.part

    @functools.cached_property
    def _repo(self) -> Repository:
        return Repository.open(self.url, passphrase=lambda: PASSPHRASE)

    def repo(self) -> Repository:
        """The repository, opened once (unlocked with the passphrase if encrypted)."""
        return self._repo

    def image(self, backup_id: str) -> bytes:
        """The published image's bytes."""
        return self.repo().storage.get_bytes(L.image_key(backup_id))

    def uploads(self) -> UploadStore:
        """The repository's upload store."""
        return uploads_of(self.repo().storage)

    def parts(self, name: str) -> dict[int, PartInfo]:
        """The parts stored in upload ``name`` ({} when there is none)."""
        try:
            return self.uploads().open(name).parts_present()
        except NotFoundError:
            return {}

    def leftovers(self) -> list[str]:
        """What unfinished uploads left in the repository: a local ``uploads/`` entry; on
        S3 an upload description or an unfinished multipart upload."""
        storage = self.repo().storage
        if isinstance(storage, S3Storage):
            return ([s.key for s in storage.list("uploads/")]
                    + [u.object_key for u in storage.unfinished_uploads()])
        where = Path(self.url) / L.UPLOADS_DIR
        return sorted(p.name for p in where.iterdir()) if where.exists() else []

    def total_parts(self, backup_id: str) -> int:
        """How many parts the published image has."""
        return -(-self.repo().storage.stat(L.image_key(backup_id)).size // self.part)

    def copy(self, root: Path) -> Copy:
        """The state a kill would leave now (the backup process is stopped): see the
        module doc. The copy's database is ``root/db``."""
        root.mkdir()
        shutil.copytree(self.db, root / "db", symlinks=True)
        storage = self.repo().storage
        if not isinstance(storage, S3Storage):
            shutil.copytree(self.url, root / "repo", symlinks=True)
            return Copy(Site(self.kind, root / "db", str(root / "repo"), self.encrypted,
                             self.scale), {})
        url = f"{self.url}-copy-{root.name}"
        copied = Site(self.kind, root / "db", url, self.encrypted, self.scale)
        target = S3Storage(type(storage.location).parse(url), client=storage.client)
        for stat in storage.list(""):
            if stat.key.startswith("locks/"):
                continue  # the stopped process's lock lease stays its own
            storage.client.copy_object(
                Bucket=target.bucket, Key=target.object_key(stat.key),
                CopySource={"Bucket": storage.bucket, "Key": storage.object_key(stat.key)})
        recorded = {info.name: self.parts(info.name) for info in self.uploads().list()}
        return Copy(copied, {name: parts for name, parts in recorded.items() if parts})


@dataclass
class Copy:
    """A :meth:`Site.copy`: the copied site, and per unfinished S3 upload the parts it
    held (to upload again by :meth:`finish`; empty for a local copy, copied whole)."""

    site: Site
    s3_parts: dict[str, dict[int, PartInfo]] = field(default_factory=dict)

    def parts_at_copy(self, name: str) -> dict[int, PartInfo]:
        """The parts upload ``name`` held when the copy was taken."""
        return self.s3_parts.get(name) or self.site.parts(name)

    def finish(self, name: str, image: bytes) -> None:
        """Give the copy's unfinished upload ``name`` the parts recorded for it, cut from
        ``image`` (the uninterrupted image); asserts the store answers the ETags recorded
        (those parts were these bytes). Nothing to do for a local copy."""
        parts = self.s3_parts.get(name)
        if not parts:
            return
        storage = self.site.repo().storage
        assert isinstance(storage, S3Storage)
        key = L.image_key(name)
        upload = MultipartUpload.start(storage.client, storage.bucket,
                                       storage.object_key(key), storage.object_url(key))
        part = self.site.part
        for number, info in sorted(parts.items()):
            data = image[(number - 1) * part:number * part]
            stored = upload.upload_part(number, data)
            assert (len(data), stored.etag.strip('"')) == (info.size, info.checksum), number
        assert self.site.parts(name) == parts


def make_site(kind: Kind, root: Path, url: str | None = None, *, big: bool = False,
              encrypted: bool = False) -> Site:
    """A database ``root/db`` with data and one full backup already in a new repository at
    ``url`` (default ``root/repo``), so a new backup is a layer unless asked for a full,
    and more data since; ``big`` scales the values by the kind's scale."""
    root.mkdir(parents=True, exist_ok=True)
    url = str(root / "repo") if url is None else url
    Repository.init(url, passphrase=PASSPHRASE if encrypted else None)
    scale = kind.scale if big else 1
    made = Site(kind, root / "db", url, encrypted, scale)
    with lamina.open(made.db) as db:
        populate(db, 1, scale=scale)
        made.repo().backup(db)
        populate(db, 2, scale=scale)
    return made


def pin_of(db: Path) -> pins.PinRecord:
    """The one pin of the database at ``db``."""
    [pin] = pins.load(db)
    return pin


__all__ = ["KINDS", "PASSPHRASE", "Copy", "Kind", "Site", "content", "make_site", "pin_of",
           "populate"]
