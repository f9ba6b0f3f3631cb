"""The repository index: one small record per image, and the chains they form.

The index is *derived data*: everything in it is read from the images (their key names the
backup id; header and manifest give the rest, via :func:`~lamina.backup.image_reader.read_info`).
:func:`load_index` trusts it only when it lists exactly the image objects present, each with
the size and change stamp recorded; otherwise (missing, corrupt, stale, or from another
version) it rebuilds it from the images and says why, in ``LoadedIndex.rebuilt``.

Format (``index.json``): canonical JSON ``{"magic", "version", "images": [record...],
"checksum"}`` where ``checksum`` is ``xxh3_64`` (hex) of the canonical JSON of ``images``;
records are sorted by backup id (fields: see :meth:`ImageRecord.to_json`).

Backup id vs image id: a backup's image is ``images/<backup-id>.lamina`` and the image
inside has the same id. ``prune`` may replace a layer by a *synthetic full* (its chain merged
into one image, the same validity point) under the same key and with the same image id
(``chain.combine_chain(image_id=...)``), so layers built on it still link to it and ``list``
and ``restore --id`` still find it; ``synthetic`` marks such an image (its VP facts name
the images it was combined from). Images from older repositories whose inner id differs
from the key are still found by either id.

Concurrency: callers hold the repository's index lock around load + save.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lamina.backup import image_format as F
from lamina.backup.image_reader import read_info
from lamina.errors import (
    ChainError,
    CorruptionError,
    DataError,
    NotFoundError,
    UsageError,
)
from lamina.repository import layout as L
from lamina.repository.storage import ObjectStat, Storage

#: Largest index accepted (about 2,000 bytes per record; a million images is 2 GB — far
#: beyond what a local repository holds, but a bound keeps a damaged file from hurting).
MAX_INDEX_SIZE = 1 << 30


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What the repository knows about one image, without reading its chunks.

    ``error`` is set (and the image fields are zero) when the image's header, manifest or
    footer cannot be read: the image stays listed, as damaged, and is never deleted by
    ``prune`` unless the policy drops it.
    """

    backup_id: uuid.UUID
    image_id: uuid.UUID
    database_id: uuid.UUID
    kind: str  # "full" or "layer"
    base_image_id: uuid.UUID | None
    base_vp_seq: int
    vp_seq: int
    vp_wall_ns: int
    created_ns: int
    size: int
    mtime_ns: int
    error: str | None = None
    #: An image made from several: a synthetic full made by ``prune`` from a chain, or a
    #: layer merged by ``merge_layers`` (standing for this backup).
    synthetic: bool = False
    #: The source database's incarnation (which history of the database it belongs to).
    incarnation: uuid.UUID = F.ZERO_UUID

    @property
    def key(self) -> str:
        """The image's storage key."""
        return L.image_key(self.backup_id)

    @property
    def is_layer(self) -> bool:
        """True for an incremental image (it needs its base)."""
        return self.kind == "layer"

    def to_json(self) -> dict[str, Any]:
        """The record as stored in the index (and printed by ``lamina list --json``)."""
        return {"backup_id": str(self.backup_id), "image_id": str(self.image_id),
                "database_id": str(self.database_id), "kind": self.kind,
                "base_image_id": None if self.base_image_id is None else str(self.base_image_id),
                "base_vp_seq": self.base_vp_seq, "vp_seq": self.vp_seq,
                "vp_wall_ns": self.vp_wall_ns, "created_ns": self.created_ns,
                "size": self.size, "mtime_ns": self.mtime_ns, "error": self.error,
                "synthetic": self.synthetic, "incarnation": str(self.incarnation)}

    @classmethod
    def from_json(cls, obj: Any) -> ImageRecord:
        """Parse a stored record. Raises ValueError/KeyError/TypeError when malformed."""
        if not isinstance(obj, dict):
            raise TypeError("record is not an object")
        kind = obj["kind"]
        if kind not in ("full", "layer"):
            raise ValueError(f"kind {kind!r}")
        base = obj["base_image_id"]
        error = obj["error"]
        if error is not None and not isinstance(error, str):
            raise TypeError("error is not a string")
        synthetic = obj.get("synthetic", False)
        if not isinstance(synthetic, bool):
            raise TypeError("synthetic is not a boolean")
        return cls(uuid.UUID(obj["backup_id"]), uuid.UUID(obj["image_id"]),
                   uuid.UUID(obj["database_id"]), kind,
                   None if base is None else uuid.UUID(base), _int(obj["base_vp_seq"]),
                   _int(obj["vp_seq"]), _int(obj["vp_wall_ns"]), _int(obj["created_ns"]),
                   _int(obj["size"]), _int(obj["mtime_ns"]), error, synthetic,
                   uuid.UUID(obj.get("incarnation", str(F.ZERO_UUID))))


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{value!r} is not a non-negative integer")
    return value


def record_from_image(storage: Storage, stat: ObjectStat) -> ImageRecord:
    """Read one image's header and trailer (``read_info``) into a record.

    A damaged image gives a record with ``error`` set instead of raising; StorageError
    (the OS refused the read) propagates.
    """
    backup_id = L.backup_id_of_key(stat.key)
    assert backup_id is not None, stat.key
    try:
        info = read_info(storage.image(stat.key))
    except (DataError, NotFoundError) as exc:
        return ImageRecord(backup_id, backup_id, F.ZERO_UUID, "full", None, 0, 0, 0, 0,
                           stat.size, stat.mtime_ns, error=str(exc))
    m = info.manifest
    layer = m.kind == F.ImageKind.LAYER
    return ImageRecord(backup_id, info.header.image_id, info.header.database_id,
                       "layer" if layer else "full", m.base_image_id if layer else None,
                       m.base_vp_seq, m.vp.commit_seq, m.vp.wall_ns, info.header.created_ns,
                       info.size, stat.mtime_ns,
                       synthetic=any("combined_from" in facts for facts in m.vp.drivers),
                       incarnation=info.header.incarnation)


class Index:
    """The images of a repository by backup id, and the chains they form (immutable)."""

    def __init__(self, records: Iterable[ImageRecord]) -> None:
        self.records: dict[uuid.UUID, ImageRecord] = {r.backup_id: r for r in records}
        # A layer names its base by the base's image id (as chain.order_chain links them);
        # that differs from the backup id for a synthetic full.
        self._by_image = {r.image_id: r for r in self.records.values() if r.error is None}

    def __len__(self) -> int:
        return len(self.records)

    def sorted(self) -> list[ImageRecord]:
        """Every record, oldest validity point first (then by id, for determinism)."""
        return sorted(self.records.values(),
                      key=lambda r: (r.vp_wall_ns, r.vp_seq, str(r.backup_id)))

    def to_bytes(self) -> bytes:
        """The index file's bytes."""
        images = [r.to_json() for r in sorted(self.records.values(),
                                              key=lambda r: str(r.backup_id))]
        return L.canonical_json({"magic": L.INDEX_MAGIC, "version": L.INDEX_VERSION,
                                 "images": images, "checksum": L.checksum(images)}) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Index:
        """Parse index bytes. Raises CorruptionError naming what is wrong (any version
        other than this build's counts: the index is rebuilt, never migrated)."""
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptionError(f"index is not JSON: {exc}", path=L.INDEX_KEY) from exc
        if not isinstance(obj, dict) or obj.get("magic") != L.INDEX_MAGIC:
            raise CorruptionError("index has no magic", path=L.INDEX_KEY)
        if obj.get("version") != L.INDEX_VERSION:
            raise CorruptionError(f"index version {obj.get('version')!r}", path=L.INDEX_KEY)
        images = obj.get("images")
        if not isinstance(images, list) or obj.get("checksum") != L.checksum(images):
            raise CorruptionError("index checksum mismatch", path=L.INDEX_KEY)
        try:
            records = [ImageRecord.from_json(r) for r in images]
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptionError(f"index record: {exc}", path=L.INDEX_KEY) from exc
        return cls(records)

    def with_record(self, record: ImageRecord) -> Index:
        """A new index with ``record`` added (or replacing the one of its backup id)."""
        return Index([*(r for r in self.records.values() if r.backup_id != record.backup_id),
                      record])

    # ------------------------------------------------------------------ lookups
    def find(self, text: str) -> ImageRecord:
        """The backup named by ``text``: a backup id, an image id, or a unique prefix (at
        least 4 characters) of a backup id. Raises NotFoundError, UsageError (ambiguous)."""
        text = text.strip().lower()
        try:
            wanted: uuid.UUID | None = uuid.UUID(text)
        except ValueError:
            wanted = None
        if wanted is not None:
            if wanted in self.records:
                return self.records[wanted]
            if wanted in self._by_image:
                return self._by_image[wanted]
            raise NotFoundError(f"no backup {text} in the repository")
        if len(text) < 4:
            raise UsageError(f"backup id prefix {text!r} is too short (4 characters at least)")
        hits = [r for r in self.records.values() if str(r.backup_id).startswith(text)]
        if not hits:
            raise NotFoundError(f"no backup {text} in the repository")
        if len(hits) > 1:
            raise UsageError(f"backup id prefix {text!r} is ambiguous ({len(hits)} backups)")
        return hits[0]

    def base_of(self, record: ImageRecord) -> ImageRecord | None:
        """The image a layer builds on, or None (a full, or a base missing from here)."""
        if record.base_image_id is None:
            return None
        return self._by_image.get(record.base_image_id)

    def chain(self, record: ImageRecord) -> list[ImageRecord]:
        """The images ``record`` needs to be restored: its full image, then each layer up
        to ``record`` itself (oldest first).

        Raises CorruptionError (an image of the chain is damaged) or ChainError (a base
        missing from the repository, or bases forming a loop).
        """
        chain = [record]
        seen = {record.backup_id}
        current = record
        while True:
            if current.error is not None:
                raise CorruptionError(f"backup {current.backup_id} is damaged (unreadable: "
                                      f"{current.error})")
            if not current.is_layer:
                break
            base = self.base_of(current)
            named = (None if base is not None or current.base_image_id is None
                     else self.records.get(current.base_image_id))
            if named is not None and named.error is not None:
                raise CorruptionError(f"backup {record.backup_id}: layer {current.backup_id} "
                                      f"builds on image {named.backup_id}, which is damaged "
                                      f"(unreadable: {named.error})")
            if base is None:
                raise ChainError(f"backup {record.backup_id}: layer {current.backup_id} "
                                 f"builds on {current.base_image_id}, which is missing from "
                                 f"the repository")
            if base.backup_id in seen:
                raise ChainError(f"backup {record.backup_id}: the chain loops at "
                                 f"{base.backup_id}")
            seen.add(base.backup_id)
            chain.append(base)
            current = base
        chain.reverse()
        return chain

    def chain_or_none(self, record: ImageRecord) -> list[ImageRecord] | None:
        """:meth:`chain`, or None when it does not resolve."""
        try:
            return self.chain(record)
        except (ChainError, CorruptionError):
            return None

    def children(self) -> dict[uuid.UUID, list[ImageRecord]]:
        """For every backup id, the layers that build directly on it."""
        out: dict[uuid.UUID, list[ImageRecord]] = {}
        for r in self.records.values():
            base = self.base_of(r)
            if base is not None:
                out.setdefault(base.backup_id, []).append(r)
        return out


@dataclass(frozen=True, slots=True)
class LoadedIndex:
    """An index that agrees with the images, and why it was rebuilt (None if it was not)."""

    index: Index
    rebuilt: str | None = None


def _listing(storage: Storage) -> dict[str, ObjectStat]:
    return {s.key: s for s in storage.list(L.IMAGES_PREFIX)
            if L.backup_id_of_key(s.key) is not None}


def _disagreement(index: Index, listing: dict[str, ObjectStat]) -> str | None:
    recorded = {r.key: r for r in index.records.values()}
    gone = sorted(set(recorded) - set(listing))
    new = sorted(set(listing) - set(recorded))
    changed = sorted(k for k in set(recorded) & set(listing)
                     if (recorded[k].size, recorded[k].mtime_ns)
                     != (listing[k].size, listing[k].mtime_ns))
    parts = []
    if gone:
        parts.append(f"{len(gone)} indexed image(s) are gone")
    if new:
        parts.append(f"{len(new)} image(s) are not indexed")
    if changed:
        parts.append(f"{len(changed)} image(s) changed")
    return ", ".join(parts) or None


def rebuild(storage: Storage, listing: dict[str, ObjectStat] | None = None,
            reuse: Index | None = None) -> Index:
    """An index read from the images themselves (``reuse``: records still matching their
    object's size and stamp are kept, so only new or changed images are read)."""
    listing = _listing(storage) if listing is None else listing
    old = {} if reuse is None else {r.key: r for r in reuse.records.values()}
    records = []
    for key, stat in listing.items():
        prev = old.get(key)
        if prev is not None and (prev.size, prev.mtime_ns) == (stat.size, stat.mtime_ns):
            records.append(prev)
        else:
            records.append(record_from_image(storage, stat))
    return Index(records)


def load_index(storage: Storage, *, save: bool = True) -> LoadedIndex:
    """The index, checked against the image objects; rebuilt (and saved, unless ``save`` is
    False) when missing, unreadable or disagreeing with them.

    Raises StorageError. The caller holds the index lock.
    """
    listing = _listing(storage)
    reason: str | None
    index: Index | None = None
    try:
        data = storage.get_bytes(L.INDEX_KEY, limit=MAX_INDEX_SIZE)
    except NotFoundError:
        reason = "index missing"
    else:
        try:
            if len(data) > MAX_INDEX_SIZE:
                raise CorruptionError("index too large", path=L.INDEX_KEY)
            index = Index.from_bytes(data)
            reason = _disagreement(index, listing)
        except CorruptionError as exc:
            reason = f"index unreadable ({exc.what})"
    if reason is None and index is not None:
        return LoadedIndex(index)
    fresh = rebuild(storage, listing, reuse=index)
    if save:
        save_index(storage, fresh)
    return LoadedIndex(fresh, f"{reason}; rebuilt from {len(fresh)} image(s)")


def save_index(storage: Storage, index: Index) -> None:
    """Publish ``index`` (atomic put). The caller holds the index lock."""
    storage.put_bytes(L.INDEX_KEY, index.to_bytes())


def chain_size(chain: Sequence[ImageRecord]) -> int:
    """Bytes a restore of ``chain`` reads."""
    return sum(r.size for r in chain)
