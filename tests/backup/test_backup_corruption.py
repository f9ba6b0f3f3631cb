"""Every damaged image is detected by verify and refused by restore, naming where."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from backup_fakes import MemRestoreEngine, leftover_files
from image_surgery import small_image, split

from lamina.backup import image_format as F
from lamina.backup import read_info, restore_into_directory, run_restore, verify_image
from lamina.errors import CorruptionError, DataError, NotADatabaseError, VersionError


def refused_by_restore(image: bytes, tmp_path: Path) -> DataError:
    """Restore ``image`` into tmp_path/dest; assert it is refused cleanly; return the error."""
    log: list[tuple[str, str, bool]] = []
    engines = {n: MemRestoreEngine(n, log) for n in ("native", "snap")}
    with pytest.raises(DataError) as info:
        restore_into_directory(tmp_path / "dest", lambda tmp: run_restore(
            io.BytesIO(image), engines, tmp))
    assert not (tmp_path / "dest").exists()
    for engine in engines.values():
        for d in engine.drivers:
            calls = [m for w, m, _h in log if w == d.name]
            assert "end" not in calls
            assert calls == ["get_restore"] or calls[-1] == "cancel"
    return info.value


def test_small_image_is_valid(tmp_path: Path) -> None:
    image = small_image()
    assert verify_image(io.BytesIO(image)).chunks >= 6
    engines = {n: MemRestoreEngine(n) for n in ("native", "snap")}
    run_restore(io.BytesIO(image), engines, tmp_path)
    assert engines["native"].by_table()["#common:native"] == b"common"


@pytest.mark.parametrize("xor", [0xFF, 0x01, 0x80])
def test_every_single_byte_flip_is_detected(tmp_path: Path, xor: int) -> None:
    image = small_image(seed=1)
    pieces = split(image)
    chunk_start = len(pieces.header) + len(pieces.catalog)
    chunk_end = len(image) - F.FOOTER_SIZE - len(pieces.manifest)
    (tmp_path / "src").mkdir()
    for offset in range(len(image)):
        bad = bytearray(image)
        bad[offset] ^= xor
        bad_bytes = bytes(bad)
        with pytest.raises(DataError) as err:
            verify_image(io.BytesIO(bad_bytes))
        if offset < 8:
            assert isinstance(err.value, NotADatabaseError)
        elif offset < 10:  # the version field: a "newer" version, or a checksum failure
            assert isinstance(err.value, VersionError | CorruptionError)
        else:
            assert isinstance(err.value, CorruptionError), (offset, err.value)
            assert err.value.where, offset
        restore_error = refused_by_restore(bad_bytes, tmp_path)
        assert type(restore_error) is type(err.value)
        if not chunk_start <= offset < chunk_end:
            # header, catalog, manifest and footer are all that read_info reads: it sees it
            path = tmp_path / "src" / "img"
            path.write_bytes(bad_bytes)
            with pytest.raises(DataError):
                read_info(path)
    assert leftover_files(tmp_path) == ["src"]


def test_error_names_stream_chunk_and_offset() -> None:
    image = small_image(seed=2)
    pieces = split(image)
    second = len(pieces.header) + len(pieces.catalog) + len(pieces.chunks[0])
    head = F.decode_chunk_header(pieces.chunks[1][:F.CHUNK_HEAD_SIZE], second)
    bad = bytearray(image)
    bad[second + F.CHUNK_HEAD_SIZE] ^= 0x55  # first payload byte of the second chunk
    with pytest.raises(CorruptionError) as err:
        verify_image(io.BytesIO(bytes(bad)))
    assert err.value.where == f"stream {head.stream} chunk {head.seq} at offset {second}"
    assert "payload checksum" in str(err.value)


def test_truncation_at_every_length(tmp_path: Path) -> None:
    image = small_image(seed=3)
    path = tmp_path / "img"
    for n in range(len(image)):
        cut = image[:n]
        with pytest.raises(CorruptionError):
            verify_image(io.BytesIO(cut))
        path.write_bytes(cut)
        with pytest.raises(CorruptionError):
            read_info(path)
        if n % 7 == 0:  # restore runs the same reader; sample it
            refused_by_restore(cut, tmp_path)
    for extra in (b"\x00", b"LCHK", image[-F.FOOTER_SIZE:]):
        with pytest.raises(CorruptionError, match="after the footer"):
            verify_image(io.BytesIO(image + extra))


def test_random_flips_in_a_larger_image(tmp_path: Path) -> None:
    image = small_image(seed=4, size=30000)
    assert len(image) > 40000
    rng = random.Random(4)
    for i in range(2000):
        bad = bytearray(image)
        offset = rng.randrange(len(image))
        bad[offset] ^= rng.randrange(1, 256)
        with pytest.raises(DataError):
            verify_image(io.BytesIO(bytes(bad)))
        if i % 20 == 0:
            refused_by_restore(bytes(bad), tmp_path)


def test_multi_byte_damage_in_a_larger_image(tmp_path: Path) -> None:
    image = small_image(seed=5, size=30000)
    rng = random.Random(5)
    for i in range(400):
        bad = bytearray(image)
        kind = i % 4
        offset = rng.randrange(len(image))
        n = rng.randint(2, 64)
        if kind == 0:  # overwrite a run with random bytes
            bad[offset: offset + n] = rng.randbytes(len(bad[offset: offset + n]))
        elif kind == 1:  # insert bytes
            bad[offset:offset] = rng.randbytes(n)
        elif kind == 2:  # delete bytes
            del bad[offset: offset + n]
        else:  # swap two chunks' worth of bytes
            other = rng.randrange(len(image))
            a, b = sorted((offset, other))
            if a + n > b:
                b = min(len(image) - n, a + n)
            bad[a: a + n], bad[b: b + n] = image[b: b + n], image[a: a + n]
        if bytes(bad) == image:
            continue
        with pytest.raises(DataError):
            verify_image(io.BytesIO(bytes(bad)))
        if i % 10 == 0:
            refused_by_restore(bytes(bad), tmp_path)


def test_swapped_and_dropped_chunks_are_detected() -> None:
    pieces = split(small_image(seed=6))
    assert len(pieces.chunks) >= 4
    streams = [F.decode_chunk_header(c[:F.CHUNK_HEAD_SIZE], 0).stream for c in pieces.chunks]
    # two chunks of one stream (chunks of different streams may come in any order)
    i, j = next((i, j) for i in range(len(streams)) for j in range(i + 1, len(streams))
                if streams[i] == streams[j])
    swapped = list(pieces.chunks)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    for chunks in (pieces.chunks[1:],                                  # first chunk dropped
                   pieces.chunks[:-1],                                 # last chunk dropped
                   swapped,                                            # reordered
                   [*pieces.chunks, pieces.chunks[0]]):                # duplicated
        pieces_bad = split(small_image(seed=6))
        pieces_bad.chunks = chunks
        # resealed footer: only the sequence/last/manifest checks can catch it
        with pytest.raises(CorruptionError):
            verify_image(io.BytesIO(pieces_bad.build()))
    # chunks of different streams may be interleaved in any order: still valid
    other = next(k for k in range(1, len(streams)) if streams[k] != streams[0])
    moved = list(pieces.chunks)
    moved.insert(0, moved.pop(other))
    pieces.chunks = moved  # (chunks before `other` all belong to stream[0])
    verify_image(io.BytesIO(pieces.build()))
