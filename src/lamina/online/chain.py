"""Backup chains: a full image and the layers on top of it, each naming its base by id.

Public functions (the repository layer codes against these):

* :func:`order_chain` — read the images' headers and manifests, validate the links, return
  them in chain order (full image first);
* :func:`restore_chain` — restore a chain (or any prefix of it) into a new database, in one
  pass over the images: every page and archive byte of the last VP is written once;
* :func:`verify_chain` — prove a chain without restoring it (``deep``: the Merkle root at
  the last VP, from the chain's pages, plus the whole checker);
* :func:`combine_chain` — write one synthetic full image equal to the chain's last VP.

Taking a layer is :mod:`lamina.online.layers`; proving a restored database is
:func:`lamina.online.restoring.prove_restored`, shared with single-image restores.

One pass (docs/format.md, "Layer streams and chains"): the images are read newest first.
A btree page number is written the first time it is seen (if it is below the last VP's
page count): a page live at the last VP is in exactly one image, and no later image has
that number unless it was rewritten. Archive parts are written at their offsets. The
result is then proven whole: the btree checker (every Merkle hash from the root recorded
at the last VP, key order, counts, free list) and every archive block against the last
meta. ``verify_chain(deep=True)`` and :func:`combine_chain` assemble the last VP in a
temporary directory that is *not* a database (a sparse page file and archive files, no
identity, no lock file), deleted afterwards.

Every image's VP facts are read typed (:class:`~lamina.online.facts.ImageFacts`): a
missing fact is a CorruptionError, facts that do not link (a layer's base txnid, an archive
tail's base position) a ChainError. Every image's facts are cross-checked in full, as a
single-image restore checks them: its archive ``vp_seq`` against its VP, its btree facts
against its stream (the header's meta, the trailer's page count and pages hash), and the
last image's archive facts against the metas assembled (CorruptionError).

Concurrency: images are read-only inputs; every function may run beside writers of the
database and beside other readers of the images; none holds a database lock.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import xxhash

from lamina.backup import image_format
from lamina.backup.codec import parse_codec
from lamina.backup.image_reader import (
    ImageInfo,
    ImageLocation,
    ImageReader,
    location,
    open_image_file,
    read_info,
)
from lamina.backup.image_writer import ImageWriter, WritableStream, WriteSummary
from lamina.backup.kernel import CancelToken, ProgressCallback, is_cancelled, lamina_version
from lamina.backup.restore import RestoreResult
from lamina.backup.verify import verify_image
from lamina.core.catalog import ENGINE_ARCHIVE, ENGINE_BTREE
from lamina.core.driver import DriverKind, TableSpec
from lamina.core.sections import Feed, SectionSplitter
from lamina.engines.archive.at_end_restore import (
    initial_section_length as archive_initial_length,
)
from lamina.engines.archive.facts import ArchiveTableFacts, ArchiveVpFacts
from lamina.engines.archive.layers import TableAssembler, TablePart
from lamina.engines.archive.stream import STREAM_HEADER_SIZE
from lamina.engines.archive.stream import StreamHeader as ArchiveStreamHeader
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.at_end_restore import (
    initial_section_length as btree_initial_length,
)
from lamina.engines.btree.check import check_pages
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.layers import FullStreamWriter, PageAssembler
from lamina.engines.btree.stream import HEADER_SIZE, PageStreamReader, StreamHeader
from lamina.errors import (
    AlreadyExistsError,
    CancelledError,
    ChainError,
    CorruptionError,
    NotFoundError,
    UnsupportedError,
    UsageError,
)
from lamina.online.facts import ImageFacts
from lamina.online.plan import CHAIN_DRIVERS
from lamina.online.restoring import RestoreSummary, restore, restore_proven
from lamina.online.root import image_root_inputs, prove_root_hash

ImagePath = ImageLocation


# ====================================================================== ordering
def _label(info: ImageInfo) -> str:
    kind = "full image" if info.manifest.kind == image_format.ImageKind.FULL else "layer"
    return f"{kind} {info.path.name} ({info.header.image_id})"


def _facts(info: ImageInfo) -> ImageFacts:
    """The typed VP facts of ``info``'s drivers (errors name the image)."""
    return ImageFacts(info, _label(info))


def _btree(facts: ImageFacts) -> BtreeVpFacts:
    """The btree VP facts of an image of a chain (ChainError: the image has none)."""
    btree = facts.btree()
    if btree is None:
        raise ChainError(f"{facts.label} has no btree data")
    return btree


def order_chain(paths: Sequence[ImagePath]) -> list[ImageInfo]:
    """Read every image's header, catalog and manifest (:func:`read_info`: checksums and
    hashes of those, not of the data) and return them in chain order: the one full image,
    then each layer after the image it names as its base.

    Validates every link: exactly one full image; every layer's base image id is the
    previous image's id, its base VP seq that image's VP seq, its btree base txnid that
    image's btree txnid; every image from the same database; no image twice; no two layers
    on one base (a fork); no layer whose base is missing (a gap); all images encrypted or
    none. The paths may be given in
    any order. Raises ChainError (one line saying which link is broken), NotFoundError (a
    missing file), CorruptionError & co. (a damaged image), UsageError (no paths).
    Reads files only; thread-safe.
    """
    if not paths:
        raise UsageError("a chain needs at least one image")
    infos = [read_info(p) for p in paths]
    ids: dict[uuid.UUID, ImageInfo] = {}
    for info in infos:
        if info.header.image_id in ids:
            raise ChainError(f"image {info.header.image_id} is given twice "
                             f"({ids[info.header.image_id].path}, {info.path})")
        ids[info.header.image_id] = info
    sealed = {i.header.sealed for i in infos}
    if len(sealed) > 1:
        plain = next(i for i in infos if not i.header.sealed)
        raise ChainError(f"encrypted and unencrypted images never mix in one chain: "
                         f"{plain.path.name} is not encrypted, others are")
    fulls = [i for i in infos if i.manifest.kind == image_format.ImageKind.FULL]
    if not fulls:
        first = infos[0]
        raise ChainError(f"the chain has no full image: it starts with {_label(first)}, whose "
                         f"base is image {first.manifest.base_image_id}")
    if len(fulls) > 1:
        raise ChainError(f"a chain has one full image; got {len(fulls)}: "
                         + ", ".join(i.path.name for i in fulls))
    on_base: dict[uuid.UUID, ImageInfo] = {}
    for info in infos:
        if info.manifest.kind != image_format.ImageKind.LAYER:
            continue
        other = on_base.get(info.manifest.base_image_id)
        if other is not None:
            raise ChainError(f"two layers on the same base image {info.manifest.base_image_id}"
                             f": {other.path.name} and {info.path.name} (a fork)")
        on_base[info.manifest.base_image_id] = info
    chain = [fulls[0]]
    while (nxt := on_base.pop(chain[-1].header.image_id, None)) is not None:
        _check_link(chain[-1], nxt)
        chain.append(nxt)
    if on_base:
        orphan = min(on_base.values(), key=lambda i: i.manifest.base_vp_seq)
        raise ChainError(f"gap in the chain: the base image {orphan.manifest.base_image_id} of "
                         f"{_label(orphan)} is not among the images given")
    return chain


def _check_link(base: ImageInfo, layer: ImageInfo) -> None:
    """ChainError unless ``layer`` continues ``base`` (same database, base VP seq, btree
    base txnid); CorruptionError for a layer without its base txnid."""
    if layer.header.database_id != base.header.database_id:
        raise ChainError(f"{_label(layer)} is from database {layer.header.database_id}, its "
                         f"base {base.path.name} from database {base.header.database_id}")
    if layer.manifest.base_vp_seq != base.vp.commit_seq or layer.vp.commit_seq < base.vp.commit_seq:
        raise ChainError(f"{_label(layer)} names base VP seq {layer.manifest.base_vp_seq}, its "
                         f"base {base.path.name} has VP seq {base.vp.commit_seq}")
    base_btree, layer_btree = _facts(base).btree(), _facts(layer).btree()
    if base_btree is None or layer_btree is None:
        raise ChainError(f"{_label(layer)} or its base has no btree data")
    if layer_btree.base_txnid is None:
        raise CorruptionError(f"{_label(layer)}: VP fact 'base_txnid' is missing from a "
                              "layer's btree facts")
    if layer_btree.base_txnid != base_btree.txnid:
        raise ChainError(f"{_label(layer)} holds pages after btree txnid "
                         f"{layer_btree.base_txnid}, its base's VP is txnid "
                         f"{base_btree.txnid}")


def _chain_in_order(paths: Sequence[ImagePath]) -> list[ImageInfo]:
    """:func:`order_chain`, and the paths must already be in chain order (ChainError)."""
    chain = order_chain(paths)
    given = [location(p) for p in paths]
    if [i.path for i in chain] != given:
        if chain[0].path != given[0]:
            raise ChainError(f"the chain must start with its full image "
                             f"{chain[0].path.name}, not {given[0].name}")
        raise ChainError("images out of order; the chain is: "
                         + " ".join(i.path.name for i in chain))
    for info in chain:
        for d in info.catalog.drivers:
            if d.name not in CHAIN_DRIVERS:
                raise UnsupportedError(f"{_label(info)} uses backup driver {d.name!r}; a "
                                       "chain holds native btree and archive data only")
    return chain


# ====================================================================== the plan
@dataclass(frozen=True, slots=True)
class _Plan:
    """What each image contributes: per image its btree VP facts; per archive table of the
    last image its parts (whole stream, then tails)."""

    infos: list[ImageInfo]
    facts: list[ImageFacts]
    btree: list[BtreeVpFacts]
    archive: dict[str, tuple[TableSpec, list[TablePart]]]

    @property
    def final(self) -> ImageInfo:
        return self.infos[-1]

    @property
    def txnids(self) -> list[int]:
        return [b.txnid for b in self.btree]


def _archive_tables(facts: ImageFacts) -> Mapping[str, ArchiveTableFacts]:
    """The archive tables an image's VP facts describe (none without an archive driver)."""
    archive = facts.archive()
    return {} if archive is None else archive.tables


def _plan(infos: list[ImageInfo]) -> _Plan:
    facts = [_facts(i) for i in infos]  # archive vp_seq checked against each image's VP
    btree = [_btree(f) for f in facts]
    if btree[0].base_txnid is not None:
        raise CorruptionError(f"{_label(infos[0])}: VP fact 'base_txnid' in a full image's "
                              "btree facts")
    final = infos[-1]
    per_image = [_archive_tables(f) for f in facts]
    begin_seqs = [_begin_seq(f) for f in facts]
    archive: dict[str, tuple[TableSpec, list[TablePart]]] = {}
    for t in final.catalog.tables:
        if final.catalog.drivers[t.driver].name != ENGINE_ARCHIVE:
            continue
        spec = TableSpec(t.name, t.engine, t.table_id)
        archive[t.name] = (spec, _table_parts(infos, per_image, begin_seqs, spec))
    return _Plan(infos, facts, btree, archive)


def _begin_seq(facts: ImageFacts) -> int:
    """The commit seq an "at end" image's archive initial sections were cut at (0 else)."""
    archive = facts.archive()
    return 0 if archive is None or archive.begin_seq is None else archive.begin_seq


def _part_key(image: int, initial: bool = False) -> int:
    """An archive part's key: image *i*'s only (or final) section is 2i+1; the initial
    section of an "at end" image is 2i (read before the final one, so ordered first)."""
    return 2 * image + (0 if initial else 1)


def _table_parts(infos: list[ImageInfo], per_image: list[Mapping[str, ArchiveTableFacts]],
                 begin_seqs: list[int], spec: TableSpec) -> list[TablePart]:
    """Walk back from the last image to the one that sent ``spec`` whole; an "at end"
    image contributes its final section and, when that is a tail, its initial section
    (docs/format.md, "At-end streams")."""
    parts: list[TablePart] = []
    i = len(infos) - 1
    while True:
        where = f"{_label(infos[i])}, archive table {spec.name!r}"
        facts = per_image[i].get(spec.name)
        if facts is None or facts.table_id != spec.table_id:
            raise ChainError(f"{where}: the image's VP facts do not describe this table")
        vp_seq = infos[i].vp.commit_seq
        label = f"chain image {i}"
        if facts.initial is not None:
            initial, b = facts.initial, facts.base_position
            final_label = f"{label}, final section"
            if not b:
                parts.append(TablePart(_part_key(i), 0, facts.position, vp_seq,
                                       label=final_label))
                return parts[::-1]
            if (initial.table_id != spec.table_id or initial.generation != facts.generation
                    or initial.position != b):
                raise CorruptionError(f"{where}: the final section starts at {b}, the "
                                      "initial section does not end this table there")
            parts.append(TablePart(_part_key(i), b, facts.position, vp_seq,
                                   first_row=initial.rows + 1,
                                   min_seq=initial.last_commit_seq + 1, label=final_label))
            facts, key, vp_seq = initial, _part_key(i, True), begin_seqs[i]
            label = f"{label}, initial section"
        else:
            key = _part_key(i)
        if not i:
            start = 0  # the full image sends every table whole
        elif facts.base_position is None:
            raise CorruptionError(f"{where}: VP fact 'base_position' is missing from a layer")
        else:
            start = facts.base_position
        if not start:
            parts.append(TablePart(key, 0, facts.position, vp_seq, label=label))
            return parts[::-1]
        base = per_image[i - 1].get(spec.name)
        if (base is None or base.table_id != spec.table_id
                or base.generation != facts.generation or base.position != start):
            raise ChainError(f"{where}: the layer sends a tail from offset {start}, its base "
                             f"image does not end this table there")
        parts.append(TablePart(key, start, facts.position, vp_seq, first_row=base.rows + 1,
                               min_seq=infos[i - 1].vp.commit_seq + 1, label=label))
        i -= 1


# ====================================================================== assembling
class _Consumer(Protocol):
    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None: ...
    def finish(self) -> object: ...


class _Split:
    """The consumer of an "at end" stream: its sections go to their own consumers (None:
    a section this chain does not need, skipped); ``finish`` finishes them and runs
    ``check``."""

    def __init__(self, splitter: SectionSplitter, parts: Sequence[_Consumer | None],
                 check: Callable[[], None] | None = None) -> None:
        self.splitter = splitter
        self.parts = parts
        self.check = check

    def feed(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        self.splitter.feed(data, last)

    def finish(self) -> None:
        for part in self.parts:
            if part is not None:
                part.finish()
        if self.check is not None:
            self.check()


def _section(consumer: _Consumer | None,
             after: Callable[[], None] | None = None) -> Feed:
    """A section's feed: to ``consumer`` (nothing when None), then ``after`` on its end."""
    def feed(data: bytes | bytearray | memoryview, last: bool) -> None:
        if consumer is not None:
            consumer.feed(data, last)
        if last and after is not None:
            after()
    return feed


@dataclass(slots=True)
class _Assembled:
    """The last VP assembled in a directory: its btree meta, and what it took."""

    meta: btree_format.Meta
    archive: dict[str, TableAssembler]
    bytes_read: int
    chunks: int
    raw_bytes: int
    pages_written: int
    pages_read: int


def _assemble(plan: _Plan, directory: Path, progress: ProgressCallback | None,
              cancel: CancelToken) -> _Assembled:
    """Read every image once, newest first, and write the last VP into ``directory``:
    ``data.lamina`` (pages, then both metas) and the archive tables of the last image.

    Every image is verified whole by its reader (chunk checksums, stream hashes, manifest,
    footer) and every stream by its parser; on any failure the files written are removed
    and the error propagates (CancelledError when ``cancel`` fires)."""
    infos = plan.infos
    total = sum(i.size for i in infos)
    tables = {name: TableAssembler(directory, spec, parts)
              for name, (spec, parts) in plan.archive.items()}
    pages: list[PageAssembler] = []  # created by the last image's btree header (read first)
    done = chunks = raw = pages_read = 0
    try:
        for index in range(len(infos) - 1, -1, -1):
            info = infos[index]
            with open_image_file(info.path) as f:
                reader = ImageReader(f, path=info.path)
                if reader.header != info.header or reader.catalog != info.catalog:
                    raise ChainError(f"{info.path} changed while the chain was read")
                btree, consumers = _consumers(plan, index, tables, pages, directory)
                for chunk in reader.chunks():
                    if is_cancelled(cancel):
                        raise CancelledError("cancelled")
                    consumer = consumers.get(chunk.stream)
                    if consumer is not None:
                        consumer.feed(chunk.data, chunk.last)
                    chunks += 1
                    raw += len(chunk.data)
                    if progress is not None:
                        progress(done + reader.offset, total)
                for consumer in consumers.values():
                    consumer.finish()
                sent = plan.btree[index].pages_sent
                if btree.pages != sent:
                    raise CorruptionError(f"{_label(info)}: {btree.pages} btree pages, its VP "
                                          f"facts say {sent}")
                digest = plan.btree[index].pages_hash
                if btree.pages_hash != digest:
                    raise CorruptionError(f"{_label(info)}: btree pages hash "
                                          f"{btree.pages_hash.hex()} (stream trailer), its VP "
                                          f"facts say {digest.hex()}")
                pages_read += btree.pages
                pages[0].flush()
                pages[0].settle()
                done += info.size
        if is_cancelled(cancel):
            raise CancelledError("cancelled")
        assembler = pages[0]
        assembler.finish()
        for table in tables.values():
            table.finish()
        _check_archive_facts(plan, tables)
    except BaseException:
        for p in pages:
            p.abort()
        for table in tables.values():
            table.abort()
        raise
    return _Assembled(assembler.meta, tables, done, chunks, raw, assembler.pages_written,
                      pages_read)


def _check_archive_facts(plan: _Plan, tables: Mapping[str, TableAssembler]) -> None:
    """Each assembled archive table's meta (the last image's stream) against the last
    image's VP facts: rows, position, generation, last commit seq (CorruptionError)."""
    final = _archive_tables(plan.facts[-1])
    for name, table in tables.items():
        meta, facts = table.meta, final.get(name)
        assert meta is not None and facts is not None  # finish() and _table_parts
        want = {"rows": meta.row_count, "position": meta.data_length,
                "generation": meta.generation, "last_commit_seq": meta.last_commit_seq,
                "chain_head": meta.chain_head.hex()}
        got = {"rows": facts.rows, "position": facts.position,
               "generation": facts.generation, "last_commit_seq": facts.last_commit_seq,
               "chain_head": facts.chain_head.hex()}
        if got != want:
            raise CorruptionError(f"{_label(plan.final)}, archive table {name!r}: stream meta "
                                  f"{want} differs from the image's VP facts {got}")


def _consumers(plan: _Plan, index: int, tables: dict[str, TableAssembler],
               pages: list[PageAssembler], directory: Path,
               ) -> tuple[PageStreamReader, dict[int, _Consumer]]:
    """A parser for every stream image ``index`` contributes: its btree stream, and the
    streams of the last image's archive tables that this image holds a part of."""
    info = plan.infos[index]
    last = index == len(plan.infos) - 1
    facts = plan.btree[index]

    def on_header(h: StreamHeader) -> None:
        meta = h.meta
        expect = {"txnid": meta.txnid, "commit_seq": meta.commit_seq,
                  "root_hash": meta.root_hash.hex(),
                  "total_pages": meta.total_pages, "page_size": meta.page_size,
                  "pages_sent": h.page_count}
        got = {"txnid": facts.txnid, "commit_seq": facts.commit_seq,
               "root_hash": facts.root_hash.hex(),
               "total_pages": facts.total_pages, "page_size": facts.page_size,
               "pages_sent": facts.pages_sent}
        if got != expect:
            raise CorruptionError(f"{_label(info)}: btree stream meta {expect} differs from "
                                  f"the image's VP facts {got}")
        if last and pages:  # an at-end last image: made by its initial section
            pages[0].retarget(meta)
        elif last:
            pages.append(PageAssembler(directory / btree_format.DATA_FILE_NAME, meta))
        elif meta.page_size != pages[0].page_size:
            raise ChainError(f"{_label(info)} has page size {meta.page_size}, the chain's "
                             f"last image {pages[0].page_size}")

    def offer(pgno: int, page: bytes) -> None:
        pages[0].offer(pgno, page)

    consumers: dict[int, _Consumer] = {}
    btree: PageStreamReader | None = None
    expect_base = None if index == 0 else plan.txnids[index - 1]
    base_total = None if index == 0 else plan.btree[index - 1].total_pages
    for di, entry in enumerate(info.catalog.drivers):
        at_end = entry.kind == DriverKind.AT_END
        if entry.name == ENGINE_BTREE:
            if at_end != (facts.initial is not None):
                raise CorruptionError(f"{_label(info)}: the btree driver is "
                                      f"{entry.kind.label}, its VP facts say otherwise")
            if facts.initial is None:
                btree = PageStreamReader(_label(info), expect_base=expect_base,
                                         on_page=offer, on_header=on_header,
                                         base_total_pages=base_total)
                consumers[entry.common_stream] = btree
            else:
                btree, consumers[entry.common_stream] = _at_end_btree(
                    plan, index, pages, directory, offer, on_header)
        elif entry.name == ENGINE_ARCHIVE:
            for t in info.catalog.tables_of(di):
                table = tables.get(t.name)
                if table is None:
                    continue  # not in the last image: dropped, or not chosen
                part = table.reader(_part_key(index))
                first = table.reader(_part_key(index, True)) if at_end else None
                if part is None and first is None:
                    continue
                if t.table_id != table.spec.table_id:
                    raise ChainError(f"{_label(info)}: archive table {t.name!r} has "
                                     "another table id than in the last image")
                if not at_end:
                    assert part is not None
                    consumers[t.stream] = part
                    continue
                name = t.name
                where = f"{_label(info)}, at-end archive stream of table {name!r}"
                consumers[t.stream] = _Split(SectionSplitter(
                    STREAM_HEADER_SIZE, functools.partial(_archive_length, table=name),
                    _section(first), _section(part), where), [first, part])
    if btree is None:
        raise ChainError(f"{_label(info)} has no btree data")
    return btree, consumers


def _archive_length(head: bytes, table: str) -> int:
    """An archive at-end stream's initial section length (from its validated header)."""
    return archive_initial_length(head, table)


def _at_end_btree(plan: _Plan, index: int, pages: list[PageAssembler], directory: Path,
                  offer: Callable[[int, bytes], None],
                  on_header: Callable[[StreamHeader], None]) -> tuple[PageStreamReader, _Split]:
    """The readers of an "at end" image's btree stream: its initial section (a full or
    layer stream of S0, offered provisionally: the final section's newer copy of a page
    number replaces it) and its final section (a layer on S0, checked like any image's
    stream by ``on_header``). Returns the final section's reader and the consumer."""
    info = plan.infos[index]
    facts = plan.btree[index]
    initial = facts.initial
    assert initial is not None
    label = _label(info)

    def on_initial(h: StreamHeader) -> None:
        meta = h.meta
        expect = {"txnid": meta.txnid, "commit_seq": meta.commit_seq,
                  "root_hash": meta.root_hash.hex(), "total_pages": meta.total_pages,
                  "pages_sent": h.page_count}
        got = {"txnid": initial.txnid, "commit_seq": initial.commit_seq,
               "root_hash": initial.root_hash.hex(), "total_pages": initial.total_pages,
               "pages_sent": initial.pages_sent}
        if got != expect or meta.page_size != facts.page_size:
            raise CorruptionError(f"{label}: btree initial section meta {expect} differs from "
                                  f"the image's VP facts {got}")
        if index == len(plan.infos) - 1:
            pages.append(PageAssembler(directory / btree_format.DATA_FILE_NAME, meta))
        elif meta.page_size != pages[0].page_size:
            raise ChainError(f"{label} has page size {meta.page_size}, the chain's last "
                             f"image {pages[0].page_size}")

    def provisional(pgno: int, page: bytes) -> None:
        pages[0].offer(pgno, page, provisional=True)

    first = PageStreamReader(f"{label}, initial section",
                             expect_base=None if index == 0 else plan.txnids[index - 1],
                             on_page=provisional, on_header=on_initial,
                             base_total_pages=None if index == 0
                             else plan.btree[index - 1].total_pages)
    final = PageStreamReader(f"{label}, final section", expect_base=initial.txnid,
                             on_page=offer, on_header=on_header,
                             base_total_pages=initial.total_pages)

    def check() -> None:
        if (first.pages, first.pages_hash) != (initial.pages_sent, initial.pages_hash):
            raise CorruptionError(f"{label}: btree initial section has {first.pages} pages "
                                  f"(hash {first.pages_hash.hex()}), its VP facts say "
                                  f"{initial.pages_sent} ({initial.pages_hash.hex()})")

    where = f"{label}, btree at-end stream"
    # The initial section's pages are on disk before the final section may overwrite them.
    splitter = SectionSplitter(HEADER_SIZE, lambda h: btree_initial_length(h, where),
                               _section(first, lambda: pages[0].flush()), _section(final),
                               where)
    return final, _Split(splitter, [first, final], check)


# ====================================================================== restore
def restore_chain(paths: Sequence[ImagePath], dest: str | os.PathLike[str], *,
                  tables: Sequence[str] | None = None, force: bool = False,
                  progress: ProgressCallback | None = None, cancel: CancelToken = None,
                  check: bool = False) -> RestoreSummary:
    """Restore the chain ``paths`` (the full image, then its layers in order; any prefix of
    a chain is a chain) into a new database ``dest``, as of the last image's VP.

    One pass: the images are read once each, newest first; every btree page and archive
    byte of the last VP is written once. Then, as a single-image restore does, the
    database is proven (root hash equal to the last image's, archive row counts equal to
    its VP facts, the whole checker) in a temporary directory next to ``dest`` that is
    renamed into place only then; on any failure nothing is left at ``dest``. The restored
    database keeps the source's database id and records the last image as its origin.
    ``tables`` keeps only those tables. ``progress(bytes_read, total_bytes)``. A chain of
    one full image is that image's restore (:func:`lamina.online.restoring.restore`: its
    drivers prove the streams as they arrive, the checker runs only with ``check``).

    Raises ChainError (broken or misordered chain, a chain starting with a layer),
    NotFoundError, AlreadyExistsError (``dest`` exists, no ``force``; or is not a database
    or an empty directory), LockedError (a process has ``dest`` open), TableNotFoundError,
    CorruptionError & co., CheckFailedError, CancelledError, StorageError.
    """
    start = time.monotonic_ns()
    infos = _chain_in_order(paths)
    if len(infos) == 1:
        only = infos[0].path
        if isinstance(only, Path):
            return restore(only, dest, tables=tables, force=force, progress=progress,
                           cancel=cancel, check=check)
        with open_image_file(only) as stream:  # ranged reads of an object
            return restore(stream, dest, tables=tables, force=force, progress=progress,
                           cancel=cancel, check=check)
    plan = _plan(infos)

    def do_restore(tmp: Path) -> RestoreResult:
        done = _assemble(plan, tmp, progress, cancel)
        final = plan.final
        return RestoreResult(final.header, final.catalog, final.manifest, done.bytes_read,
                             done.chunks, done.raw_bytes)

    return restore_proven(dest, do_restore, tables, force=force, cancel=cancel,
                          started_ns=start, check=check)


# ====================================================================== verify
def _image_json(info: ImageInfo) -> dict[str, Any]:
    return {"path": str(info.path), "image_id": str(info.header.image_id),
            "kind": info.manifest.kind.name.lower(),
            "base_image_id": (str(info.manifest.base_image_id)
                              if info.manifest.kind == image_format.ImageKind.LAYER else None),
            "vp_commit_seq": info.vp.commit_seq, "size": info.size}


def _prove(assembled: _Assembled, directory: Path) -> None:
    """The Merkle tree and the whole checker over the assembled page file."""
    report = check_pages(directory / btree_format.DATA_FILE_NAME, assembled.meta)
    if not report.ok:
        raise CorruptionError(f"the chain's pages at its last VP fail the checker "
                              f"({len(report.findings)} problems): {report.findings[0]}")


def _prove_root(plan: _Plan) -> bytes:
    """The last image's root hash, proven: after the assembly proved the last image's VP
    facts against what it rebuilt (the Merkle root from the pages, each archive chain from
    its blocks, the metas against the facts), the root hash those facts give must be the
    one its manifest records. Returns it; CorruptionError otherwise."""
    final = plan.final
    recorded = final.manifest.root_hash
    prove_root_hash(recorded, image_root_inputs(final.catalog, final.manifest.vp.drivers,
                                                _label(final)), f"chain ending at {_label(final)}")
    return recorded


def verify_chain(paths: Sequence[ImagePath], *, deep: bool = False,
                 progress: ProgressCallback | None = None,
                 cancel: CancelToken = None) -> dict[str, Any]:
    """Prove a chain without restoring it; returns a JSON-ready report.

    Always: the links (:func:`order_chain`, in the given order) and every image whole
    (chunk checksums, stream hashes, manifest, footer). ``deep``: also assembles the last
    VP in one pass into a temporary directory that is not a database (a sparse page file
    and the archive files; removed afterwards; as much disk as a restore), decodes every
    stream it uses, and runs the btree checker on it from the root hash the last image
    recorded — the Merkle root at the last VP, computed from the chain's pages — and
    re-checks every archive table against its last meta.

    Raises ChainError, NotFoundError, CorruptionError (naming the image, stream and
    offset, or the checker's first finding), VersionError, UnsupportedError, StorageError,
    CancelledError (``cancel``, checked before every chunk, like a restore's).
    """
    infos = _chain_in_order(paths)
    out: dict[str, Any] = {"ok": True, "deep": deep, "images": [_image_json(i) for i in infos],
                           "image_id": str(infos[-1].header.image_id),
                           "database_id": str(infos[-1].header.database_id),
                           "vp": {"commit_seq": infos[-1].vp.commit_seq,
                                  "wall_ns": infos[-1].vp.wall_ns},
                           "root_hash": infos[-1].manifest.root_hash.hex(),
                           "btree_root_hash": _btree(_facts(infos[-1])).root_hash.hex()}
    encrypted = infos[0].header.sealed  # all or none (order_chain)
    out.update(encrypted=encrypted, authenticated=encrypted)  # deep: every chunk opened
    if not deep:
        total = sum(i.size for i in infos)
        done = chunks = 0
        authenticated = True
        for info in infos:
            report = verify_image(info.path, cancel=cancel)
            chunks += report.chunks
            done += report.size
            authenticated = authenticated and report.authenticated
            if progress is not None:
                progress(done, total)
        out.update(chunks=chunks, authenticated=encrypted and authenticated)
        if encrypted and not authenticated:
            del out["root_hash"]  # a VP fact: not shown without the key
        return out
    plan = _plan(infos)
    with tempfile.TemporaryDirectory(prefix="lamina-verify-") as tmp:
        assembled = _assemble(plan, Path(tmp), progress, cancel)
        if is_cancelled(cancel):
            raise CancelledError("cancelled")
        _prove(assembled, Path(tmp))
        _prove_root(plan)
    out.update(chunks=assembled.chunks, pages=assembled.pages_written,
               pages_read=assembled.pages_read)
    return out


# ====================================================================== combine
def _chunked(writer: ImageWriter, stream: int, pieces: Iterable[bytes], size: int,
             cancel: CancelToken = None) -> None:
    """Write ``pieces`` as chunks of ``size`` bytes on ``stream``; the final one is last.
    ``cancel`` is checked before every chunk (CancelledError)."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) > size:
            if is_cancelled(cancel):
                raise CancelledError("cancelled")
            writer.write_chunk(stream, bytes(buf[:size]), False)
            del buf[:size]
    writer.write_chunk(stream, bytes(buf), True)


def _archive_pieces(table: TableAssembler, vp_seq: int) -> Iterator[bytes]:
    """A whole (version 1) archive stream of an assembled table."""
    meta = table.meta
    assert meta is not None
    yield ArchiveStreamHeader(table.spec.table_id, vp_seq, meta.data_length,
                              xxhash.xxh3_64_intdigest(table.arm_bytes)).encode()
    yield table.arm_bytes
    with open(table.arz_path, "rb") as f:
        while piece := f.read(image_format.DEFAULT_BUF_SIZE):
            yield piece


def _combined_btree_facts(plan: _Plan, pages: FullStreamWriter) -> BtreeVpFacts:
    """The last image's btree VP facts for a full stream of every page: no base txnid,
    the full stream's page count and hash, and the images it was combined from."""
    return dataclasses.replace(plan.btree[-1], base_txnid=None, pages_sent=pages.pages_sent,
                               pages_hash=pages.pages_hash, initial=None,
                               combined_from=tuple(str(i.header.image_id) for i in plan.infos))


def _combined_archive_facts(plan: _Plan) -> ArchiveVpFacts:
    """The last image's archive VP facts for whole streams (no table has a base
    position)."""
    archive = plan.facts[-1].archive()
    assert archive is not None  # the catalog names the archive driver
    return dataclasses.replace(archive, begin_seq=None, tables={
        name: dataclasses.replace(t, base_position=None, initial=None)
        for name, t in archive.tables.items()})


def _combined_catalog(catalog: image_format.ImageCatalog) -> image_format.ImageCatalog:
    """The last image's catalog for a combined image: its streams are "at begin" ones
    (whole streams), whatever kind of drivers the chain's images were taken with."""
    return dataclasses.replace(catalog, drivers=tuple(
        dataclasses.replace(d, kind=DriverKind.AT_BEGIN) for d in catalog.drivers))


def combine_chain(paths: Sequence[ImagePath], out: str | os.PathLike[str], *, codec: str = "zstd",
                  progress: ProgressCallback | None = None, cancel: CancelToken = None,
                  image_id: uuid.UUID | None = None) -> ImageInfo:
    """Write ONE full image at ``out`` equivalent to the chain's last VP: same image format,
    kind full, the last image's VP (commit seq, wall clock, blocker time) and database id,
    the same catalog; its btree VP facts list the images it was made from
    (``combined_from``). Restoring it equals restoring the chain.

    ``image_id`` defaults to a new id. A synthetic full that *replaces* the chain's last
    image (a repository prune) passes that image's id: it is the same backup — same
    database, same VP, same btree txnid — so layers taken on it still link to it.

    The chain is read once (newest first) into a temporary directory next to ``out`` (not a
    database; removed afterwards), proven (checker from the last root hash, archive
    re-checks), then written as a full image: every non-free page in page order and every
    archive table whole. ``out`` is published only when complete (never replacing a file).
    Returns the new image's :class:`ImageInfo`. Raises AlreadyExistsError (``out``
    exists), NotFoundError (no such directory), ChainError, CorruptionError & co.,
    CancelledError, StorageError; on any error nothing is left at ``out``.
    """
    target = Path(out)
    if target.exists() or target.is_symlink():
        raise AlreadyExistsError(f"{target} exists")
    if not target.parent.is_dir():
        raise NotFoundError(f"directory {target.parent} does not exist")
    _combine_into(paths, target, target.parent, f".{target.name}.combine-", codec=codec,
                  progress=progress, cancel=cancel, image_id=image_id)
    return read_info(target)


def combine_chain_to(paths: Sequence[ImagePath], out: WritableStream, *, workdir: Path,
                     codec: str = "zstd", progress: ProgressCallback | None = None,
                     cancel: CancelToken = None,
                     image_id: uuid.UUID | None = None) -> WriteSummary:
    """:func:`combine_chain` into the binary stream ``out`` (an upload into a store, a
    :class:`~lamina.backup.verifying_stream.VerifyingStream`): the same image, the same
    proof of the assembled state before the first byte is written; the chain's working
    state (a sparse page file, archive files) goes to a temporary directory under
    ``workdir`` (removed afterwards), the image itself only to ``out`` (flushed, never
    closed). The caller publishes ``out`` once this returns (and proves the stream: a
    VerifyingStream). Returns what the image writer wrote (manifest, size). Raises
    NotFoundError (no ``workdir``), ChainError, CorruptionError & co., CancelledError,
    StorageError (the stream's errors too)."""
    if not Path(workdir).is_dir():
        raise NotFoundError(f"directory {workdir} does not exist")
    return _combine_into(paths, out, Path(workdir), ".combine-", codec=codec,
                         progress=progress, cancel=cancel, image_id=image_id)


def _combine_into(paths: Sequence[ImagePath], target: Path | WritableStream, workdir: Path,
                  prefix: str, *, codec: str, progress: ProgressCallback | None,
                  cancel: CancelToken, image_id: uuid.UUID | None) -> WriteSummary:
    """The body of :func:`combine_chain` and :func:`combine_chain_to`."""
    infos = _chain_in_order(paths)
    plan = _plan(infos)
    final = plan.final
    with tempfile.TemporaryDirectory(prefix=prefix, dir=workdir) as tmp:
        work = Path(tmp)
        assembled = _assemble(plan, work, progress, cancel)
        _prove(assembled, work)
        root = _prove_root(plan)
        header = image_format.ImageHeader(image_id or uuid.uuid4(), final.header.database_id,
                                          time.time_ns(), lamina_version(),
                                          incarnation=final.header.incarnation)
        pages = FullStreamWriter(work / btree_format.DATA_FILE_NAME, assembled.meta)
        with ImageWriter(target, header, _combined_catalog(final.catalog),
                         codec=parse_codec(codec)) as writer:
            vp_facts: list[dict[str, Any]] = []
            for di, entry in enumerate(final.catalog.drivers):
                if is_cancelled(cancel):
                    raise CancelledError("cancelled")
                if entry.name == ENGINE_BTREE:
                    _chunked(writer, entry.common_stream, pages.pieces(),
                             image_format.DEFAULT_BUF_SIZE, cancel)
                    vp_facts.append(_combined_btree_facts(plan, pages).to_json())
                else:  # archive (checked by _chain_in_order)
                    for t in final.catalog.tables_of(di):
                        _chunked(writer, t.stream,
                                 _archive_pieces(assembled.archive[t.name], final.vp.commit_seq),
                                 image_format.DEFAULT_BUF_SIZE, cancel)
                    vp_facts.append(_combined_archive_facts(plan).to_json())
            return writer.finish(vp_seq=final.vp.commit_seq, vp_wall_ns=final.vp.wall_ns,
                                 vp_facts=vp_facts,
                                 blocker_held_ns=final.manifest.blocker_held_ns,
                                 root_hash=root)


__all__ = [
    "combine_chain",
    "combine_chain_to",
    "order_chain",
    "restore_chain",
    "verify_chain",
]
