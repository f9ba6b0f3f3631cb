"""Forging images and archive files the way an attacker who knows the formats would: change
the content, then recompute every checksum a reader checks on the way (block checksums,
chunk checksums, stream hashes, manifest hash, footer), so only the proofs that are not
checksums — the archive block chain, the logical run checks and content digests, the root
hash — can tell."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import xxhash

from lamina.backup import image_format as F
from lamina.backup import logical as L
from lamina.backup.image_reader import ImageReader
from lamina.backup.image_writer import ImageWriter
from lamina.engines.archive import format as AF
from lamina.engines.archive.stream import STREAM_HEAD_SIZE

Edit = Callable[[bytes], bytes]


def rewrite(src: Path, dst: Path, *, stream: int | None = None, edit: Edit | None = None,
            manifest: Callable[[F.Manifest], F.Manifest] | None = None) -> Path:
    """Copy image ``src`` to ``dst`` with stream ``stream``'s bytes replaced by
    ``edit(bytes)`` and/or the manifest changed by ``manifest``; every chunk checksum,
    stream hash, the manifest hash and the footer are computed anew."""
    with open(src, "rb") as f:
        reader = ImageReader(f, path=src)
        chunks = [(c.stream, bytes(c.data), c.last) for c in reader.chunks()]
        header, catalog, m = reader.header, reader.catalog, reader.manifest
    assert m is not None
    if manifest is not None:
        m = manifest(m)
    with ImageWriter(dst, header, catalog, codec=F.Codec.NONE) as writer:
        done = False
        for s, data, _last in chunks:
            if s == stream and edit is not None:
                if not done:
                    new = edit(b"".join(d for t, d, _l in chunks if t == s))
                    writer.write_chunk(s, new, True)
                    done = True
                continue
            writer.write_chunk(s, data, _last)
        layer = m.kind == F.ImageKind.LAYER
        writer.finish(vp_seq=m.vp.commit_seq, vp_wall_ns=m.vp.wall_ns,
                      vp_facts=[dict(d) for d in m.vp.drivers],
                      base_image_id=m.base_image_id if layer else None,
                      base_vp_seq=m.base_vp_seq, blocker_held_ns=m.blocker_held_ns,
                      root_hash=m.root_hash)
    return dst


def stream_of(image: Path, table: str) -> int:
    """The stream number of ``table`` in ``image``."""
    with open(image, "rb") as f:
        catalog = ImageReader(f, path=image).catalog
    return next(t.stream for t in catalog.tables if t.name == table)


def forge_block(data: bytes, at: int) -> bytes:
    """``data`` (holding an archive block at offset ``at`` whose payload is stored
    uncompressed) with one payload byte changed and both block checksums recomputed."""
    fields = list(AF.BLOCK_HEADER_BODY.unpack_from(data, at))
    stored = fields[7]
    p0 = at + AF.BLOCK_HEADER_SIZE
    payload = bytearray(data[p0:p0 + stored])
    payload[0] = ord("X") if payload[0] != ord("X") else ord("Y")
    fields[-1] = xxhash.xxh3_64_intdigest(bytes(payload))
    body = AF.BLOCK_HEADER_BODY.pack(*fields)
    head = body + AF.BLOCK_HEADER_CHECKSUM.pack(xxhash.xxh3_64_intdigest(body))
    return data[:at] + head + bytes(payload) + data[p0 + stored:]


def forge_archive_stream(data: bytes) -> bytes:
    """An archive table stream with its first block forged (see :func:`forge_block`)."""
    return forge_block(data, STREAM_HEAD_SIZE + AF.ARZ_HEADER_SIZE)


def forge_logical_stream(data: bytes, table: str, table_id: int, *,
                         reseal_runs: bool) -> bytes:
    """A logical table stream with its first record's value changed; ``reseal_runs``: its
    run checks (and trailer) recomputed too, else the original run checks kept."""
    parser = L.StreamParser(table, table_id)
    rows = parser.feed(data)
    parser.finish()
    assert rows and parser.info is not None
    key, value = rows[0]
    forged = (value[:-1] + b"!") if value else b"!"
    if not reseal_runs:
        old = L.RECORD.pack(len(key), len(value)) + key + value
        new = L.RECORD.pack(len(key), len(forged)) + key + forged
        assert len(old) == len(new)
        i = data.index(old)
        return data[:i] + new + data[i + len(old):]
    out = [L.encode_header(table_id, parser.info)]
    nbytes = 0
    records = [L.RECORD.pack(len(k), len(v)) + k + v
               for k, v in [(key, forged), *rows[1:]]]
    for r in records:
        nbytes += len(r) - L.RECORD.size
    run = b"".join(records)
    out += [run, L.encode_run_check(xxhash.xxh3_64_intdigest(run)),
            L.encode_trailer(len(records), nbytes)]
    return b"".join(out)


def with_root_hash(root: bytes) -> Callable[[F.Manifest], F.Manifest]:
    """A manifest change recording ``root`` as the root hash."""
    return lambda m: dataclasses.replace(m, root_hash=root)
