"""Hypothesis state machine: an ArchiveTable against a list model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lamina.core.lockfile import LockFile
from lamina.engines.archive import Appender, ArchiveTable
from lamina.errors import NotFoundError

rows_st = st.binary(max_size=120)


class ArchiveMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lamina-archive-sm-"))
        self.lf = LockFile.open(self.dir, init=lambda lf: lf.set_commit_seq(0))
        self.model: list[bytes] = []
        self.pending: list[bytes] = []
        self.w: Appender | None = None
        self.table: ArchiveTable | None = None
        self.last_seq = 0

    @initialize(codec=st.sampled_from(["zstd", "zlib", "none"]),
                block_target=st.integers(min_value=1, max_value=400))
    def create(self, codec: str, block_target: int) -> None:
        ArchiveTable.create(self.dir, "t", 9, codec=codec, block_target=block_target,
                            sync=False)
        self.table = ArchiveTable.open(self.dir, "t", 9, self.lf, sync=False)

    @property
    def t(self) -> ArchiveTable:
        assert self.table is not None
        return self.table

    def writer(self) -> Appender:
        if self.w is None:
            self.w = self.t.writer(timeout=1)
        return self.w

    @rule(row=rows_st)
    def append(self, row: bytes) -> None:
        rid = self.writer().append(row)
        self.pending.append(row)
        assert rid == len(self.model) + len(self.pending)

    @rule(rows=st.lists(rows_st, max_size=30))
    def append_many(self, rows: list[bytes]) -> None:
        ids = self.writer().append_many(rows)
        start = len(self.model) + len(self.pending) + 1
        self.pending += rows
        assert ids == list(range(start, start + len(rows)))

    @precondition(lambda self: self.w is not None)
    @rule()
    def commit(self) -> None:
        assert self.w is not None
        seq = self.w.commit()
        if self.pending:
            assert seq > self.last_seq
            self.last_seq = seq
        else:
            assert seq == 0
        self.model += self.pending
        self.pending = []

    @precondition(lambda self: self.w is not None)
    @rule()
    def abort(self) -> None:
        assert self.w is not None
        self.w.abort()
        self.pending = []

    @precondition(lambda self: self.w is not None)
    @rule()
    def release_writer(self) -> None:
        assert self.w is not None
        self.w.close()
        self.w = None
        self.pending = []

    @precondition(lambda self: self.w is None)
    @rule(rows=st.lists(rows_st, min_size=1, max_size=10))
    def table_append_many(self, rows: list[bytes]) -> None:
        ids = self.t.append_many(rows)
        assert ids[0] == len(self.model) + 1
        self.model += rows

    @rule()
    def reopen(self) -> None:
        if self.w is not None:
            self.w.close()
            self.w = None
            self.pending = []
        self.t.close()
        self.table = ArchiveTable.open(self.dir, "t", 9, self.lf, sync=False)

    @precondition(lambda self: self.w is None)
    @rule(block_target=st.one_of(st.none(), st.integers(min_value=1, max_value=2000)))
    def optimize(self, block_target: int | None) -> None:
        before = self.t.stat()["generation"]
        stats = self.t.optimize(block_target=block_target)
        assert stats["generation"] == before + 1
        assert stats["rows"] == len(self.model)
        self.last_seq = stats["commit_seq"]

    @rule(data=st.data())
    def scan_from(self, data: st.DataObject) -> None:
        start = data.draw(st.integers(min_value=0, max_value=len(self.model) + 2))
        got = list(self.t.scan(start))
        first = max(start, 1)
        assert got == list(enumerate(self.model[first - 1:], start=first))

    @precondition(lambda self: self.w is not None)
    @rule(extra=st.lists(rows_st, min_size=1, max_size=5))
    def scan_isolated_from_commit(self, extra: list[bytes]) -> None:
        it = self.t.scan()
        snapshot = list(self.model)
        self.append_many(extra)
        self.commit()
        assert [r for _i, r in it] == snapshot

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        row_id = data.draw(st.integers(min_value=-1, max_value=len(self.model) + 2))
        if 1 <= row_id <= len(self.model):
            assert self.t.get(row_id) == self.model[row_id - 1]
        else:
            with pytest.raises(NotFoundError):
                self.t.get(row_id)

    @invariant()
    def count_matches(self) -> None:
        if self.table is not None:
            assert self.t.count() == len(self.model)

    def teardown(self) -> None:
        try:
            if self.w is not None:
                self.w.close()
            if self.table is not None:
                report = self.t.check()
                assert report.ok, [str(f) for f in report.findings]
                st_ = self.t.stat()
                assert st_["rows"] == len(self.model)
                assert st_["raw_bytes"] == sum(map(len, self.model))
                self.t.close()
        finally:
            self.lf.close()
            shutil.rmtree(self.dir, ignore_errors=True)


ArchiveMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                            deadline=None)
TestArchiveMachine = ArchiveMachine.TestCase
