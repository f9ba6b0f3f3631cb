"""A process that holds a database open, for the restore --force tests: ``python holder.py
MODE DB``. It reports on stdout (one line each, flushed) and stops when a line arrives on
its stdin (or stdin closes).

* ``writer``: commits in a loop, printing ``commit N`` after each commit;
* ``reader``: prints ``reading`` from inside a read transaction, which it keeps open;
* ``open``: prints ``open`` with the database open and no transaction;
* ``opener``: opens the database (waiting as long as an opener waits), then prints its
  incarnation and the value of key ``b"which"`` of table ``t``.
"""

from __future__ import annotations

import sys
import threading

import lamina


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    if mode == "opener":
        with lamina.open(path, create=False, readonly=True) as db, db.read() as txn:
            value = txn.table("t").get(b"which")
            print(db.identity.incarnation, (value or b"").decode(), flush=True)
        return
    with lamina.open(path, create=False, sync=False) as db:
        if mode == "writer":
            threading.Thread(target=wait_for_stop, daemon=True).start()
            n = 0
            while not stop.is_set():
                with db.write() as txn:
                    txn.table("t").put(b"writer-%08d" % n, b"x" * 100)
                n += 1
                print(f"commit {n}", flush=True)
        elif mode == "reader":
            with db.read() as txn:
                assert txn.table("t").get(b"which") is not None
                print("reading", flush=True)
                wait_for_stop()
        elif mode == "open":
            print("open", flush=True)
            wait_for_stop()
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
