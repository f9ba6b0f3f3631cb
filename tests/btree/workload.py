"""A deterministic write workload shared by the crash and multi-process tests.

``apply(txn_or_model, i)`` performs transaction number ``i`` (1-based) either on a real
write transaction or on a dict model, so a test can compute the exact expected state after
any number of committed transactions.

Run as a script: ``python workload.py DIR LOG [N]`` commits transactions 1..N (default
forever), appending "i\\n" to LOG (flushed) after each commit returns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import opened

TABLES = ("t", "u")


def ops(i: int) -> list[tuple[str, str, bytes, bytes | None]]:
    """(op, table, key, value) of transaction ``i``."""
    out: list[tuple[str, str, bytes, bytes | None]] = []
    for j in range(25):
        k = b"k%05d" % ((i * 37 + j * 101) % 2000)
        out.append(("put", TABLES[j % 2], k, b"%d:%d;" % (i, j) * (1 + (i + j) % 7)))
    for j in range(8):
        out.append(("del", TABLES[j % 2], b"k%05d" % ((i * 11 + j * 53) % 2000), None))
    if i % 5 == 0:
        out.append(("put", "t", b"big%03d" % (i % 40), bytes([i % 256]) * (3000 + 17 * i)))
    return out


def apply_model(model: dict[str, dict[bytes, bytes]], i: int) -> None:
    """Apply transaction ``i`` to a dict model."""
    for op, table, k, v in ops(i):
        if op == "put":
            assert v is not None
            model[table][k] = v
        else:
            model[table].pop(k, None)


def model_after(n: int) -> dict[str, dict[bytes, bytes]]:
    """Expected contents after transactions 1..n committed."""
    model: dict[str, dict[bytes, bytes]] = {t: {} for t in TABLES}
    for i in range(1, n + 1):
        apply_model(model, i)
    return model


def main() -> None:
    directory, log = Path(sys.argv[1]), Path(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 1 << 60
    page_size = int(os.environ.get("LAMINA_TEST_PAGE_SIZE", "1024"))
    with opened(directory, page_size=page_size) as store, open(log, "a") as out:
        with store.begin_read() as r:
            done = 0 if r.catalog_get("t") is None else r.table("t").get(b"__n") or b"0"
        start = int(done) + 1
        for i in range(start, limit + 1):
            with store.begin_write(timeout=30) as w:
                if i == 1:
                    for t in TABLES:
                        w.create_table(t)
                tables = {t: w.table(t) for t in TABLES}
                for op, table, k, v in ops(i):
                    if op == "put":
                        assert v is not None
                        tables[table].put(k, v)
                    else:
                        tables[table].delete(k)
                tables["t"].put(b"__n", b"%d" % i)
            out.write(f"{i}\n")
            out.flush()


if __name__ == "__main__":
    main()
