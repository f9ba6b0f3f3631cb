"""A deterministic, verifiable workload (like ``pgbench``, but every state is provable).

Step *i* of a workload with seed *s* is a pure function of ``(s, i)``: which tables it
touches, which keys it puts or deletes, which rows it appends. Running it logs, for every
commit, ``step seq``. Verifying replays the steps whose commit seq is <= a target seq into
a model and compares the model with a database, so "this database holds exactly the state
after commit SEQ" is checked, not assumed. This is what the backup consistency tests and
the demo use; users can run it against their own machine.

Tables: ``wl_kv`` and ``wl_idx`` (btree; some steps write both in one transaction, which
must commit atomically) and ``wl_log`` (archive).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lamina.database import Database
from lamina.errors import CheckFailedError, UsageError

BTREE_TABLES = ("wl_kv", "wl_idx")
ARCHIVE_TABLE = "wl_log"
KEYSPACE = 4000
LOG_MAGIC = "lamina-workload-log v1"


@dataclass
class Model:
    """The expected contents of the workload tables."""

    btree: dict[str, dict[bytes, bytes]] = field(
        default_factory=lambda: {name: {} for name in BTREE_TABLES})
    rows: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One commit's worth of operations."""

    number: int
    puts: tuple[tuple[str, bytes, bytes], ...] = ()
    deletes: tuple[tuple[str, bytes], ...] = ()
    rows: tuple[bytes, ...] = ()

    @property
    def is_archive(self) -> bool:
        """True when the step appends archive rows (and touches no btree table)."""
        return bool(self.rows)


def _key(n: int) -> bytes:
    return b"k%06d" % n


def make_step(seed: int, number: int) -> Step:
    """The operations of step ``number`` of the workload with ``seed`` (deterministic)."""
    rng = random.Random(f"lamina-workload:{seed}:{number}")
    if rng.random() < 0.35:
        count = rng.randint(1, 40)
        rows = tuple(b"step=%d row=%d %s" % (number, j, rng.randbytes(rng.randint(8, 120)).hex()
                                              .encode()) for j in range(count))
        return Step(number, rows=rows)
    puts: list[tuple[str, bytes, bytes]] = []
    deletes: list[tuple[str, bytes]] = []
    for j in range(rng.randint(1, 25)):
        key = _key(rng.randrange(KEYSPACE))
        if rng.random() < 0.2:
            deletes.append(("wl_kv", key))
        else:
            value = b"%d:%d:" % (number, j) + rng.randbytes(rng.randint(0, 180))
            puts.append(("wl_kv", key, value))
            if rng.random() < 0.3:  # same transaction, second table: must be atomic
                puts.append(("wl_idx", value[:24], key))
    return Step(number, tuple(puts), tuple(deletes))


def apply_step(model: Model, step: Step) -> None:
    """Apply ``step`` to ``model`` in the order the workload applies it to a database."""
    if step.is_archive:
        model.rows.extend(step.rows)
        return
    for table, key in step.deletes:
        model.btree[table].pop(key, None)
    for table, key, value in step.puts:
        model.btree[table][key] = value


def ensure_tables(db: Database) -> None:
    """Create the workload tables if they do not exist."""
    existing = {t.name for t in db.tables()}
    for name in BTREE_TABLES:
        if name not in existing:
            db.create_table(name)
    if ARCHIVE_TABLE not in existing:
        db.create_table(ARCHIVE_TABLE, engine="archive")


def commit_step(db: Database, step: Step) -> int:
    """Commit ``step`` to ``db`` as one transaction; returns its commit seq."""
    if step.is_archive:
        with db.archive(ARCHIVE_TABLE).writer() as writer:
            for row in step.rows:
                writer.append(row)
            return writer.commit()
    with db.write() as txn:
        for table, key in step.deletes:
            txn.table(table).delete(key)
        for table, key, value in step.puts:
            txn.table(table).put(key, value)
        return txn.commit()


def run(db: Database, *, seed: int = 1, seconds: float | None = None, steps: int | None = None,
        rate: float | None = None, log: IO[str] | None = None, first_step: int = 0,
        on_commit: Callable[[int, int], None] | None = None) -> int:
    """Commit workload steps until ``seconds`` pass or ``steps`` are done; returns steps run.

    ``rate`` caps commits per second. Each commit is logged as ``"step seq"`` (flushed) after
    it returns, so the log never names a commit that did not happen.
    """
    if seconds is None and steps is None:
        raise UsageError("workload needs --seconds or --steps")
    ensure_tables(db)
    if log is not None and first_step == 0:
        log.write(json.dumps({"format": LOG_MAGIC, "seed": seed, "db_id": str(db.identity.db_id)})
                  + "\n")
        log.flush()
    deadline = None if seconds is None else time.monotonic() + seconds
    interval = 0.0 if not rate else 1.0 / rate
    number = first_step
    next_at = time.monotonic()
    while True:
        if steps is not None and number - first_step >= steps:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
        seq = commit_step(db, make_step(seed, number))
        if log is not None:
            log.write(f"{number} {seq}\n")
            log.flush()
        if on_commit is not None:
            on_commit(number, seq)
        number += 1
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return number - first_step


@dataclass(frozen=True)
class WorkloadLog:
    """A parsed workload log: the seed and the (step, seq) of every logged commit."""

    seed: int
    commits: list[tuple[int, int]]

    @classmethod
    def read(cls, path: Path) -> WorkloadLog:
        """Parse a log file; raises UsageError when it is not a workload log."""
        lines = path.read_text().splitlines()
        try:
            header = json.loads(lines[0])
            if header.get("format") != LOG_MAGIC:
                raise ValueError("wrong format")
            commits = [(int(a), int(b)) for a, b in (line.split() for line in lines[1:] if line)]
        except (IndexError, ValueError) as exc:
            raise UsageError(f"{path} is not a lamina workload log") from exc
        return cls(int(header["seed"]), commits)

    def model_at(self, seq: int) -> tuple[Model, int]:
        """The expected state after every logged commit with seq <= ``seq``; and how many."""
        model = Model()
        applied = 0
        for number, commit_seq in self.commits:
            if commit_seq <= seq:
                apply_step(model, make_step(self.seed, number))
                applied += 1
        return model, applied


def differences(db: Database, model: Model, limit: int = 10) -> list[str]:
    """Where ``db`` differs from ``model`` (empty when it holds exactly the model's state)."""
    found: list[str] = []
    tables = {t.name: t.engine for t in db.tables()}
    for name in (*BTREE_TABLES, ARCHIVE_TABLE):
        if name not in tables:
            found.append(f"table {name!r} is missing")
    if found:
        return found
    with db.read() as txn:
        for name in BTREE_TABLES:
            actual = dict(txn.table(name).items())
            expected = model.btree[name]
            if actual != expected:
                missing = sorted(expected.keys() - actual.keys())
                extra = sorted(actual.keys() - expected.keys())
                changed = sorted(k for k in expected.keys() & actual.keys()
                                 if expected[k] != actual[k])
                found.append(f"{name}: {len(actual)} keys, expected {len(expected)}; "
                             f"missing {missing[:3]}, unexpected {extra[:3]}, "
                             f"different values {changed[:3]}")
    rows = [row for _id, row in db.scan(ARCHIVE_TABLE)]
    if rows != model.rows:
        first = next((i for i, (a, b) in enumerate(zip(rows, model.rows)) if a != b),
                     min(len(rows), len(model.rows)))
        found.append(f"{ARCHIVE_TABLE}: {len(rows)} rows, expected {len(model.rows)}; "
                     f"first difference at row id {first + 1}")
    return found[:limit]


def verify(db: Database, log_path: Path, at_seq: int | None = None) -> dict[str, Any]:
    """Prove ``db`` holds exactly the workload state after commit ``at_seq``.

    ``at_seq`` defaults to the VP seq the database records as its restore origin. Returns a
    summary; raises CheckFailedError listing the differences.
    """
    log = WorkloadLog.read(log_path)
    if at_seq is None:
        at_seq = db.identity.restored_vp_seq
        if not at_seq:
            raise UsageError("this database was not restored from a backup; pass --at SEQ")
    model, applied = log.model_at(at_seq)
    diffs = differences(db, model)
    summary = {"at_seq": at_seq, "commits_applied": applied, "rows": len(model.rows),
               "keys": {name: len(model.btree[name]) for name in BTREE_TABLES}}
    if diffs:
        raise CheckFailedError(f"database differs from the workload state at seq {at_seq}: "
                               + "; ".join(diffs), diffs)
    return summary
