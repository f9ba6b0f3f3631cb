"""Merging a segment of a backup chain into one layer: :func:`combine_segment` writes the
layer a database would have produced on the segment's base at the segment's last VP,
reading only the segment's images; :func:`prove_layer` proves such a layer on its own.

A segment is layers L1..Ln of one chain, in chain order; L1's base T (the image before the
segment: a full or a layer) is neither passed in nor read. The merged layer M is what a
layer backup of the database taken on T at Ln's VP would have written (docs/format.md,
"Merged layers"):

* kind layer; base image id, base VP seq and btree base txnid: L1's (T's); the VP (commit
  seq, wall clock, blocker time), catalog, database id, incarnation and root hash: Ln's;
  the image id: the caller's (Ln's own id when M replaces Ln in place, so that layers taken
  on Ln still link to it).
* btree: the pages reachable at Ln's VP whose txnid is newer than T's. Why they are all in
  L1..Ln: pages are copy-on-write, never modified after their transaction commits, so a
  page live at Ln's VP written by transaction t, T.txnid < t <= Ln.txnid, has the same
  bytes at every VP from t to Ln's; at the VP of the layer Li whose range (L(i-1).txnid,
  Li.txnid] holds t it was live, and Li holds exactly the live pages of its range. Reading
  the images newest first and keeping the first copy of each page number (the one-pass
  rule of :mod:`lamina.engines.btree.layers`) therefore leaves every such page with its
  bytes at Ln's VP. The walk (:func:`lamina.engines.btree.segment.walk_newer`) then starts
  at Ln's roots, never descends into a child whose recorded txnid is at most T's (that
  subtree is in T's chain), and proves every page it emits against its parent's record
  (txnid and blake2b-128: the Merkle tree under Ln's root hash), so a damaged or incomplete
  segment is refused (CorruptionError), never merged. Pages of the segment that are not
  reached (freed before Ln's VP) are dropped.
* archive: per table of Ln, the tails since T's position concatenated, or the table whole
  from the layer that last sent it whole (created, re-created or optimized inside the
  segment); a table dropped inside the segment is not in Ln and not in M
  (:mod:`lamina.engines.archive.segment`). Every case is a layer on T; nothing is refused.
* VP facts: Ln's, with the btree ``base_txnid`` T's, ``pages_sent``/``pages_hash`` of M's
  stream and ``combined_from`` the segment's image ids (flattened: an image that was itself
  merged contributes the ids it was combined from), and each archive table's
  ``base_position`` M's (T's position for a tail, 0 whole).

"At end" images (``--vp end``) are refused (UnsupportedError): their streams carry two
sections each, and the replicator, the one user of this merge, takes "at begin" layers.
A segment holding a logical (snapshot or default driver) image cannot be a chain anyway.

Concurrency: the images are read-only inputs; the functions hold no lock and may run beside
any reader of them. Encryption: the output is sealed when the current keyring seals
(:func:`lamina.core.crypto.keyring.using`, as the repository sets it), exactly as every
other image is written; sealed and plain images never mix in one segment.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamina.backup import image_format
from lamina.backup.codec import parse_codec
from lamina.backup.image_reader import ImageInfo, ImageReader, open_image_file, read_info
from lamina.backup.image_writer import ImageWriter
from lamina.backup.kernel import CancelToken, ProgressCallback, is_cancelled, lamina_version
from lamina.core import fileio
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import DriverKind, TableSpec
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.layers import TablePart
from lamina.engines.archive.segment import TableSpan
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.layers import PageAssembler
from lamina.engines.btree.segment import walk_newer
from lamina.engines.btree.stream import (
    PageStreamReader,
    StreamHeader,
    encode_header,
    encode_trailer,
    new_pages_hasher,
)
from lamina.errors import (
    AlreadyExistsError,
    CancelledError,
    ChainError,
    CorruptionError,
    NotFoundError,
    StorageError,
    UnsupportedError,
    UsageError,
)
from lamina.online.chain import ImagePath, _btree, _check_link, _chunked, _facts, _label
from lamina.online.facts import ImageFacts
from lamina.online.plan import CHAIN_DRIVERS
from lamina.online.root import image_root_inputs, prove_root_hash

#: Bytes per chunk of the merged image's streams.
_CHUNK = image_format.DEFAULT_BUF_SIZE


# ====================================================================== the segment
def _segment_in_order(paths: Sequence[ImagePath]) -> list[ImageInfo]:
    """The images' infos, checked to be a segment: layers only, each the base of the next
    (:func:`lamina.online.chain._check_link`), all sealed or none, native "at begin" drivers
    only. Raises UsageError (no paths), ChainError, UnsupportedError, CorruptionError &
    co., NotFoundError."""
    if not paths:
        raise UsageError("a segment needs at least one layer")
    infos = [read_info(p) for p in paths]
    for info in infos:
        if info.manifest.kind != image_format.ImageKind.LAYER:
            raise ChainError(f"{_label(info)} is a full image; a segment holds layers only")
        for d in info.catalog.drivers:
            if d.name not in CHAIN_DRIVERS:
                raise UnsupportedError(f"{_label(info)} uses backup driver {d.name!r}; a "
                                       "segment holds native btree and archive data only")
            if d.kind != DriverKind.AT_BEGIN:
                raise UnsupportedError(f"{_label(info)} was taken at the end of its backup "
                                       "(--vp end); only \"at begin\" layers are merged")
    if len({i.header.sealed for i in infos}) > 1:
        raise ChainError("encrypted and unencrypted images never mix in one chain")
    for base, layer in itertools.pairwise(infos):
        if layer.manifest.base_image_id != base.header.image_id:
            raise ChainError(f"{_label(layer)} is not a layer on {_label(base)}: the segment "
                             "must be given in chain order, each layer on the one before")
        _check_link(base, layer)
    first = _btree(_facts(infos[0]))
    if first.base_txnid is None:
        raise CorruptionError(f"{_label(infos[0])}: VP fact 'base_txnid' is missing from a "
                              "layer's btree facts")
    return infos


def _table_parts(infos: list[ImageInfo], facts: list[ImageFacts],
                 spec: TableSpec) -> tuple[list[TablePart], bool]:
    """One archive table's parts in the segment, walking back from its last image to the
    one that sent it whole, or to the segment's first tail (then True: its first row id
    is unknown, T is not read)."""
    parts: list[TablePart] = []
    for i in range(len(infos) - 1, -1, -1):
        where = f"{_label(infos[i])}, archive table {spec.name!r}"
        tables = _archive_tables(facts[i])
        t = tables.get(spec.name)
        if t is None or t.table_id != spec.table_id:
            raise ChainError(f"{where}: the image's VP facts do not describe this table")
        if t.base_position is None:
            raise CorruptionError(f"{where}: VP fact 'base_position' is missing from a layer")
        vp_seq = infos[i].vp.commit_seq
        label = f"segment image {i}"
        if not t.base_position:
            parts.append(TablePart(i, 0, t.position, vp_seq, label=label))
            return parts[::-1], False
        if not i:
            parts.append(TablePart(i, t.base_position, t.position, vp_seq,
                                   min_seq=infos[0].manifest.base_vp_seq + 1, label=label))
            return parts[::-1], True
        base = _archive_tables(facts[i - 1]).get(spec.name)
        if (base is None or base.table_id != spec.table_id
                or base.generation != t.generation or base.position != t.base_position):
            raise ChainError(f"{where}: the layer sends a tail from offset {t.base_position}, "
                             "its base image does not end this table there")
        parts.append(TablePart(i, t.base_position, t.position, vp_seq, first_row=base.rows + 1,
                               min_seq=infos[i - 1].vp.commit_seq + 1, label=label))
    raise AssertionError("unreachable: the loop returns at image 0")


def _archive_tables(facts: ImageFacts) -> dict[str, ArchiveTableFacts]:
    archive = facts.archive()
    return {} if archive is None else dict(archive.tables)


# ====================================================================== reading
@dataclass(slots=True)
class _Read:
    """A segment read into a work directory: Ln's btree meta, the page numbers assembled,
    the archive spans, and the pages the walk keeps (page order)."""

    meta: btree_format.Meta
    data_path: Path
    assembler: PageAssembler
    present: set[int]
    spans: dict[str, TableSpan]
    pgnos: list[int]
    bytes_read: int


def _read_segment(infos: list[ImageInfo], work: Path, progress: ProgressCallback | None,
                  cancel: CancelToken) -> _Read:
    """Read every image once, newest first: btree pages into ``work/data.lamina`` (first
    copy of each page number wins), each archive table's span into its spool; then walk
    Ln's snapshot for the pages newer than T (proven). Every image is verified whole by
    its reader and every stream by its parser; its stream facts against its VP facts."""
    facts = [_facts(i) for i in infos]
    btree = [_btree(f) for f in facts]
    base_txnid = btree[0].base_txnid
    assert base_txnid is not None  # _segment_in_order
    final = infos[-1]
    spans: dict[str, TableSpan] = {}
    pages: list[PageAssembler] = []
    present: set[int] = set()
    total = sum(i.size for i in infos)
    done = 0
    try:
        for t in final.catalog.tables:
            if final.catalog.drivers[t.driver].name != ENGINE_ARCHIVE:
                continue
            spec = TableSpec(t.name, t.engine, t.table_id)
            parts, first_unknown = _table_parts(infos, facts, spec)
            spans[t.name] = TableSpan(work, spec, parts, first_unknown=first_unknown)
        for index in range(len(infos) - 1, -1, -1):
            info = infos[index]
            expect_base = base_txnid if index == 0 else btree[index - 1].txnid
            with open_image_file(info.path) as f:
                reader = ImageReader(f, path=info.path)
                if reader.header != info.header or reader.catalog != info.catalog:
                    raise ChainError(f"{info.path} changed while the segment was read")
                stream, feeds = _feeds(info, index == len(infos) - 1, btree[index],
                                       expect_base, spans, pages, present, work, index)
                for chunk in reader.chunks():
                    if is_cancelled(cancel):
                        raise CancelledError("cancelled")
                    feed = feeds.get(chunk.stream)
                    if feed is not None:
                        feed.feed(chunk.data, chunk.last)
                    if progress is not None:
                        progress(done + reader.offset, total)
                for feed in feeds.values():
                    feed.finish()
                mine = btree[index]
                if (stream.pages, stream.pages_hash) != (mine.pages_sent, mine.pages_hash):
                    raise CorruptionError(f"{_label(info)}: {stream.pages} btree pages (hash "
                                          f"{stream.pages_hash.hex()}), its VP facts say "
                                          f"{mine.pages_sent} ({mine.pages_hash.hex()})")
                pages[0].flush()
                done += info.size
        if is_cancelled(cancel):
            raise CancelledError("cancelled")
        assembler = pages[0]
        assembler.flush()  # the pages are read back from the page cache: no sync needed
        for span in spans.values():
            span.finish()
        _check_archive(final, facts[-1], spans)
        data_path = assembler.path
        pgnos = _walk(data_path, assembler.meta, present, base_txnid, _label(final))
    except BaseException:
        for p in pages:
            p.abort()
        for span in spans.values():
            span.abort()
        raise
    return _Read(assembler.meta, data_path, assembler, present, spans, pgnos, done)


def _feeds(info: ImageInfo, last: bool, facts: BtreeVpFacts, expect_base: int,
           spans: dict[str, TableSpan], pages: list[PageAssembler], present: set[int],
           work: Path, index: int) -> tuple[PageStreamReader, dict[int, Any]]:
    """The parser of every stream image ``index`` contributes (its btree stream; the
    streams of Ln's archive tables it holds a part of)."""
    label = _label(info)

    def on_header(h: StreamHeader) -> None:
        meta = h.meta
        expect = {"txnid": meta.txnid, "commit_seq": meta.commit_seq,
                  "root_hash": meta.root_hash.hex(), "total_pages": meta.total_pages,
                  "page_size": meta.page_size, "pages_sent": h.page_count}
        got = {"txnid": facts.txnid, "commit_seq": facts.commit_seq,
               "root_hash": facts.root_hash.hex(), "total_pages": facts.total_pages,
               "page_size": facts.page_size, "pages_sent": facts.pages_sent}
        if got != expect:
            raise CorruptionError(f"{label}: btree stream meta {expect} differs from the "
                                  f"image's VP facts {got}")
        if last:
            pages.append(PageAssembler(work / btree_format.DATA_FILE_NAME, meta))
        elif meta.page_size != pages[0].page_size:
            raise ChainError(f"{label} has page size {meta.page_size}, the segment's last "
                             f"image {pages[0].page_size}")

    def offer(pgno: int, page: bytes) -> None:
        if pages[0].offer(pgno, page):
            present.add(pgno)

    feeds: dict[int, Any] = {}
    btree: PageStreamReader | None = None
    for di, entry in enumerate(info.catalog.drivers):
        if entry.name == ENGINE_BTREE:
            btree = PageStreamReader(label, expect_base=expect_base, on_page=offer,
                                     on_header=on_header)
            feeds[entry.common_stream] = btree
        elif entry.name == ENGINE_ARCHIVE:
            for t in info.catalog.tables_of(di):
                span = spans.get(t.name)
                if span is None:
                    continue  # not in the last image: dropped inside the segment
                part = span.reader(index)
                if part is None:
                    continue
                if t.table_id != span.spec.table_id:
                    raise ChainError(f"{label}: archive table {t.name!r} has another table "
                                     "id than in the segment's last image")
                feeds[t.stream] = part
    if btree is None:
        raise ChainError(f"{label} has no btree data")
    return btree, feeds


def _check_archive(final: ImageInfo, facts: ImageFacts, spans: dict[str, TableSpan]) -> None:
    """Each span's meta (Ln's stream) against Ln's VP facts (CorruptionError)."""
    tables = _archive_tables(facts)
    for name, span in spans.items():
        meta, t = span.meta, tables.get(name)
        assert meta is not None and t is not None
        want = (meta.row_count, meta.data_length, meta.generation, meta.last_commit_seq,
                meta.chain_head)
        got = (t.rows, t.position, t.generation, t.last_commit_seq, t.chain_head)
        if got != want:
            raise CorruptionError(f"{_label(final)}, archive table {name!r}: stream meta "
                                  f"{want} differs from the image's VP facts {got}")


def _walk(path: Path, meta: btree_format.Meta, present: set[int], since: int,
          where: str) -> list[int]:
    """The page numbers a layer on ``since`` at ``meta`` holds, in page order, each page
    proven on the way (:func:`walk_newer`)."""
    fd = fileio.open_fd(path, os.O_RDONLY)
    ps = meta.page_size
    try:
        def read(pgno: int) -> bytes | None:
            return fileio.pread(fd, ps, pgno * ps, path) if pgno in present else None

        return sorted(pgno for pgno, _page in walk_newer(read, meta, since, where))
    finally:
        fileio.close_fd(fd, path)


# ====================================================================== writing
class _LayerPages:
    """The merged btree layer stream: header, the walked pages in page order (read back
    from the assembled file), trailer; ``pages_sent``/``pages_hash`` once iterated."""

    def __init__(self, read: _Read, base_txnid: int) -> None:
        self.read = read
        self.base_txnid = base_txnid
        self.pages_sent = 0
        self.pages_hash = b""

    def pieces(self) -> Iterable[bytes]:
        r = self.read
        ps = r.meta.page_size
        yield encode_header(r.meta, len(r.pgnos), base_txnid=self.base_txnid)
        hasher = new_pages_hasher()
        fd = fileio.open_fd(r.data_path, os.O_RDONLY)
        try:
            for pgno in r.pgnos:
                page = fileio.pread(fd, ps, pgno * ps, r.data_path)
                hasher.update(page)
                self.pages_sent += 1
                yield page
        finally:
            fileio.close_fd(fd, r.data_path)
        self.pages_hash = hasher.digest()
        yield encode_trailer(self.pages_sent, self.pages_hash)


def _combined_from(infos: Sequence[ImageInfo]) -> tuple[str, ...]:
    """The ids a merged layer stands for: each image's own, or the ids it was combined
    from when it was merged itself (a segment of one layer keeps that layer's)."""
    if len(infos) == 1:  # nothing merged: the layer re-encoded stands for itself
        return _btree(_facts(infos[0])).combined_from
    out: list[str] = []
    for info in infos:
        earlier = _btree(_facts(info)).combined_from
        out.extend(earlier or (str(info.header.image_id),))
    return tuple(out)


def combine_segment(paths: Sequence[ImagePath], out: str | os.PathLike[str], *,
                    image_id: uuid.UUID, codec: str = "zstd",
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken = None) -> ImageInfo:
    """Write at ``out`` ONE layer equal to the segment ``paths`` (layers L1..Ln in chain
    order): the layer a database would have produced on L1's base at Ln's VP, with image
    id ``image_id`` (module doc: what it holds and why the segment suffices). Reads only
    the segment's images, once each, newest first, into a temporary directory next to
    ``out`` (removed afterwards; at most the segment's pages and archive tails on disk;
    memory: a set of the segment's page numbers and the walk's stack, never page data).

    Restoring the chain with the merged layer in place of L1..Ln equals restoring the
    original chain; layers taken on Ln link to the merged layer when ``image_id`` is Ln's
    id. ``out`` is published only when complete (never replacing a file); on any error
    nothing is left at ``out``. Returns the new image's :class:`ImageInfo`.

    Raises UsageError (no paths), AlreadyExistsError (``out`` exists), NotFoundError (no
    such directory, a missing image), ChainError (not a segment: a full image, images out
    of order or from elsewhere), UnsupportedError ("at end" or logical images),
    CorruptionError & co. (a damaged or incomplete segment: a page of the walk missing or
    failing its parent's hash, a stream failing its facts), AuthenticationError,
    CancelledError, StorageError. Thread-safe for distinct ``out``.
    """
    infos = _segment_in_order(paths)
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise AlreadyExistsError(f"{target} exists")
    if not target.parent.is_dir():
        raise NotFoundError(f"directory {target.parent} does not exist")
    first, final = infos[0], infos[-1]
    facts = _facts(final)
    btree = _btree(facts)
    base_txnid = _btree(_facts(first)).base_txnid
    assert base_txnid is not None
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.segment-",
                                     dir=target.parent) as tmp:
        read = _read_segment(infos, Path(tmp), progress, cancel)
        try:
            header = image_format.ImageHeader(image_id, final.header.database_id,
                                              time.time_ns(), lamina_version(),
                                              flags=image_format.HEADER_FLAG_LAYER,
                                              incarnation=final.header.incarnation)
            pages = _LayerPages(read, base_txnid)
            with ImageWriter(target, header, final.catalog,
                             codec=parse_codec(codec)) as writer:
                if writer.header.sealed != final.header.sealed:
                    state = "is" if final.header.sealed else "is not"
                    raise ChainError(f"the segment {state} encrypted and the merged layer "
                                     "would not be: the current keyring decides (encrypted "
                                     "and unencrypted images never mix in one chain)")
                vp_facts: list[dict[str, Any]] = []
                for di, entry in enumerate(final.catalog.drivers):
                    if is_cancelled(cancel):
                        raise CancelledError("cancelled")
                    if entry.name == ENGINE_BTREE:
                        _chunked(writer, entry.common_stream, pages.pieces(), _CHUNK,
                                 cancel)
                        vp_facts.append(dataclasses.replace(
                            btree, base_txnid=base_txnid, pages_sent=pages.pages_sent,
                            pages_hash=pages.pages_hash,
                            combined_from=_combined_from(infos)).to_json())
                    else:  # archive (checked by _segment_in_order)
                        for t in final.catalog.tables_of(di):
                            span = read.spans[t.name]
                            _chunked(writer, t.stream, span.pieces(final.vp.commit_seq),
                                     _CHUNK, cancel)
                        vp_facts.append(_archive_facts(facts, read.spans).to_json())
                root = final.manifest.root_hash
                prove_root_hash(root, image_root_inputs(final.catalog, vp_facts,
                                                        f"merged layer {target.name}"),
                                f"merged layer of {_label(final)}")
                writer.finish(vp_seq=final.vp.commit_seq, vp_wall_ns=final.vp.wall_ns,
                              vp_facts=vp_facts, base_image_id=first.manifest.base_image_id,
                              base_vp_seq=first.manifest.base_vp_seq,
                              blocker_held_ns=final.manifest.blocker_held_ns,
                              root_hash=root)
        finally:
            _release(read)
    return read_info(target)


def _archive_facts(facts: ImageFacts, spans: dict[str, TableSpan]) -> ArchiveVpFacts:
    """Ln's archive VP facts with each table's base position the merged stream's."""
    archive = facts.archive()
    assert archive is not None  # the catalog names the archive driver
    return dataclasses.replace(archive, tables={
        name: dataclasses.replace(t, base_position=spans[name].start if name in spans
                                  else t.base_position)
        for name, t in archive.tables.items()})


def _release(read: _Read) -> None:
    """Close and remove the work files (the page file, the spools)."""
    read.assembler.abort()
    for span in read.spans.values():
        span.abort()


# ====================================================================== proof
def prove_layer(path: ImagePath, *, cancel: CancelToken = None,
                on_read: Callable[[ImageInfo], None] | None = None) -> ImageInfo:
    """Prove a layer on its own, in O(its size): the image whole (chunk checksums, stream
    hashes, manifest and footer, a sealed image's MACs), every stream against its VP facts,
    every archive block decoded, and the btree walk from its VP roots over its own pages:
    every page newer than its base txnid that the snapshot reaches is in the layer with the
    txnid and hash its parent records, and the layer holds no other page. With its base's
    chain restorable, that is what restoring the layer needs (the restore then proves the
    root hash and the whole checker). ``on_read`` sees the image's info first (a caller
    checks its identity). Returns the info.

    Raises ChainError, UnsupportedError, CorruptionError & co., CancelledError,
    StorageError (as :func:`combine_segment`).
    """
    infos = _segment_in_order([path])
    if on_read is not None:
        on_read(infos[0])
    info = infos[0]
    work_root = Path(path).parent if isinstance(path, str | os.PathLike) else None
    try:
        tmp = tempfile.TemporaryDirectory(prefix=".prove-layer-", dir=work_root)
    except OSError as exc:
        raise StorageError(f"cannot create a work directory: {exc}") from exc
    with tmp as work:
        read = _read_segment(infos, Path(work), None, cancel)
        try:
            sent = _btree(_facts(info)).pages_sent
            if len(read.pgnos) != sent:
                raise CorruptionError(f"{_label(info)}: the layer holds {sent} btree pages, "
                                      f"its snapshot reaches {len(read.pgnos)} newer than "
                                      "its base")
        finally:
            _release(read)
    return info


__all__ = ["combine_segment", "prove_layer"]
