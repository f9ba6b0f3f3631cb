"""Write one backup image front to back, in one pass, to a file or a binary stream.

A file target is written under a temporary name in the same directory
(``.NAME.tmp-PID-XXXXXXXXXXXX``: this process's pid, random hex; the writer holds an
``flock`` on it), fsynced, and published under its name only by :meth:`ImageWriter.finish`;
:meth:`ImageWriter.abort` (or leaving the ``with`` block by an exception) removes it, so a
failed or cancelled backup leaves no file that looks like an image. A killed backup's temp
is removed by the next image written to the same path, once its owner is provably dead
(its lock free and its pid gone; :mod:`lamina.core.publish`): ``WriteSummary.cleaned``.
A stream target (stdout, a pipe, an upload) cannot be taken back; an aborted image simply
lacks its manifest and footer, which every reader refuses.

Not thread-safe: one writer is driven by one kernel thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Protocol

from lamina.backup import image_format
from lamina.backup.chunk_pool import ChunkPool
from lamina.backup.codec import Compressor
from lamina.backup.flush_behind import FLUSH_STEP, FlushBehind
from lamina.backup.sealing import ImageSealer, sealing_keyring
from lamina.core import publish
from lamina.core.crypto.keyring import Keyring
from lamina.core.failpoints import failpoint
from lamina.core.fileio import fsync_dir
from lamina.errors import (
    AlreadyExistsError,
    CorruptionError,
    LaminaError,
    UsageError,
    storage_error,
)


class WritableStream(Protocol):
    """Any writable binary stream (a file, ``sys.stdout.buffer``, a pipe, an upload)."""

    def write(self, data: bytes, /) -> object:
        """Write all of ``data`` (a buffered stream's ``write`` does)."""
        ...

    def flush(self) -> object:
        """Push buffered bytes out."""
        ...


#: Where an image goes: a path (file, published atomically) or a writable binary stream.
ImageTarget = str | os.PathLike[str] | WritableStream


class _Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...




class _FileSink:
    """A temp file next to ``path``, published by link (no clobber) or rename (overwrite)."""

    def __init__(self, path: Path, overwrite: bool) -> None:
        self.path = path
        self.overwrite = overwrite
        self.cleaned = tuple(publish.clean_leftovers(path, (publish.TMP,)))
        if path.exists() and not overwrite:
            raise AlreadyExistsError(f"{path} exists")
        self.tmp = publish.temp_path(path, publish.TMP, publish.new_token())
        self._written = 0
        self._flushed = 0
        self._flusher: FlushBehind | None = None
        try:
            self._file: BinaryIO | None = open(self.tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise storage_error(exc, "create", self.tmp) from exc
        try:
            publish.lock_file(self._file.fileno())  # ours until published or removed
            # Synced and un-cached in steps behind the writes (lamina.backup.flush_behind).
            self._flusher = FlushBehind(self._file.fileno(), self.tmp)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        assert self._file is not None and self._flusher is not None
        try:
            self._file.write(data)
            self._written += len(data)
            if self._written - self._flushed >= FLUSH_STEP:
                self._file.flush()  # the flusher syncs what the OS has
                self._flushed = self._written
                self._flusher.written(self._written)
        except OSError as exc:
            raise storage_error(exc, "write", self.tmp) from exc

    def commit(self) -> None:
        assert self._file is not None
        try:
            if self._flusher is not None:
                flusher, self._flusher = self._flusher, None
                flusher.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._publish()
        except OSError as exc:
            raise storage_error(exc, "publish", self.path) from exc
        fsync_dir(self.path.parent)

    def _publish(self) -> None:
        if self.overwrite:
            os.replace(self.tmp, self.path)
            return
        try:
            os.link(self.tmp, self.path)  # atomic and never replaces an existing image
        except FileExistsError:
            raise AlreadyExistsError(f"{self.path} exists") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                                 errno.EMLINK):
                raise
            if self.path.exists():  # filesystem without hard links: check, then rename
                raise AlreadyExistsError(f"{self.path} exists") from None
            os.rename(self.tmp, self.path)
            return
        os.unlink(self.tmp)

    def abort(self) -> None:
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.abandon()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class _StreamSink:
    def __init__(self, stream: WritableStream) -> None:
        self.stream = stream

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except OSError as exc:
            raise storage_error(exc, "write", "output stream") from exc

    def commit(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise storage_error(exc, "flush", "output stream") from exc

    def abort(self) -> None:
        """Nothing to undo: without manifest and footer the bytes are not a valid image."""


@dataclass(frozen=True, slots=True)
class WriteSummary:
    """What :meth:`ImageWriter.finish` wrote: the manifest, footer and total size."""

    path: Path | None
    size: int
    manifest: image_format.Manifest
    footer: image_format.Footer
    #: Temporary files of killed writers of the same path that this writer removed.
    cleaned: tuple[publish.Cleaned, ...] = ()




class ImageWriter:
    """Writes header and catalog at construction, chunks as they come, and the manifest and
    footer at :meth:`finish`.

    Raises UsageError for an invalid catalog or misuse (unknown stream, data after the
    stream's last chunk, oversize chunk), AlreadyExistsError if a file target exists and
    ``overwrite`` is False, StorageError for OS errors. Use as a context manager: leaving
    the block without :meth:`finish` aborts.

    Sealing: when ``keyring`` (default: the current one,
    :func:`lamina.core.crypto.keyring.current`) has a seal spec, the image is sealed
    (encrypted and authenticated; :mod:`lamina.backup.sealing`) and :attr:`header` carries
    the sealed flag. ``reseal`` (key id, salt) is what :attr:`seal_facts` reported for an
    interrupted writer of this image: a sealed image is then sealed with that salt (so the
    same plaintext gives the same bytes; UsageError if the keyring seals under another
    key); it is ignored for an image that is not sealed.
    """

    def __init__(self, target: ImageTarget, header: image_format.ImageHeader,
                 catalog: image_format.ImageCatalog, *,
                 codec: image_format.Codec = image_format.Codec.ZSTD, level: int | None = None,
                 overwrite: bool = False, keyring: Keyring | None = None,
                 reseal: tuple[bytes, bytes] | None = None) -> None:
        try:
            image_format.check_catalog(catalog)
        except CorruptionError as exc:
            raise UsageError(f"cannot write image: {exc.what}") from exc
        if header.flags & ~image_format.HEADER_FLAGS_KNOWN:
            raise UsageError(f"unknown header flags {header.flags:#x}")
        ring = sealing_keyring(keyring)
        self._sealer: ImageSealer | None = None
        if ring is not None and ring.seal is not None:
            header = dataclasses.replace(
                header, flags=header.flags | image_format.HEADER_FLAG_SEALED)
            salt = None
            if reseal is not None:
                key_id, salt = reseal
                if key_id != ring.seal.master.key_id:
                    raise UsageError(f"the interrupted backup was sealed under key "
                                     f"{key_id.hex()[:8]}, the keys now seal under "
                                     f"{ring.seal.master.key_id.hex()[:8]}")
            self._sealer = ImageSealer(ring.seal, header.image_id, salt)
        elif header.sealed:
            raise UsageError("a sealed image needs a key to seal it with")
        self.header = header
        self.catalog = catalog
        self._compressor = Compressor(codec, level)
        # Chunks are compressed on a pool and written back in order (same bytes as inline).
        self._pool: ChunkPool[tuple[int, int, bool, int]] = ChunkPool(self._compressor,
                                                                     self._emit_chunk)
        self._streams = [image_format.StreamTally() for _ in range(catalog.stream_count)]
        self._hasher: Any = (image_format.data_hasher() if self._sealer is None
                             else self._sealer.image_mac())
        self._chunks = 0
        self.offset = 0
        self.raw_bytes = 0
        self._done = False
        self.path: Path | None = None
        #: Temporary files of killed writers of the same path that this writer removed.
        self.cleaned: tuple[publish.Cleaned, ...] = ()
        if isinstance(target, (str, os.PathLike)):
            self.path = Path(target)
            file_sink = _FileSink(self.path, overwrite)
            self.cleaned = file_sink.cleaned
            self._sink: _Sink = file_sink
        else:
            self._sink = _StreamSink(target)
        try:
            blocks = [image_format.encode_header(header)]
            if self._sealer is not None:
                blocks.append(self._sealer.block_bytes())
            blocks.append(image_format.encode_catalog(catalog))
            for block in blocks:
                if self._sealer is not None:
                    self._sealer.metadata(block)
                self._write(block)
        except BaseException:
            self.abort()
            raise

    @property
    def seal_facts(self) -> tuple[bytes, bytes] | None:
        """(master key id, salt) of a sealed image, None for a plain one: what a resume
        passes back as ``reseal``. Not secret (both are in the image's crypto block)."""
        if self._sealer is None:
            return None
        return self._sealer.block.key_id, self._sealer.block.salt

    def _write(self, data: bytes) -> None:
        self._sink.write(data)
        self._hasher.update(data)
        self.offset += len(data)

    def stream_closed(self, stream: int) -> bool:
        """True once ``stream``'s last chunk was written."""
        return self._streams[stream].closed

    def stream_started(self, stream: int) -> bool:
        """True once ``stream`` has at least one chunk."""
        return self._streams[stream].seq > 0

    def write_chunk(self, stream: int, data: bytes | bytearray | memoryview, last: bool) -> None:
        """Append ``data`` as the next chunk of global ``stream`` (``last`` closes it).

        The chunk is compressed on the writer's pool (:mod:`lamina.backup.chunk_pool`) and
        written, in order, once it and every chunk before it are compressed; :meth:`finish`
        writes what is still in flight. A StorageError of an earlier chunk's write may
        surface here.
        """
        if self._done:
            raise UsageError("image writer is closed")
        if not 0 <= stream < len(self._streams):
            raise UsageError(f"stream {stream} is not in the catalog")
        state = self._streams[stream]
        if state.closed:
            raise UsageError(f"stream {stream} got data after its last chunk")
        if len(data) > image_format.MAX_CHUNK_SIZE:
            raise UsageError(f"chunk of {len(data)} bytes exceeds {image_format.MAX_CHUNK_SIZE}")
        if self._sealer is None:  # a sealed image's stream hashes: over the ciphertext
            state.hasher.update(data)
        tag = (stream, state.seq, last, len(data))
        state.seq += 1
        state.raw += len(data)
        state.closed = last
        self._chunks += 1
        self.raw_bytes += len(data)
        self._pool.submit(tag, data)

    def _emit_chunk(self, tag: tuple[int, int, bool, int], codec: image_format.Codec,
                    stored: bytes) -> None:
        """Write one compressed chunk (called in chunk order by the pool)."""
        stream, seq, last, raw_length = tag
        if self._sealer is not None:
            # Sealed here, in chunk order: the nonce is the chunk's index in the image.
            stored = self._sealer.seal_chunk(stream, seq, last, codec, raw_length, stored)
            # Nothing of the plaintext: a sealed image's stream hashes are over the ciphertext.
            self._streams[stream].hasher.update(stored)
        self._write(image_format.encode_chunk_header(stream, seq, last, codec, raw_length,
                                                     stored, self._sealer is not None))
        self._write(stored)
        self._streams[stream].stored += len(stored)
        failpoint("backup.image_chunk_written")

    def finish(self, *, vp_seq: int, vp_wall_ns: int, vp_facts: Sequence[Mapping[str, Any]],
               base_image_id: uuid.UUID | None = None, base_vp_seq: int = 0,
               blocker_held_ns: int = 0,
               root_hash: bytes = image_format.NO_ROOT_HASH) -> WriteSummary:
        """Write manifest and footer, sync and publish the image. Every stream that has
        chunks must be closed (its last chunk written). ``vp_facts[i]`` is catalog driver i's
        VP facts (JSON form); ``root_hash`` the database root hash at the VP (32 bytes). A
        layer (header flag) needs ``base_image_id``; a full image must not. Raises UsageError
        (open streams, a VP facts count or kind mismatch, facts that are not JSON, a root
        hash of another size), StorageError; on any error the image is not published."""
        if self._done:
            raise UsageError("image writer is closed")
        try:
            self._pool.drain()
            self._pool.close()
            open_streams = [i for i, s in enumerate(self._streams) if s.seq and not s.closed]
            if open_streams:
                raise UsageError(f"streams {open_streams} have no last chunk")
            if len(root_hash) != image_format.ROOT_HASH_SIZE:
                raise UsageError(f"a root hash is {image_format.ROOT_HASH_SIZE} bytes")
            if len(vp_facts) != len(self.catalog.drivers):
                raise UsageError("need one VP facts mapping per catalog driver")
            kind = self.header.kind
            if (kind == image_format.ImageKind.LAYER) != (base_image_id is not None):
                raise UsageError("a layer needs a base image id; a full image has none")
            manifest = image_format.Manifest(
                image_id=self.header.image_id, kind=kind,
                base_image_id=base_image_id or image_format.ZERO_UUID, base_vp_seq=base_vp_seq,
                vp=image_format.ValidityPoint(vp_seq, vp_wall_ns, tuple(vp_facts)),
                blocker_held_ns=blocker_held_ns, chunk_count=self._chunks,
                streams=tuple(image_format.StreamStats(s.raw, s.stored, s.seq, s.hasher.digest())
                              for s in self._streams),
                root_hash=bytes(root_hash))
            try:
                manifest_bytes = image_format.encode_manifest(
                    manifest, None if self._sealer is None else self._sealer.manifest_mac)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"VP facts are not JSON-serializable: {exc}") from exc
            offset = self.offset
            self._write(manifest_bytes)
            footer = image_format.Footer(offset, len(manifest_bytes), self._hasher.digest())
            self._write(image_format.encode_footer(footer))
            self._sink.commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return WriteSummary(self.path, self.offset, manifest, footer, self.cleaned)

    def abort(self) -> None:
        """Give up: remove the temporary file (file target). Idempotent; never raises."""
        if self._done:
            return
        self._done = True
        self._pool.close()
        with contextlib.suppress(OSError, LaminaError):
            self._sink.abort()

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()
