"""Model-based test: the btree engine against a dict, with commit/abort/reopen, several
tables, cursors, ranges, prefixes and counts; the checker must stay clean."""

from __future__ import annotations

import shutil
import tempfile
from bisect import bisect_left
from pathlib import Path

import hypothesis.strategies as st
from helpers import assert_clean, init_lockfile
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lamina.engines.btree import BtreeStore

TABLES = ["a", "b", "c"]
# Small alphabet -> shared prefixes, collisions, deletes that hit.
keys = st.binary(min_size=0, max_size=12).map(lambda b: bytes(x % 4 + 97 for x in b))
big_keys = st.binary(min_size=1, max_size=128)
values = st.one_of(st.binary(max_size=40), st.binary(min_size=200, max_size=3000))


class BtreeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lamina-sm-"))
        self.committed: dict[str, dict[bytes, bytes]] = {}
        self.model: dict[str, dict[bytes, bytes]] = {}
        self._open()
        self.w = self.store.begin_write()

    def _open(self) -> None:
        self.lf = init_lockfile(self.dir)
        self.store = BtreeStore.open(self.dir, self.lf, create=True, readonly=False,
                                     page_size=1024, sync=False)

    def _close(self) -> None:
        self.store.close()
        self.lf.close()

    def teardown(self) -> None:
        if not self.w.closed:
            self.w.abort()
        assert_clean(self.store)
        self._close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ table management
    @rule(name=st.sampled_from(TABLES))
    def create(self, name: str) -> None:
        if name in self.model:
            return
        self.w.create_table(name)
        self.model[name] = {}

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.w.drop_table(name)
        del self.model[name]

    def _table(self, data: st.DataObject) -> tuple[str, dict[bytes, bytes]]:
        name = data.draw(st.sampled_from(sorted(self.model)))
        return name, self.model[name]

    # ------------------------------------------------------------ writes
    @precondition(lambda self: self.model)
    @rule(data=st.data(), k=keys, v=values)
    def put(self, data: st.DataObject, k: bytes, v: bytes) -> None:
        name, m = self._table(data)
        self.w.table(name).put(k, v)
        m[k] = v

    @precondition(lambda self: self.model)
    @rule(data=st.data(), k=big_keys, v=st.binary(max_size=8))
    def put_long_key(self, data: st.DataObject, k: bytes, v: bytes) -> None:
        name, m = self._table(data)
        self.w.table(name).put(k, v)
        m[k] = v

    @precondition(lambda self: self.model)
    @rule(data=st.data(), n=st.integers(1, 150), seed=st.integers(0, 10**6),
          vlen=st.integers(0, 60))
    def put_many(self, data: st.DataObject, n: int, seed: int, vlen: int) -> None:
        name, m = self._table(data)
        t = self.w.table(name)
        for i in range(n):
            k = b"%06d" % ((seed + i * 7919) % 5000)
            v = bytes([i % 251]) * vlen
            t.put(k, v)
            m[k] = v

    @precondition(lambda self: self.model)
    @rule(data=st.data(), k=keys)
    def delete(self, data: st.DataObject, k: bytes) -> None:
        name, m = self._table(data)
        assert self.w.table(name).delete(k) == (k in m)
        m.pop(k, None)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), frac=st.floats(0.1, 1.0))
    def delete_many(self, data: st.DataObject, frac: float) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, m in self.model.items() if m)))
        m = self.model[name]
        t = self.w.table(name)
        victims = sorted(m)[: max(1, int(len(m) * frac))]
        for k in victims:
            assert t.delete(k)
            del m[k]

    @precondition(lambda self: any(not m for m in self.model.values()))
    @rule(data=st.data(), n=st.integers(0, 400), vlen=st.integers(0, 300))
    def bulk_load(self, data: st.DataObject, n: int, vlen: int) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, m in self.model.items() if not m)))
        items = [(b"bulk%05d" % i, bytes([i % 256]) * vlen) for i in range(n)]
        assert self.w.table(name).bulk_load(items) == n
        self.model[name].update(items)

    # ------------------------------------------------------------ transactions
    @rule()
    def commit(self) -> None:
        self.w.commit()
        self.committed = {n: dict(m) for n, m in self.model.items()}
        assert_clean(self.store)
        self.w = self.store.begin_write()

    @rule()
    def abort(self) -> None:
        self.w.abort()
        self.model = {n: dict(m) for n, m in self.committed.items()}
        self.w = self.store.begin_write()

    @rule()
    def reopen(self) -> None:
        self.w.commit()
        self.committed = {n: dict(m) for n, m in self.model.items()}
        self._close()
        self._open()
        assert_clean(self.store)
        with self.store.begin_read() as r:
            assert sorted(e.name for e in r.catalog()) == sorted(self.model)
            for name, m in self.model.items():
                assert dict(r.table(name).items()) == m
        self.w = self.store.begin_write()

    # ------------------------------------------------------------ reads
    @precondition(lambda self: self.model)
    @rule(data=st.data(), k=keys)
    def get(self, data: st.DataObject, k: bytes) -> None:
        name, m = self._table(data)
        t = self.w.table(name)
        assert t.get(k) == m.get(k)
        assert (k in t) == (k in m)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), lo=st.none() | keys, hi=st.none() | keys, rev=st.booleans())
    def ranges(self, data: st.DataObject, lo: bytes | None, hi: bytes | None,
               rev: bool) -> None:
        name, m = self._table(data)
        t = self.w.table(name)
        want = sorted((k, v) for k, v in m.items()
                      if (lo is None or k >= lo) and (hi is None or k < hi))
        if rev:
            want.reverse()
        assert list(t.items(lo, hi, reverse=rev)) == want
        assert t.count(lo, hi) == len(want)
        assert len(t) == len(m)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), p=keys)
    def prefix(self, data: st.DataObject, p: bytes) -> None:
        name, m = self._table(data)
        want = sorted((k, v) for k, v in m.items() if k.startswith(p))
        assert list(self.w.table(name).prefix(p)) == want

    @precondition(lambda self: self.model)
    @rule(data=st.data(), k=keys, moves=st.lists(st.booleans(), max_size=8),
          start=st.sampled_from(["first", "last", "seek"]))
    def cursor_walk(self, data: st.DataObject, k: bytes, moves: list[bool], start: str) -> None:
        name, m = self._table(data)
        order = sorted(m)
        with self.w.table(name).cursor() as c:
            if start == "first":
                ok, pos = c.first(), 0
            elif start == "last":
                ok, pos = c.last(), len(order) - 1
            else:
                ok, pos = c.seek(k), bisect_left(order, k)
            for fwd in [*moves, None]:
                assert ok == (0 <= pos < len(order))
                if ok:
                    assert c.item() == (order[pos], m[order[pos]])
                if fwd is None or not ok:
                    break
                ok = c.next() if fwd else c.prev()
                pos += 1 if fwd else -1

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def iterate_while_writing(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, m in self.model.items() if m)))
        m = self.model[name]
        t = self.w.table(name)
        seen = []
        for k, _v in t.items():
            seen.append(k)
            if len(seen) % 3 == 0:
                t.delete(k)
                del m[k]
            t.put(k + b"\x00", b"n")  # inserted after k: must be visited next
            m[k + b"\x00"] = b"n"
            if len(seen) > 30:
                break
        assert seen == sorted(seen) and len(set(seen)) == len(seen)

    @invariant()
    def lengths(self) -> None:
        if self.w.closed:
            return
        for name, m in self.model.items():
            assert len(self.w.table(name)) == len(m)


BtreeMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestBtreeMachine = BtreeMachine.TestCase
