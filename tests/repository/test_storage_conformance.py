"""One conformance suite for every Storage: a local directory and an S3 bucket prefix on a
real SeaweedFS server pass the same tests (as every restic backend runs the same tests).

put, streamed put of unknown length, get, ranged get, seekable open, list with prefix and
pagination past 1,000 keys, delete, create-if-absent (one winner among racing threads),
compare-and-swap, and publication: an object is visible only when complete.
"""

from __future__ import annotations

import io
import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lamina.errors import NotFoundError, StorageError, UsageError
from lamina.repository.ranged import RangedReader
from lamina.repository.s3client import S3Location
from lamina.repository.s3multipart import MIN_PART_SIZE
from lamina.repository.s3storage import S3Storage
from lamina.repository.storage import LocalStorage, Storage


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """The storage under test: small parts and read blocks, so a few MiB span several."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "store")
        return
    url = request.getfixturevalue("s3_url")
    s3 = S3Storage(S3Location.parse(url), part_size=MIN_PART_SIZE, concurrency=3,
                   read_block=1 << 20, read_parallel=3)
    yield s3
    s3.close()


class Trickle:
    """A stream of unknown length: ``total`` random bytes in reads of random sizes, failing
    with OSError after ``fail_after`` bytes if given."""

    def __init__(self, total: int, seed: int, fail_after: int | None = None) -> None:
        self.data = random.Random(seed).randbytes(total)
        self.pos = 0
        self.fail_after = fail_after
        self.rng = random.Random(seed + 1)
        self.reached = threading.Event()

    def read(self, size: int = -1, /) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            self.reached.set()
            raise OSError(5, "source failed")
        n = min(self.rng.randint(1, 300_000), len(self.data) - self.pos)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def test_put_get_stat_exists_delete(storage: Storage) -> None:
    assert not storage.exists("a/b")
    with pytest.raises(NotFoundError):
        storage.get_bytes("a/b")
    with pytest.raises(NotFoundError):
        storage.stat("a/b")
    storage.put_bytes("a/b", b"hello")
    assert storage.exists("a/b") and storage.get_bytes("a/b") == b"hello"
    first = storage.stat("a/b")
    assert first.size == 5 and first.key == "a/b"
    storage.put_bytes("a/b", b"other bytes")  # replaced whole
    assert storage.get_bytes("a/b") == b"other bytes"
    assert storage.stat("a/b").mtime_ns != first.mtime_ns or storage.stat("a/b").size != 5
    assert storage.get_bytes("a/b", limit=3)[:4] == b"othe"  # at most limit + 1 read
    storage.delete("a/b")
    storage.delete("a/b")  # idempotent
    assert not storage.exists("a/b")
    for bad in ("", "../x", "a//b", ".hidden", "a/./b"):
        with pytest.raises(UsageError):
            storage.put_bytes(bad, b"x")


def test_streamed_put_of_unknown_length(storage: Storage) -> None:
    source = Trickle(3 * MIN_PART_SIZE + 12345, seed=7)
    storage.put_stream("big/object", source)
    assert storage.get_bytes("big/object") == source.data
    assert storage.stat("big/object").size == len(source.data)
    # The same through a writer, in odd-sized writes.
    writer = storage.writer("big/written")
    view = memoryview(source.data)
    for start in range(0, len(view), 777_777):
        writer.write(bytes(view[start:start + 777_777]))
    writer.flush()
    writer.commit()
    assert storage.get_bytes("big/written") == source.data
    small = storage.writer("small")  # smaller than a part: one plain put
    small.write(b"tiny")
    small.commit()
    assert storage.get_bytes("small") == b"tiny"
    empty = storage.writer("empty")
    empty.commit()
    assert storage.get_bytes("empty") == b""


def test_ranged_get_and_seekable_open(storage: Storage) -> None:
    data = random.Random(3).randbytes(2 * MIN_PART_SIZE + 999)
    storage.put_bytes("r", data)
    for offset, length in ((0, 1), (5, 100), (len(data) - 10, 10), (len(data) - 10, 50),
                           (MIN_PART_SIZE - 3, 7)):
        assert storage.get_range("r", offset, length) == data[offset:offset + length]
    with storage.open("r") as f:
        assert f.seek(0, io.SEEK_END) == len(data)
        f.seek(len(data) - 100)
        assert f.read(100) == data[-100:]
        f.seek(0)
        got = bytearray()
        while block := f.read(65536):
            got += block
        assert bytes(got) == data  # a sequential pass (read-ahead) reads it whole
        f.seek(12345)
        assert f.read(10) == data[12345:12355]
    with pytest.raises(NotFoundError):
        storage.open("missing")


def test_list_with_prefix_and_pagination(storage: Storage) -> None:
    keys = [f"many/k{i:05d}" for i in range(1100)]  # more than one 1,000-key page
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: storage.put_bytes(k, k.encode()), keys))
    storage.put_bytes("manyother", b"x")
    storage.put_bytes("other/k", b"y")
    listed = storage.list("many/")
    assert [s.key for s in listed] == keys
    assert all(s.size == len(s.key) for s in listed)
    assert [s.key for s in storage.list("many/k0109")] == [f"many/k0109{i}" for i in range(10)]
    assert [s.key for s in storage.list("many")][-1] == "manyother"
    assert {s.key for s in storage.list("")} == {*keys, "manyother", "other/k"}
    assert storage.list("nothing/") == []


def test_create_if_absent_has_one_winner(storage: Storage) -> None:
    barrier = threading.Barrier(16)

    def race(i: int) -> bool:
        barrier.wait()
        return storage.create_if_absent("locks/one", f"owner {i}".encode())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(race, range(16)))
    assert results.count(True) == 1
    assert storage.get_bytes("locks/one") == f"owner {results.index(True)}".encode()
    assert not storage.create_if_absent("locks/one", b"late")


def test_compare_and_swap(storage: Storage) -> None:
    storage.put_bytes("cas", b"v1")
    data, token = storage.read_versioned("cas")
    assert data == b"v1"
    assert storage.replace_if("cas", token, b"v2")
    assert not storage.replace_if("cas", token, b"v3")  # stale token
    assert storage.get_bytes("cas") == b"v2"
    assert not storage.delete_if("cas", token)
    _, token2 = storage.read_versioned("cas")
    assert storage.delete_if("cas", token2)
    assert not storage.exists("cas")
    assert not storage.replace_if("cas", token2, b"gone")
    assert not storage.delete_if("cas", token2)
    with pytest.raises(NotFoundError):
        storage.read_versioned("cas")


def test_a_bounded_versioned_read_has_the_whole_objects_token(storage: Storage) -> None:
    big = os.urandom(100_000)
    storage.put_bytes("cas", big)
    head, token = storage.read_versioned("cas", limit=10)
    assert head == big[:11]
    assert token == storage.read_versioned("cas")[1]
    assert storage.replace_if("cas", token, b"small")
    storage.put_bytes("empty", b"")
    assert storage.read_versioned("empty", limit=10)[0] == b""
    assert storage.delete_if("empty", storage.read_versioned("empty", limit=10)[1])
    with pytest.raises(NotFoundError):
        storage.read_versioned("gone", limit=10)


def test_an_object_is_visible_only_when_complete(storage: Storage) -> None:
    storage.put_bytes("pub/old", b"old")
    writer = storage.writer("pub/new")
    writer.write(os.urandom(2 * MIN_PART_SIZE + 1))  # parts stored, not published
    assert not storage.exists("pub/new")
    assert [s.key for s in storage.list("pub/")] == ["pub/old"]
    writer.abort()
    writer.abort()  # idempotent
    assert not storage.exists("pub/new") and [s.key for s in storage.list("pub/")] == [
        "pub/old"]
    # A source that fails half-way publishes nothing, and leaves the old object whole.
    failing = Trickle(3 * MIN_PART_SIZE, seed=1, fail_after=2 * MIN_PART_SIZE)
    with pytest.raises((OSError, StorageError)):
        storage.put_stream("pub/old", failing)
    assert failing.reached.is_set()
    assert storage.get_bytes("pub/old") == b"old"
    assert [s.key for s in storage.list("pub/")] == ["pub/old"]


@given(st.binary(min_size=0, max_size=5000),
       st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 3000)), max_size=20))
def test_ranged_reader_matches_the_bytes(data: bytes, reads: list[tuple[int, int]]) -> None:
    """The read-ahead reader against its model (the bytes): any seeks and reads."""
    fetched: list[tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= len(data)
        fetched.append((offset, length))
        return data[offset:offset + length]

    with RangedReader(fetch, len(data), "model", block_size=64, parallel=3) as reader:
        for offset, n in reads:
            reader.seek(offset)
            assert reader.read(n) == data[offset:offset + n]
        reader.seek(0)
        assert reader.read() == data
