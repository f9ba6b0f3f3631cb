"""Read a backup image: front to back (any stream, even stdin), or header + footer +
manifest only (:func:`read_info`, seekable files).

An image is found by an :data:`ImageLocation`: a local path, or an :class:`ImageSource`
(an image in a repository's object store, opened as a seekable stream of ranged reads).

Trust nothing: every length is used only after the checksum covering it passed, and is
capped (:data:`~lamina.backup.image_format.MAX_CHUNK_SIZE` and friends), so hostile input
cannot make the reader allocate much or loop long. Everything that goes wrong is raised as
a :mod:`lamina.errors` class: CorruptionError naming stream/chunk/offset, NotADatabaseError,
VersionError, UnsupportedError, StorageError (OS read errors). Nothing else escapes.

Not thread-safe; a reader is used by one thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

from lamina.backup import image_format
from lamina.backup.codec import decompress
from lamina.backup.sealing import ImageOpener, sealing_keyring
from lamina.core.crypto.keyring import Keyring
from lamina.core.crypto.sealing import same
from lamina.errors import AuthenticationError, CorruptionError, NotFoundError, storage_error


@runtime_checkable
class ImageSource(Protocol):
    """An image that need not be a local file (an object in a remote store).

    ``name`` is its short name for messages (like a path's), ``str()`` its full name;
    :meth:`open_image` returns a new readable, seekable binary stream of it (the caller
    closes it). Safe to use from several threads (each opens its own stream).
    """

    @property
    def name(self) -> str:
        """The image's short name (the last component of its key)."""
        ...

    def open_image(self) -> BinaryIO:
        """A new seekable stream of the image. Raises NotFoundError, StorageError."""
        ...


#: Where an image is: a local path, or an :class:`ImageSource`.
ImageLocation = str | os.PathLike[str] | ImageSource


def location(path: ImageLocation) -> Path | ImageSource:
    """``path`` as a :class:`~pathlib.Path`, or the :class:`ImageSource` itself."""
    return path if isinstance(path, ImageSource) else Path(path)


@contextlib.contextmanager
def open_image_file(path: ImageLocation) -> Iterator[BinaryIO]:
    """Open the image at ``path`` (a file, or an :class:`ImageSource`) for reading (closed
    on exit).

    Raises NotFoundError (no such file) or StorageError (the OS refused), one line each.
    """
    if isinstance(path, ImageSource):
        with path.open_image() as stream:
            yield stream
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        raise NotFoundError(f"no backup image {path}") from None
    except OSError as exc:
        raise storage_error(exc, "open", path) from exc
    with f:
        yield f


class ReadableStream(Protocol):
    """Any readable, blocking binary stream: a file, ``sys.stdin.buffer``, a pipe, a raw
    stream. ``read`` may return fewer bytes than asked (the reader loops); ``b""`` or None
    means end of input."""

    def read(self, size: int = -1, /) -> bytes | None:
        """Up to ``size`` bytes; ``b""`` at end of stream."""
        ...


class _Source:
    """Exact reads from a binary stream, tracking the offset and hashing every byte."""

    def __init__(self, stream: ReadableStream, path: object) -> None:
        self.stream = stream
        self.path = path
        self.offset = 0
        self.hasher: Any = image_format.data_hasher()  # a sealed image's: its Poly1305

    def _read(self, n: int) -> bytes:
        try:
            return self.stream.read(n) or b""
        except OSError as exc:
            raise storage_error(exc, "read", self.path or "input stream") from exc

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes, or CorruptionError "truncated" naming ``what`` and offset."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            part = self._read(n - got)
            if not part:
                raise CorruptionError(f"image truncated: {what} needs {n} bytes, "
                                      f"{got} left", path=self.path,
                                      where=f"offset {self.offset}")
            parts.append(part)
            got += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.hasher.update(data)
        self.offset += n
        return data

    def at_eof(self) -> bool:
        """True if nothing follows (consumes one byte otherwise)."""
        return not self._read(1)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One verified chunk: its header, its raw (decompressed) bytes, its image offset.
    (A sealed image read with ``decrypt=False``: ``data`` is the stored ciphertext.)"""

    header: image_format.ChunkHeader
    data: bytes
    offset: int

    @property
    def stream(self) -> int:
        """Global stream number."""
        return self.header.stream

    @property
    def seq(self) -> int:
        """Sequence number within the stream, from 0."""
        return self.header.seq

    @property
    def last(self) -> bool:
        """True on the stream's final chunk."""
        return self.header.last




def check_manifest(header: image_format.ImageHeader, catalog: image_format.ImageCatalog,
                   manifest: image_format.Manifest, offset: int, path: object = None) -> None:
    """Cross-check a decoded manifest against the header and catalog (CorruptionError)."""
    def bad(what: str) -> CorruptionError:
        return CorruptionError(f"manifest: {what}", path=path,
                               where=f"manifest at offset {offset}")

    if manifest.image_id != header.image_id:
        raise bad("image id differs from the header's")
    if manifest.kind != header.kind:
        raise bad("image kind differs from the header's")
    if len(manifest.streams) != catalog.stream_count:
        raise bad(f"{len(manifest.streams)} streams, the catalog has {catalog.stream_count}")
    if len(manifest.vp.drivers) != len(catalog.drivers):
        raise bad("VP facts do not match the catalog's drivers")
    is_layer = manifest.kind == image_format.ImageKind.LAYER
    if is_layer != (manifest.base_image_id != image_format.ZERO_UUID) or (
            not is_layer and manifest.base_vp_seq):
        raise bad("base image fields do not match the image kind")
    if sum(s.chunks for s in manifest.streams) != manifest.chunk_count:
        raise bad("chunk count differs from the streams' sum")
    tag = image_format.SEAL_TAG_SIZE if header.sealed else 0
    for i, s in enumerate(manifest.streams):
        if (s.stored_bytes > s.raw_bytes + tag * s.chunks
                or s.raw_bytes > s.chunks * image_format.MAX_CHUNK_SIZE):
            raise bad(f"stream {i} sizes are impossible")


class ImageReader:
    """Reads an image front to back from ``source`` (any readable binary stream).

    The constructor reads and validates header and catalog. :meth:`chunks` then yields every
    chunk, verified (header and payload checksums, sequence, last flags, decompression);
    it ends only after the manifest, every stream hash, the footer and the whole-image hash
    were verified and nothing follows the footer; then :attr:`manifest` is set. Any failure
    raises a lamina error (see the module doc) at the point where it is found.

    A sealed image (:mod:`lamina.backup.sealing`) is opened with a key from ``keyring``
    (default: the current one). ``decrypt`` (the default) needs the key
    (AuthenticationError at construction without it), opens every chunk (its AES-GCM tag)
    and checks the manifest MAC; the whole-image MAC is then redundant and skipped. With
    ``decrypt=False`` nothing is decrypted: with the key, the manifest MAC and the
    whole-image MAC prove every stored byte (:attr:`authenticated` True); without it only
    the checksums are checked (:attr:`authenticated` False). When the keyring requires
    sealed images (a repository's), a plaintext image, or one sealed under a key it does not
    hold, is refused (AuthenticationError).
    """

    def __init__(self, source: ReadableStream, *, path: object = None,
                 keyring: Keyring | None = None, decrypt: bool = True) -> None:
        self.path = path
        self._src = _Source(source, path)
        raw_header = self._src.read_exact(image_format.HEADER_SIZE, "header")
        self.header = image_format.decode_header(raw_header, path)
        metadata = [raw_header]
        self._opener: ImageOpener | None = None
        self._decrypt = decrypt
        ring = sealing_keyring(keyring)
        if self.header.sealed:
            offset = self._src.offset
            head = self._src.read_exact(image_format.SEAL_HEAD_SIZE, "crypto block")
            block, length, checksum = image_format.decode_seal_head(head, offset, path)
            wrapped = self._src.read_exact(length, "crypto block key")
            if image_format.xxh3(wrapped) != checksum:
                raise CorruptionError("crypto block key checksum mismatch", path=path,
                                      where=f"crypto block, offset {offset}")
            metadata.append(head + wrapped)
            self._opener = ImageOpener(self.header, image_format.SealBlock(
                block.key_id, block.salt, wrapped), ring, path)
            if ring is not None and ring.required is not None \
                    and not self._opener.authenticated:
                raise AuthenticationError(f"authentication failed: {path or 'image'} is "
                                          f"encrypted under another key ({ring.required})")
            if decrypt:
                self._opener.require("reading its data")
            # Decrypting, every chunk's tag (its bytes, header fields and position) and the
            # manifest MAC (the metadata, each stream's chunks and sizes) cover every byte
            # but the footer's own MAC: the whole-image Poly1305 would add nothing but time.
            self._src.hasher = self._opener.image_mac(skip=decrypt)
            self._src.hasher.update(b"".join(metadata))
        elif ring is not None and ring.required is not None:
            raise AuthenticationError(f"authentication failed: {path or 'image'} is not "
                                      f"encrypted, but {ring.required}")
        offset = self._src.offset
        head = self._src.read_exact(image_format.CATALOG_HEAD_SIZE, "catalog head")
        drivers, tables, length, checksum = image_format.decode_catalog_head(head, offset, path)
        payload = self._src.read_exact(length, "catalog")
        self.catalog = image_format.decode_catalog_payload(payload, drivers, tables, checksum,
                                                           offset, path)
        metadata.append(head + payload)
        self._metadata = b"".join(metadata)
        self.manifest: image_format.Manifest | None = None
        self.footer: image_format.Footer | None = None
        self.size: int | None = None
        self._started = False

    @property
    def offset(self) -> int:
        """Bytes consumed so far."""
        return self._src.offset

    @property
    def authenticated(self) -> bool:
        """True for a sealed image whose key is at hand (its MACs are checked)."""
        return self._opener is not None and self._opener.authenticated

    def decode_manifest(self, raw: bytes, offset: int) -> image_format.Manifest:
        """Decode and cross-check the manifest ``raw`` found at ``offset``; a sealed
        image's MAC is checked when the key is at hand."""
        opener = self._opener
        manifest = image_format.decode_manifest(
            raw, offset, self.path, sealed=opener is not None,
            mac=None if opener is None else opener.manifest_mac(self._metadata))
        check_manifest(self.header, self.catalog, manifest, offset, self.path)
        return manifest

    def chunks(self) -> Iterator[Chunk]:
        """Yield every chunk in image order; verify the trailer at the end. Single use."""
        if self._started:
            raise RuntimeError("ImageReader.chunks() can be iterated only once")
        self._started = True
        src, path = self._src, self.path
        tallies = [image_format.StreamTally() for _ in range(self.catalog.stream_count)]
        names = self.catalog.stream_names()
        while True:
            offset = src.offset
            tag = src.read_exact(4, "chunk or manifest")
            if tag == image_format.MANIFEST_MAGIC:
                self._finish(tag, offset, tallies, names)
                return
            if tag != image_format.CHUNK_MAGIC:
                raise CorruptionError("expected a chunk or the manifest", path=path,
                                      where=f"offset {offset}")
            head = image_format.decode_chunk_header(
                tag + src.read_exact(image_format.CHUNK_HEAD_SIZE - 4, "chunk header"), offset,
                path)
            where = f"stream {head.stream} chunk {head.seq} at offset {offset}"
            if head.stream >= len(tallies):
                raise CorruptionError("chunk of a stream not in the catalog", path=path,
                                      where=where)
            tally = tallies[head.stream]
            if tally.closed:
                raise CorruptionError(f"chunk after the last chunk of {names[head.stream]}",
                                      path=path, where=where)
            if head.seq != tally.seq:
                raise CorruptionError(f"sequence gap: expected chunk {tally.seq}", path=path,
                                      where=where)
            if head.sealed != self.header.sealed:
                raise CorruptionError("chunk sealed flag differs from the image's", path=path,
                                      where=where)
            payload = src.read_exact(head.stored_length, "chunk payload")
            if image_format.xxh3(payload) != head.payload_checksum:
                raise CorruptionError("chunk payload checksum mismatch", path=path, where=where)
            opener = self._opener
            if opener is None:
                data = decompress(head.codec, payload, head.raw_length, path=path, where=where)
            elif self._decrypt:
                data = decompress(head.codec, opener.open_chunk(head, payload, where),
                                  head.raw_length, path=path, where=where)
            else:
                opener.skip_chunk()
                data = payload
            tally.seq += 1
            tally.raw += head.raw_length
            tally.stored += len(payload)
            tally.closed = head.last
            tally.hasher.update(data if opener is None else payload)
            yield Chunk(head, data, offset)

    def _finish(self, tag: bytes, offset: int, tallies: list[image_format.StreamTally],
                names: dict[int, str]) -> None:
        src, path = self._src, self.path
        head = tag + src.read_exact(image_format.MANIFEST_HEAD_SIZE - 4, "manifest head")
        _streams, length = image_format.decode_manifest_head(head, offset, path)
        raw = head + src.read_exact(length - image_format.MANIFEST_HEAD_SIZE, "manifest")
        manifest = self.decode_manifest(raw, offset)
        image_hash = src.hasher.digest()  # every byte before the footer (sealed: a MAC)
        footer_offset = src.offset
        footer = image_format.decode_footer(src.read_exact(image_format.FOOTER_SIZE, "footer"),
                                            footer_offset, path)
        if footer.manifest_offset != offset or footer.manifest_length != length:
            raise CorruptionError("footer does not point at the manifest", path=path,
                                  where=f"footer at offset {footer_offset}")
        if self._opener is not None:
            if image_hash is not None and not same(footer.image_hash, image_hash):
                raise AuthenticationError(f"authentication failed: whole-image MAC mismatch "
                                          f"({path or 'image'}, footer at offset "
                                          f"{footer_offset}): the image was tampered with")
        elif footer.image_hash != image_hash:
            raise CorruptionError("whole-image hash mismatch", path=path,
                                  where=f"footer at offset {footer_offset}")
        if not src.at_eof():
            raise CorruptionError("bytes after the footer", path=path,
                                  where=f"offset {src.offset}")
        for i, tally in enumerate(tallies):
            if tally.seq and not tally.closed:
                raise CorruptionError("stream has no last chunk", path=path,
                                      where=f"stream {i} ({names[i]})")
        for i, (tally, stats) in enumerate(zip(tallies, manifest.streams, strict=True)):
            where = f"stream {i} ({names[i]})"
            found = image_format.StreamStats(tally.raw, tally.stored, tally.seq,
                                             tally.hasher.digest())
            if found != stats:
                raise CorruptionError("stream size or hash differs from the manifest",
                                      path=path, where=where)
        self.manifest = manifest
        self.footer = footer
        self.size = src.offset


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """Header, catalog and manifest of an image, read without reading its chunks."""

    path: Path | ImageSource
    size: int
    header: image_format.ImageHeader
    catalog: image_format.ImageCatalog
    manifest: image_format.Manifest
    #: A sealed image whose manifest MAC was checked with its key.
    authenticated: bool = False

    @property
    def vp(self) -> image_format.ValidityPoint:
        """The image's validity point."""
        return self.manifest.vp

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (for ``lamina info --json``): of a sealed image read
        without its key, only what is not secret (:func:`public_summary`)."""
        if self.header.sealed and not self.authenticated:
            return public_summary(self.header, self.manifest, self.size)
        return image_summary(self.header, self.catalog, self.manifest, self.size,
                             self.authenticated)


#: What ``info`` shows of a sealed image without its key: nothing about the tables.
PUBLIC_FIELDS = ("image_id", "database_id", "created_ns", "lamina_version", "kind", "size",
                 "base_image_id", "base_vp_seq", "vp", "stored_bytes", "chunks", "encrypted",
                 "authenticated")


def public_summary(header: image_format.ImageHeader, manifest: image_format.Manifest,
                   size: int) -> dict[str, Any]:
    """The non-secret part of :func:`image_summary` (ids, kind, times, stored sizes),
    for a sealed image read without its key (unauthenticated)."""
    full = image_summary(header, image_format.ImageCatalog((), ()), manifest, size, False)
    return {k: full[k] for k in PUBLIC_FIELDS}


def image_summary(header: image_format.ImageHeader, catalog: image_format.ImageCatalog,
                  manifest: image_format.Manifest, size: int,
                  authenticated: bool = False) -> dict[str, Any]:
    """A JSON-ready description of an image (shared by ``info`` and ``verify`` reports);
    ``authenticated``: a sealed image's MACs were checked."""
    streams = manifest.streams
    drivers = [{"name": d.name, "version": d.version, "kind": d.kind.label,
                "common_stream": d.common_stream, "vp_info": dict(manifest.vp.drivers[i])}
               for i, d in enumerate(catalog.drivers)]
    tables = [{"name": t.name, "engine": t.engine, "table_id": t.table_id,
               "stream": t.stream, "driver": catalog.drivers[t.driver].name,
               "raw_bytes": streams[t.stream].raw_bytes,
               "stored_bytes": streams[t.stream].stored_bytes,
               "chunks": streams[t.stream].chunks, "hash": streams[t.stream].hash.hex()}
              for t in catalog.tables]
    return {
        "image_id": str(header.image_id), "database_id": str(header.database_id),
        "created_ns": header.created_ns, "lamina_version": header.lamina_version,
        "kind": manifest.kind.name.lower(), "size": size,
        "base_image_id": (str(manifest.base_image_id)
                          if manifest.kind == image_format.ImageKind.LAYER else None),
        "base_vp_seq": manifest.base_vp_seq,
        "root_hash": manifest.root_hash.hex(),
        "vp": {"commit_seq": manifest.vp.commit_seq, "wall_ns": manifest.vp.wall_ns},
        "blocker_held_ns": manifest.blocker_held_ns,
        "raw_bytes": sum(s.raw_bytes for s in streams),
        "stored_bytes": sum(s.stored_bytes for s in streams),
        "chunks": manifest.chunk_count, "drivers": drivers, "tables": tables,
        "encrypted": header.sealed, "authenticated": header.sealed and authenticated,
    }


def read_info(path: ImageLocation, *, keyring: Keyring | None = None) -> ImageInfo:
    """Read header, catalog, footer and manifest of the image at ``path`` (a file or an
    :class:`ImageSource`; seeks; does not read chunks, so it does not prove the data: use
    ``verify_image`` for that).

    A sealed image's manifest MAC (over header, crypto block, catalog and manifest) is
    checked when its key is in ``keyring`` (default: the current one): ``authenticated``;
    without the key, the metadata is read unauthenticated (AuthenticationError only for a
    wrong passphrase or a MAC mismatch).

    Raises NotFoundError if there is no such image, StorageError for other I/O errors, and
    CorruptionError / NotADatabaseError / VersionError / UnsupportedError for bad images.
    """
    p = location(path)
    with open_image_file(p) as f:
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
        except OSError as exc:
            raise storage_error(exc, "stat", p) from exc
        reader = ImageReader(f, path=p, keyring=keyring, decrypt=False)
        data_start = reader.offset
        footer_offset = size - image_format.FOOTER_SIZE
        if footer_offset < data_start + image_format.MANIFEST_HEAD_SIZE + image_format.HASH_SIZE:
            raise CorruptionError("image truncated: no room for manifest and footer", path=p,
                                  where=f"offset {data_start}")
        footer = image_format.decode_footer(
            _pread(f, footer_offset, image_format.FOOTER_SIZE, p), footer_offset, p)
        if footer.manifest_offset < data_start:
            raise CorruptionError("footer points into the catalog", path=p,
                                  where=f"footer at offset {footer_offset}")
        raw = _pread(f, footer.manifest_offset, footer.manifest_length, p)
        manifest = reader.decode_manifest(raw, footer.manifest_offset)
        return ImageInfo(p, size, reader.header, reader.catalog, manifest,
                         reader.authenticated)


def _pread(f: BinaryIO, offset: int, n: int, path: object) -> bytes:
    try:
        f.seek(offset)
        data = f.read(n)
    except OSError as exc:
        raise storage_error(exc, "read", path) from exc
    if len(data) != n:
        raise CorruptionError("image truncated", path=path, where=f"offset {offset}")
    return data
