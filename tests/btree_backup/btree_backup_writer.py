"""Writer process for the consistency test: commits puts and deletes until told to stop,
logging after each commit one JSON line {"seq": commit seq, "ops": [[table, key, n]]}
where n >= 0 puts value(key, seq-independent tag, n) and n < 0 deletes the key.

Usage: python btree_backup_writer.py DB_DIR LOG STOP_FILE SEED
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import lamina

TABLES = ["w0", "w1", "w2"]


def value(key: str, tag: int, n: int) -> bytes:
    """The value a logged put wrote (reproducible from the log)."""
    return (f"{tag}:{key};".encode() * (n // 8 + 1))[:n]


def main() -> None:
    directory, log_path, stop, seed = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    rng = random.Random(int(seed))
    with lamina.open(directory, create=False, sync=False) as db, \
            open(log_path, "w", encoding="utf-8") as log:
        tag = 0
        while not stop.exists():
            ops: list[list[object]] = []
            with db.write(timeout=30) as w:
                for _ in range(rng.randrange(1, 30)):
                    table = rng.choice(TABLES)
                    key = f"k{rng.randrange(400):04d}"
                    if rng.random() < 0.3:
                        w.table(table).delete(key.encode())
                        ops.append([table, key, -1])
                    else:
                        n = rng.choice([1, 30, 120, 700, 2600])  # 2600: overflow at 1 KiB
                        tag += 1
                        w.table(table).put(key.encode(), value(key, tag, n))
                        ops.append([table, key, n, tag])
                seq = w.commit()
            log.write(json.dumps({"seq": seq, "ops": ops}) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
