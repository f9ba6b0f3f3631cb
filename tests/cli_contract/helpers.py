"""What the CLI contract tests share: databases of a given size, a snapshot of a directory
tree (to prove that a refused command wrote nothing), and small text checks."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import lamina

#: An ISO 8601 time as the CLI prints it (UTC).
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def make_shop(path: Path, *, keys: int = 50, rows: int = 20) -> Path:
    """A small database: btree table ``users`` with ``keys`` keys, archive table
    ``events`` with ``rows`` rows."""
    with lamina.open(path) as db:
        db.create_table("users")
        db.create_table("events", engine="archive")
        with db.write() as txn:
            txn.table("users").bulk_load((b"user%05d" % i, b"role %d" % i) for i in range(keys))
        if rows:
            db.append_many("events", [b"event %d" % i for i in range(rows)])
    return path


def make_big(path: Path, *, keys: int, value_size: int = 100, seed: int = 7,
             random_values: bool = True) -> Path:
    """A btree table ``kv`` of ``keys`` keys; random (incompressible) values by default, so
    that an image of it with ``--compress none`` is about ``keys * value_size`` bytes."""
    rng = random.Random(seed)
    with lamina.open(path) as db:
        db.create_table("kv")
        with db.write() as txn:
            txn.table("kv").bulk_load(
                (b"key:%012d" % i,
                 rng.randbytes(value_size) if random_values else b"v" * value_size)
                for i in range(keys))
    return path


def tree(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: relative path -> (size, sha256); directories as (-1, "")."""
    out: dict[str, tuple[int, str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = (-1, "")
        elif p.is_file():
            data = p.read_bytes()
            out[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def repo_tree(url: str) -> dict[str, tuple[int, str]]:
    """:func:`tree` of a repository: its directory, or every object of an ``s3://``
    prefix (read with the test's own client; no directories there)."""
    if not url.startswith("s3://"):
        return tree(Path(url))
    from support.rawstore import RawStore

    raw = RawStore(url)
    return {key: (len(data), hashlib.sha256(data).hexdigest())
            for key, data in raw.objects().items()}


def diff_trees(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> str:
    """'' when equal, else what was added, removed or changed."""
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    parts = [f"{what}: {names}" for what, names in
             (("added", added), ("removed", removed), ("changed", changed)) if names]
    return "; ".join(parts)


def lines(text: str) -> list[str]:
    """The non-empty lines of ``text``."""
    return [line for line in text.splitlines() if line.strip()]
