"""A layer cannot declare more pages than its base and its own pages can hold (issue 10,
item 4).

A full image's stream is bounded by its own pages (unsent pages must fit in its free
list); a layer's was not, so a layer whose (re-sealed) header and VP facts declared 2^31
pages made ``verify --deep`` and restore size a 2 GiB page bitmap and an 8 TiB sparse
file. The bound: at most the base's page count plus ``1 + P/4`` per page the layer sends
(every page past the base's count is new: sent, or listed in a sent free-list page). The
commands run in a child process under an address-space limit (1 GiB) and a file-size limit
(64 MiB), and must end with a CorruptionError (exit 4) naming the layer.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import lamina
from lamina.backup import image_format as IF
from lamina.backup.image_reader import ImageReader
from lamina.backup.image_writer import ImageWriter
from lamina.engines.btree import format as BF
from lamina.engines.btree.stream import HEADER_SIZE, decode_stream_header, encode_header
from support import cli

HUGE = 1 << 31
FILE_LIMIT = 64 << 20


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def _chain(tmp_path: Path) -> tuple[Path, Path]:
    db_path = tmp_path / "db"
    full, layer = tmp_path / "full.img", tmp_path / "layer.img"
    with lamina.open(db_path) as db:
        db.create_table("kv")
        db.create_table("log", "archive")
        with db.write() as txn:
            t = txn.table("kv")
            for i in range(500):
                t.put(b"key%05d" % i, b"value %d" % i)
        db.append_many("log", [b"row %d" % i for i in range(50)])
        db.backup(full)
        db.put("kv", b"key00007", b"changed")
        db.append("log", b"tail")
        db.backup(layer, base=full)
    return full, layer


def _reseal_layer(src: Path, dst: Path, total: int) -> None:
    """Rewrite ``src`` (a layer) with its btree stream header and VP facts declaring
    ``total`` pages; everything else (pages, archive streams, links) as it was, every
    checksum and hash valid."""
    with open(src, "rb") as f:
        reader = ImageReader(f, path=src)
        chunks = [(c.stream, bytes(c.data), c.last) for c in reader.chunks()]
        header, catalog, manifest = reader.header, reader.catalog, reader.manifest
    assert manifest is not None
    di = next(i for i, d in enumerate(catalog.drivers) if d.name == "btree")
    common = catalog.drivers[di].common_stream
    stream = b"".join(data for s, data, _last in chunks if s == common)
    h = decode_stream_header(stream[:HEADER_SIZE], "test")
    m = h.meta
    meta = BF.Meta(m.page_size, m.txnid, m.commit_seq, m.slot, total, m.next_table_id,
                   m.catalog, m.freelist, m.commit_ns)
    stream = encode_header(meta, h.page_count, base_txnid=h.base_txnid) + stream[HEADER_SIZE:]
    facts = [dict(d) for d in manifest.vp.drivers]
    facts[di]["total_pages"] = total
    with ImageWriter(dst, header, catalog, codec=IF.Codec.NONE) as writer:
        for s, data, last in chunks:
            if s != common:
                writer.write_chunk(s, data, last)
        step = 1 << 20
        for i in range(0, len(stream), step):
            writer.write_chunk(common, stream[i:i + step], i + step >= len(stream))
        layer = manifest.kind == IF.ImageKind.LAYER
        writer.finish(vp_seq=manifest.vp.commit_seq, vp_wall_ns=manifest.vp.wall_ns,
                      vp_facts=facts, base_image_id=manifest.base_image_id if layer else None,
                      base_vp_seq=manifest.base_vp_seq,
                      blocker_held_ns=manifest.blocker_held_ns, root_hash=manifest.root_hash)


def _largest_file(root: Path) -> int:
    return max((os.lstat(os.path.join(d, n)).st_size for d, _s, names in os.walk(root)
                for n in names), default=0)


def test_a_layer_declaring_a_huge_file_is_refused_at_once(tmp_path: Path) -> None:
    full, layer = _chain(tmp_path)
    evil = tmp_path / "evil.img"
    _reseal_layer(layer, evil, HUGE)
    sane = tmp_path / "sane.img"
    _reseal_layer(layer, sane, decode_pages(layer))  # the resealing itself keeps a good image
    proc = cli.run("verify", "--deep", str(full), str(sane), preexec_fn=_limits)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)

    for args in (("verify", "--deep", str(full), str(evil)),
                 ("restore", str(full), str(evil), "--to", str(tmp_path / "out"),
                  "--no-progress")):
        proc = cli.run(*args, preexec_fn=_limits)
        assert proc.returncode == 4, (args, proc.returncode, proc.stdout, proc.stderr)
        err = proc.stderr
        assert err.count("\n") == 1 and err.startswith("lamina: "), err
        assert f"btree layer declares {HUGE} pages" in err and "evil.img" in err, err
    assert not (tmp_path / "out").exists()
    assert _largest_file(tmp_path) < FILE_LIMIT


def decode_pages(image: Path) -> int:
    """The btree page count an image's VP facts record."""
    with open(image, "rb") as f:
        reader = ImageReader(f, path=image)
        for _c in reader.chunks():
            pass
        assert reader.manifest is not None
        di = next(i for i, d in enumerate(reader.catalog.drivers) if d.name == "btree")
        return int(reader.manifest.vp.drivers[di]["total_pages"])


def test_a_base_that_lies_about_its_size_costs_no_memory_before_it_is_read(
        tmp_path: Path) -> None:
    """The full image's facts and header (re-sealed) claim 2^31 - 1 pages, so its layer's
    2^31 passes the layer's own bound; the one-pass restore reads the layer first, and the
    full image's claim is refused only when its stream is reached. Meanwhile the page
    bitmap grew with the pages received, not the page count claimed."""
    full, layer = _chain(tmp_path)
    evil_full, evil_layer = tmp_path / "evil-full.img", tmp_path / "evil-layer.img"
    _reseal_layer(full, evil_full, HUGE - 1)
    _reseal_layer(layer, evil_layer, HUGE)
    for args in (("verify", "--deep", str(evil_full), str(evil_layer)),
                 ("restore", str(evil_full), str(evil_layer), "--to", str(tmp_path / "out"),
                  "--no-progress")):
        proc = cli.run(*args, preexec_fn=_limits)
        assert proc.returncode == 4, (args, proc.returncode, proc.stdout, proc.stderr)
        err = proc.stderr
        assert err.count("\n") == 1 and "free list could hold" in err, err
    assert not (tmp_path / "out").exists()
    assert _largest_file(tmp_path) < FILE_LIMIT
