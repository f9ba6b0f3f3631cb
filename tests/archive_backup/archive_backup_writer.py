"""Writer process for the frozen-VP test: appends to archive tables until told to stop,
logging after each commit one JSON line {"table": T, "seq": commit seq, "first": first row
id, "n": rows}; every row is ``archive_backup_helpers.row(T, id)``.

Usage: python archive_backup_writer.py DB_DIR LOG STOP_FILE TABLE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from archive_backup_helpers import row

import lamina


def main() -> None:
    directory, log_path, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tables = sys.argv[4:]
    with lamina.open(directory, create=False, sync=False) as db, \
            open(log_path, "w", encoding="utf-8") as log:
        i = 0
        while not stop.exists():
            name = tables[i % len(tables)]
            n = 1 + i % 9
            with db.archive(name).writer(timeout=30) as w:
                ids = w.append_many([b""] * n)  # ids first, then the real rows
                w.abort()
                w.append_many([row(name, r) for r in ids])
                seq = w.commit()
            log.write(json.dumps({"table": name, "seq": seq, "first": ids[0], "n": n}) + "\n")
            log.flush()
            i += 1


if __name__ == "__main__":
    main()
