"""The btree native restore driver: rebuilds ``data.lamina`` from a full btree stream.

The stream (:mod:`lamina.engines.btree.stream`) is parsed incrementally (any buffer
boundaries) by the one :class:`~lamina.engines.btree.stream.PageStreamReader`, which checks
every page (checksum, page number, order, txnid, type); the driver proves the Merkle tree
while streaming (:class:`~lamina.engines.btree.proof.MerkleProof`: every branch record's
hash and txnid, the catalog's table roots, overflow chains and values, every page
referenced exactly once) and writes the pages at ``pgno * page_size``; each page is hashed
once, and the hashing and the writes run on a second thread one batch behind the parse
(:mod:`lamina.engines.btree.page_pipeline`). ``end()`` checks the root hash against
the meta and every VP fact, then writes the meta record into both meta slots and syncs.
With ``RestoreFlags.destination`` None it proves the same and writes nothing (``lamina
verify --deep``). Layer streams are restored only as part of a chain
(:mod:`lamina.engines.btree.layers`, :mod:`lamina.online.chain`).

Concurrency: a driver is used by one thread (the kernel's; its pipeline's worker is its
own); the file it writes is not visible to anyone until the restore is published.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from lamina.core import fileio
from lamina.core.catalog import ENGINE_BTREE
from lamina.core.driver import Buffer, RestoreDriver, RestoreFlags, Result, TableSpec
from lamina.engines.btree import format as btree_format
from lamina.engines.btree.facts import BtreeVpFacts
from lamina.engines.btree.page import page_hash
from lamina.engines.btree.page_pipeline import PagePipeline
from lamina.engines.btree.pager import write_meta_file
from lamina.engines.btree.proof import MerkleProof
from lamina.engines.btree.stream import PageStreamReader, StreamHeader
from lamina.errors import (
    AlreadyExistsError,
    CorruptionError,
    NotFoundError,
    StorageError,
)


def is_page_stream(buffer: Buffer) -> bool:
    """Whether ``buffer`` is of local stream 0, the btree page stream. The table streams of
    a btree driver are always empty: False for an empty one, CorruptionError for one that
    carries bytes."""
    if buffer.stream == 0:
        return True
    if len(buffer.data):
        raise CorruptionError(f"{len(buffer.data)} bytes on btree table stream "
                              f"{buffer.stream}, which is always empty")
    return False


def vp_expectations(meta: btree_format.Meta, facts: BtreeVpFacts, pages: object,
                    pages_hash: object) -> tuple[tuple[str, object, object], ...]:
    """The (key, restored value, VP fact) triples of a full btree stream ending in ``meta``
    after ``pages`` pages hashing to ``pages_hash`` (no base txnid), for
    :func:`check_vp_facts`."""
    return (
        ("txnid", meta.txnid, facts.txnid),
        ("commit_seq", meta.commit_seq, facts.commit_seq),
        ("root_hash", meta.root_hash, facts.root_hash),
        ("page_size", meta.page_size, facts.page_size),
        ("total_pages", meta.total_pages, facts.total_pages),
        ("pages_sent", pages, facts.pages_sent),
        ("pages_hash", pages_hash, facts.pages_hash),
        ("base_txnid", None, facts.base_txnid),
    )


def check_vp_facts(expect: Iterable[tuple[str, object, object]], path: Path | None) -> None:
    """Raise CorruptionError (naming ``path``) for the first (key, value, fact) of
    ``expect`` whose value differs from the fact: ``btree KEY VALUE differs from the VP
    facts' FACT``, bytes shown in hex."""
    for key, value, fact in expect:
        if value != fact:
            raise CorruptionError(f"btree {key} {_shown(value)} differs from the VP "
                                  f"facts' {_shown(fact)}", path=path)


def check_root_hash(root: bytes | None, meta: btree_format.Meta, path: Path | None) -> None:
    """Check the restored root page ``root`` (None: there is none, the hash is
    ``ZERO_HASH``) hashes to ``meta``'s root hash. Raises CorruptionError naming ``path``."""
    got = page_hash(root) if root is not None else btree_format.ZERO_HASH
    if got != meta.root_hash:
        raise CorruptionError(f"restored root hash {got.hex()} differs from the meta's "
                              f"{meta.root_hash.hex()}", path=path)


class DataFileOwner:
    """Mixin of the btree restore drivers: the data file ``path`` they create (open in
    ``_fd``) and remove again on cancel (only if ``_created``: never someone else's)."""

    path: Path | None
    _fd: int | None
    _created: bool

    def _create_data_file(self, destination: Path | None) -> None:
        """Create ``path`` exclusively, open read-write in ``_fd``. Raises
        AlreadyExistsError (it exists), NotFoundError (no ``destination`` directory),
        StorageError."""
        assert self.path is not None
        try:
            self._fd = fileio.open_fd(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            raise AlreadyExistsError(f"{self.path} already exists") from None
        except FileNotFoundError:
            raise NotFoundError(f"restore destination {destination} does not exist") from None
        self._created = True

    def _remove_data_file(self) -> StorageError | None:
        """Close ``_fd`` (a failure ignored) and unlink the file if this driver created it;
        never raises: returns the StorageError of an unlink that failed, else None."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(StorageError):
                fileio.close_fd(fd, self.path)
        if self._created and self.path is not None:
            self._created = False
            try:
                fileio.unlink(self.path, missing_ok=True)
            except StorageError as exc:
                return exc
        return None


class BtreeRestoreDriver(DataFileOwner, RestoreDriver):
    """Rebuilds ``data.lamina`` in ``RestoreFlags.destination`` from a full btree stream
    (or, with destination None, proves the stream and writes nothing).

    Buffers may split the header, pages and trailer anywhere. Every check names the stream
    offset of the failing record. Errors are raised (CorruptionError, VersionError,
    UnsupportedError, ChainError, AlreadyExistsError, NotFoundError, StorageError); the
    kernel then calls ``cancel()``, which removes the data file.
    """

    def __init__(self, tables: Sequence[TableSpec], flags: RestoreFlags) -> None:
        self._tables = list(tables)
        self._dest = flags.destination
        self.path: Path | None = (None if self._dest is None
                                  else self._dest / btree_format.DATA_FILE_NAME)
        self._fd: int | None = None
        self._created = False
        self._reader = PageStreamReader("", expect_base=None, on_page=self._page,
                                        on_header=self._header)
        self.meta: btree_format.Meta | None = None
        self._proof: MerkleProof | None = None
        self._root_page: bytes | None = None
        self._pipeline: PagePipeline | None = None

    @property
    def pages_received(self) -> int:
        """Pages of the stream received and checked so far."""
        return self._reader.pages

    # ---------------------------------------------------------------- protocol
    def begin(self) -> Result:
        """Create the data file exclusively. Raises AlreadyExistsError (it exists),
        NotFoundError (no destination directory), StorageError. OK."""
        if self.path is None:
            return Result.OK
        self._create_data_file(self._dest)
        return Result.OK

    def send_data(self, buffer: Buffer) -> Result:
        """Consume one block: stream 0 carries the page stream; table streams must be
        empty. Returns OK. Raises CorruptionError (naming the stream offset), VersionError
        (a newer stream version), UnsupportedError (unknown header flags), ChainError (a
        layer stream), StorageError."""
        if not is_page_stream(buffer):
            return Result.OK
        self._reader.feed(buffer.data, buffer.last)
        if self._pipeline is not None:
            self._pipeline.submit()
        return Result.OK

    def _header(self, header: StreamHeader) -> None:
        self.meta = header.meta
        # Overflow payloads are read back from the written file (the pending run is always
        # flushed before the proof finishes); without a file the proof spools them.
        read = self._read_written if self._fd is not None else None
        self._proof = MerkleProof(header.meta, "btree stream", read)
        self._pipeline = PagePipeline(self._proven, header.meta.page_size, self._fd,
                                      self.path)

    def _read_written(self, pgno: int) -> bytes:
        assert self._fd is not None and self.meta is not None
        ps = self.meta.page_size
        return fileio.pread(self._fd, ps, pgno * ps, self.path)

    def _page(self, pgno: int, page: bytes) -> None:
        """A page the stream reader checked: hashed and written on the pipeline's worker,
        proven (:meth:`_proven`) one batch later, in stream order."""
        assert self._pipeline is not None
        self._pipeline.add(pgno, page, self._reader.page_offset)

    def _proven(self, pgno: int, page: bytes, digest: bytes, offset: int) -> None:
        proof, meta = self._proof, self.meta
        assert proof is not None and meta is not None
        proof.page(pgno, page, digest, lambda: self._reader.location(offset))
        if pgno == meta.catalog.pgno:
            self._root_page = page

    def end(self) -> Result:
        """Prove the snapshot (Merkle references, the image's tables in the catalog, the
        root hash against the meta, every VP fact against the stream), then extend the file
        to the snapshot's size, write the meta record into both meta slots and sync.
        Returns OK. Raises CorruptionError, StorageError."""
        self._reader.finish()
        meta, proof, pipeline = self.meta, self._proof, self._pipeline
        assert meta is not None and proof is not None and pipeline is not None
        pipeline.drain()  # every page written and proven
        pipeline.close()
        proof.finish()
        self._check_facts(meta)
        for t in self._tables:
            entry = proof.catalog.get(t.name)
            if entry is None or entry.engine != ENGINE_BTREE or entry.table_id != t.table_id:
                raise CorruptionError(f"the image lists btree table {t.name!r} (id "
                                      f"{t.table_id}), the restored catalog does not have it",
                                      path=self.path)
        root = self._root_page
        if self._fd is not None and meta.catalog.pgno:
            # The root hash is recomputed from the page as it is on disk now.
            assert self.path is not None
            root = fileio.pread(self._fd, meta.page_size, meta.catalog.pgno * meta.page_size,
                                self.path)
        check_root_hash(root, meta, self.path)
        if self._fd is not None:
            self._write_file(meta)
        return Result.OK

    def _check_facts(self, meta: btree_format.Meta) -> None:
        """Every VP fact against what the stream holds. No facts at all (a driver driven by
        hand, without ``set_vp_info``): the meta is the only reference."""
        facts = self.vp_facts
        if facts is None:
            return
        if not isinstance(facts, BtreeVpFacts):
            raise CorruptionError(f"the VP facts of the btree driver are not btree facts "
                                  f"({type(facts).__name__})", path=self.path)
        check_vp_facts(vp_expectations(meta, facts, self._reader.pages,
                                       self._reader.pages_hash), self.path)

    def _write_file(self, meta: btree_format.Meta) -> None:
        fd, path = self._fd, self.path
        assert fd is not None and path is not None and self._dest is not None
        # Trailing free pages were not sent: write_meta_file extends the file (sparse).
        write_meta_file(fd, path, meta)
        self._fd = None
        fileio.close_fd(fd, path)
        fileio.fsync_dir(self._dest)

    def cancel(self) -> Result:
        """Close and remove the data file this driver created; never raises (ERROR with
        ``error`` set if the file could not be removed)."""
        result = Result.OK
        if self._pipeline is not None:
            self._pipeline.close()  # before the file it writes is closed
        if self._proof is not None:
            self._proof.close()
        failure = self._remove_data_file()
        if failure is not None:
            self.error = failure
            result = Result.ERROR
        return result


def _shown(value: object) -> str:
    """A fact as messages show it: bytes in hex, anything else as ``repr``."""
    return repr(value.hex()) if isinstance(value, bytes) else repr(value)


__all__ = [
    "BtreeRestoreDriver",
    "DataFileOwner",
    "check_root_hash",
    "check_vp_facts",
    "is_page_stream",
    "vp_expectations",
]
