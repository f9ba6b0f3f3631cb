"""The btree restore driver of "at end" images: two page streams, newest page wins.

An at-end btree stream (:mod:`lamina.engines.btree.at_end`; docs/format.md, "At-end
streams") is the *initial section* — a full stream of the snapshot S0 — followed by the
*final section* — a layer stream of the VP on S0's txnid. The driver splits them
(:class:`~lamina.core.sections.SectionSplitter`, the boundary taken from the initial
section's own validated header), parses each with the one
:class:`~lamina.engines.btree.stream.PageStreamReader` and writes every page at its offset
as it arrives: one pass over the image, and a page of the final section overwrites the
initial section's copy of that page number (the newer page wins). Page numbers that are
free at the VP may keep S0's bytes: nothing references them.

``end()`` checks both sections against the VP facts (S0's txnid, commit seq, page count
and the pages' hash; the VP's likewise), the final section's base against S0, writes the
VP meta into both meta slots, and proves the file: with a destination, the root page's hash
against the VP meta (the restore's proof then runs the whole checker over the database);
verifying only (``lamina verify --deep``), the pages are written to a temporary directory,
which the whole checker (every Merkle hash from the VP's root) reads and which is removed.

Concurrency: a driver is used by one thread (the kernel's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lamina.core import fileio
from lamina.core.driver import Buffer, RestoreDriver, RestoreFlags, Result, TableSpec
from lamina.core.sections import SectionSplitter
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.check import check_pages
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.pager import write_meta_file
from lamina.engines.btree.restore_driver import (
    DataFileOwner,
    check_root_hash,
    check_vp_facts,
    is_page_stream,
    vp_expectations,
)
from lamina.engines.btree.stream import (
    HEADER_SIZE,
    TRAILER_SIZE,
    PageStreamReader,
    StreamHeader,
    decode_stream_header,
)
from lamina.errors import CorruptionError


def initial_section_length(head: bytes, where: str) -> int:
    """Length of a btree at-end stream's initial section from its (validated) 256-byte
    header: header, page count x page size, trailer. Raises as
    :func:`~lamina.engines.btree.stream.decode_stream_header`."""
    header = decode_stream_header(head, where)
    return HEADER_SIZE + header.page_count * header.meta.page_size + TRAILER_SIZE


class BtreeAtEndRestoreDriver(DataFileOwner, RestoreDriver):
    """Rebuilds ``data.lamina`` from a full at-end btree stream (or proves it, writing to a
    temporary directory, when ``RestoreFlags.destination`` is None).

    Errors are raised (CorruptionError naming the section and stream offset, VersionError,
    UnsupportedError, ChainError, AlreadyExistsError, NotFoundError, StorageError); the
    kernel then calls ``cancel()``, which removes what was written.
    """

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        self._tables = list(tables)
        self._dest = flags.destination
        self._scratch: Path | None = None
        self.path: Path | None = None
        self._fd: int | None = None
        self._created = False
        self.initial: StreamHeader | None = None
        self.meta: btree_format.Meta | None = None
        self._first = PageStreamReader("initial section", expect_base=None,
                                       on_page=self._page, on_header=self._initial_header)
        self._second: PageStreamReader | None = None
        self._splitter = SectionSplitter(HEADER_SIZE,
                                         lambda h: initial_section_length(h, "initial section"),
                                         self._feed_first, self._feed_second,
                                         "btree at-end stream")
        self._run_start = -1
        self._run: list[bytes] = []

    # ---------------------------------------------------------------- protocol
    def begin(self) -> Result:
        """Create the data file exclusively (in a new temporary directory when verifying
        only). Raises AlreadyExistsError, NotFoundError, StorageError. OK."""
        if self._dest is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="lamina-verify-"))
            directory = self._scratch
        else:
            directory = self._dest
        self.path = directory / btree_format.DATA_FILE_NAME
        self._create_data_file(self._dest)
        return Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        """Consume one block: stream 0 carries both sections; table streams must be empty.
        OK. Raises as the class doc says."""
        if not is_page_stream(buffer):
            return Result.OK
        self._splitter.feed(buffer.data, buffer.last)
        self._flush()
        return Result.OK

    def _feed_first(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        self._first.feed(data, last)

    def _feed_second(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        if self._second is None:
            initial = self.initial
            assert initial is not None  # the first section ended, so it had a header
            self._flush()  # the initial section's pages are on disk before any overwrite
            self._second = PageStreamReader("final section", expect_base=initial.meta.txnid,
                                            on_page=self._page, on_header=self._final_header,
                                            base_total_pages=initial.meta.total_pages)
        self._second.feed(data, last)

    def _initial_header(self, header: StreamHeader) -> None:
        self.initial = header

    def _final_header(self, header: StreamHeader) -> None:
        initial = self.initial
        assert initial is not None
        if header.meta.page_size != initial.meta.page_size:
            raise CorruptionError("the final section's page size differs from the initial "
                                  "section's", where="btree at-end stream")
        self.meta = header.meta

    def _page(self, pgno: int, page: bytes) -> None:
        if self._run and pgno != self._run_start + len(self._run):
            self._flush()
        if not self._run:
            self._run_start = pgno
        self._run.append(page)

    def _flush(self) -> None:
        run, self._run = self._run, []
        if run and self._fd is not None:
            assert self.path is not None and self.initial is not None
            fileio.pwrite(self._fd, b"".join(run),
                          self._run_start * self.initial.meta.page_size, self.path)

    def end(self) -> Result:
        """Check both sections against the VP facts, write the VP meta, prove the file (see
        the module doc). OK. Raises CorruptionError, StorageError."""
        self._first.finish()
        second = self._second
        if second is None:
            raise CorruptionError("btree at-end stream has no final section")
        second.finish()
        meta, initial = self.meta, self.initial
        assert meta is not None and initial is not None
        self._check_facts(meta, initial, second)
        fd, path = self._fd, self.path
        assert fd is not None and path is not None
        self._flush()
        ps = meta.page_size
        if fileio.file_size(fd) > meta.total_pages * ps:  # never, as pages are never given back
            fileio.truncate(fd, meta.total_pages * ps, path)
        write_meta_file(fd, path, meta)
        self._fd = None
        fileio.close_fd(fd, path)
        if self._dest is None:
            report = check_pages(path, meta)
            if not report.ok:
                raise CorruptionError(f"the at-end image's pages at its VP fail the checker "
                                      f"({len(report.findings)} problems): "
                                      f"{report.findings[0]}")
            self._remove_scratch()
            return Result.OK
        root: bytes | None = None
        if meta.catalog.pgno:
            rfd = fileio.open_fd(path, os.O_RDONLY)
            try:
                root = fileio.pread(rfd, ps, meta.catalog.pgno * ps, path)
            finally:
                fileio.close_fd(rfd, path)
        check_root_hash(root, meta, path)
        fileio.fsync_dir(self._dest)
        return Result.OK

    def _check_facts(self, meta: btree_format.Meta, initial: StreamHeader,
                     final: PageStreamReader) -> None:
        facts = self.vp_facts
        if facts is None:
            return  # driven by hand, without set_vp_info: the metas are the reference
        if not isinstance(facts, BtreeVpFacts) or facts.initial is None:
            raise CorruptionError("the VP facts of an at-end btree driver lack the initial "
                                  "section's ('initial')", path=self.path)
        s0 = facts.initial
        expect = (
            *vp_expectations(meta, facts, final.pages, final.pages_hash),
            ("initial.txnid", initial.meta.txnid, s0.txnid),
            ("initial.commit_seq", initial.meta.commit_seq, s0.commit_seq),
            ("initial.root_hash", initial.meta.root_hash, s0.root_hash),
            ("initial.total_pages", initial.meta.total_pages, s0.total_pages),
            ("initial.pages_sent", self._first.pages, s0.pages_sent),
            ("initial.pages_hash", self._first.pages_hash, s0.pages_hash),
        )
        check_vp_facts(expect, self.path)

    def _remove_scratch(self) -> None:
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)

    def cancel(self) -> Result:
        """Close and remove the data file (and a verify's temporary directory); never
        raises (ERROR with ``error`` set if the file could not be removed)."""
        result = Result.OK
        failure = self._remove_data_file()
        if failure is not None:
            self.error = failure
            result = Result.ERROR
        self._remove_scratch()
        return result


__all__ = ["BtreeAtEndRestoreDriver", "initial_section_length"]
