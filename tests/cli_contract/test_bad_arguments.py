"""Issue 10, item 9: every option is validated before any work.

ONE test runs every command with a table of bad arguments and asserts, for each: exit 2,
exactly one line on stderr, no traceback, and nothing written (the whole temporary
directory — databases, images, the repository, logs — is byte for byte as before, and no
file is added). A few bad arguments can only be told from the database's catalog or page
size: for those the database is opened, and only its LOCK file (which registers readers
and writers) may change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import lamina
from lamina.repository import Repository
from support import cli

from .helpers import diff_trees, lines, make_shop, tree


def _bad_arguments(db: str, image: str, repo: str, log: str, new: str) -> list[tuple[str, ...]]:
    """(command line) rows; ``new`` is a path that must not come to exist."""
    return [
        # backup: codec levels, drivers, rates, timeouts, tables, repo-only options
        ("backup", db, new, "--level", "99"),
        ("backup", db, new, "--level", "-100"),
        ("backup", db, new, "--compress", "zlib", "--level", "-100"),
        ("backup", db, new, "--compress", "zlib", "--level", "10"),
        ("backup", db, new, "--compress", "none", "--level", "5"),
        ("backup", db, new, "--compress", "lz4"),
        ("backup", db, new, "--driver", "users=default,users=snapshot"),
        ("backup", db, new, "--driver", "snapshot,default"),
        ("backup", db, new, "--driver", "bogus"),
        ("backup", db, new, "--driver", "users=bogus"),
        ("backup", db, new, "--driver", "users=default,,"),
        ("backup", db, new, "--max-rate", "0"),
        ("backup", db, new, "--max-rate", "-1"),
        ("backup", db, new, "--max-rate", "nan"),
        ("backup", db, new, "--max-rate", "fast"),
        ("backup", db, new, "--table-lock-timeout", "-1"),
        ("backup", db, new, "--lock-timeout", "-1"),
        ("backup", db, new, "--tables", ","),
        ("backup", db, new, "--full"),
        ("backup", db, "--repo", repo, "--driver", "snapshot"),
        ("backup", db, "--repo", repo, "--max-rate", "5"),
        ("backup", db, "--repo", repo, "--level", "3"),
        ("backup", db, "--repo", repo, "--tables", "users"),
        ("backup", db, "--repo", repo, "--base", image),
        ("backup", db, "--repo", repo, "--lock-timeout", "-1"),
        ("backup", db, "--repo", repo, "--resume-lease", "99999999999d"),
        ("backup", db, "--repo", "s3://lamina-bucket/p", "--s3-endpoint", "notaurl"),
        ("restore", "--repo", repo, "--at", "99999999999999999999", "--to", new),
        ("restore", "--repo", repo, "--at", "-99999999d", "--to", new),
        ("backup", db),
        ("backup",),
        ("backup", db, new, "--no-such-option"),
        # restore
        ("restore", image, "--to", new, "--page-size", "1000"),
        ("restore", image, "--to", new, "--page-size", "-4096"),
        ("restore", image, "--to", new, "--page-size", "131072"),
        ("restore", image, "--to", new, "--id", "x"),
        ("restore", image, "--to", new, "--at", "2026-01-01"),
        ("restore", image, "--to", new, "--tables", ","),
        ("restore", image, "--to", new, "--lock-timeout", "-1"),
        ("restore", "--repo", repo, "--to", new, "--at", "yesterday-ish"),
        ("restore", "--repo", repo, "--to", new, "--page-size", "4096"),
        ("restore", "--repo", repo, "--to", new, "--lock-timeout", "-1"),
        ("restore", image),
        ("restore", "-", image, "--to", new),
        # verify
        ("verify", image, "--id", "x"),
        ("verify", image, "--lock-timeout", "-1"),
        ("verify", "--repo", repo, "--lock-timeout", "nan"),
        ("verify", "-", image),
        # info, history, list, prune, repo
        ("info",),
        ("info", image, "extra"),
        ("history", db, "--bogus"),
        ("list",),
        ("list", "--repo", repo, "--lock-timeout", "-1"),
        ("prune", "--repo", repo),
        ("prune", "--repo", repo, "--keep-last", "-1"),
        ("prune", "--repo", repo, "--keep-daily", "x"),
        ("prune", "--repo", repo, "--keep-last", "1", "--lock-timeout", "-1"),
        ("repo", "init", new, "--chain-limit", "-1"),
        ("repo", "frobnicate"),
        # scan, put, get, delete, append, create-table, drop-table, optimize, tables, ...
        ("scan", db, "users", "--limit", "-1"),
        ("scan", db, "users", "--limit", "many"),
        ("scan", db, "users", "--prefix", "zz", "--hex"),
        ("put", db, "users", "zz", "v", "--hex"),
        ("put", db, "users", "k"),
        ("get", db, "users", "zz", "--hex"),
        ("delete", db, "users", "zz", "--hex"),
        ("append", db, "events", "zz", "--hex"),
        ("append", db, "events", "-", "x"),
        ("append", db, "events"),
        ("create-table", db, "t2", "--codec", "zlib"),
        ("create-table", db, "t2", "--level", "3"),
        ("create-table", db, "t2", "--engine", "archive", "--codec", "zlib", "--level", "10"),
        ("create-table", db, "t2", "--engine", "archive", "--codec", "none", "--level", "1"),
        ("create-table", db, "t2", "--engine", "archive", "--level", "99"),
        ("create-table", db, "t2", "--engine", "hash"),
        ("create-table", db, "../evil"),
        ("create-table", new, "../evil"),
        ("create-table", new, ""),
        ("drop-table", db),
        ("optimize", db),
        ("tables", db, "--hex"),
        ("stat",),
        ("check", db, "extra"),
        # workload, demo
        ("workload", new, "--steps", "-1"),
        ("workload", "run", new, "--steps", "-1"),
        ("workload", "run", new, "--rate", "-1", "--steps", "1"),
        ("workload", new, "--seconds", "-1"),
        ("workload", new, "--seconds", "inf"),
        ("workload", new, "--rate", "-1"),
        ("workload", new, "--rate", "0"),
        ("workload", new),
        ("workload", new, "--steps", "1", "--log", log, "--seed", "2"),
        ("workload", "verify", db, "--log", log, "--at", "-1"),
        ("workload", "verify", db),
        # replicate: durations, levels, addresses, fractions (before DB or REPO is opened)
        ("replicate", db, "--repo", repo, "--interval", "soon"),
        ("replicate", db, "--repo", repo, "--interval", "0"),
        ("replicate", db, "--repo", repo, "--levels", "1h,1m"),
        ("replicate", db, "--repo", repo, "--levels", "1m:forever"),
        ("replicate", db, "--repo", repo, "--retain", "-1d"),
        ("replicate", db, "--repo", repo, "--full-fraction", "-1"),
        ("replicate", db, "--repo", repo, "--metrics-addr", "nowhere"),
        ("replicate", db, "--repo", repo, "--run-for", "later"),
        ("list", "--repo", repo, "--points", "--lock-timeout", "-1"),
        ("restore", "--repo", repo, "--to", new, "--at", "-5x"),
        ("demo", "--keys", "-5"),
        ("demo", "--keys", "0"),
        ("demo", "--rows", "-1"),
        # no such command
        ("frobnicate",),
    ]


def _catalog_dependent(db: str, new: str) -> list[tuple[str, ...]]:
    """Bad arguments that only the database's catalog or page size can tell: the database
    is opened (its LOCK file registers the reader), nothing else is touched."""
    return [
        ("scan", db, "events", "--start", "two"),
        ("scan", db, "events", "--prefix", "a"),
        ("put", db, "users", "k" * 100_000, "v"),
        ("backup", db, new, "--driver", "nosuch=snapshot"),
        ("backup", db, new, "--tables", "users", "--driver", "events=default"),
    ]


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, str]:
    db = make_shop(tmp_path / "shop.db")
    image = tmp_path / "shop.lamina"
    repo = Repository.init(tmp_path / "repo")
    with lamina.open(db) as handle:
        handle.backup(image)
        repo.backup(handle)
    log = tmp_path / "wl.log"
    assert cli.invoke("workload", str(tmp_path / "wl.db"), "--steps", "3", "--log",
                      str(log)).code == 0
    return {"db": str(db), "image": str(image), "repo": str(repo.path), "log": str(log),
            "new": str(tmp_path / "new")}


def test_every_bad_argument_is_refused_before_any_work(world: dict[str, str],
                                                       tmp_path: Path) -> None:
    failures: list[str] = []
    rows = [(args, False) for args in _bad_arguments(**world)]
    rows += [(args, True) for args in _catalog_dependent(world["db"], world["new"])]
    lock = str(Path(world["db"]).relative_to(tmp_path) / "LOCK")
    for args, opens_db in rows:
        shown = " ".join(a if len(a) < 40 else a[:20] + "..." for a in args)
        before = tree(tmp_path)
        try:
            code, out, err = cli.invoke(*args)
        except Exception as exc:  # a crash is a bug: exit 1 and a traceback for a user
            failures.append(f"{shown}: raised {type(exc).__name__}: {exc}")
            continue
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if len(lines(err)) != 1:
            problems.append(f"{len(lines(err))} lines on stderr")
        if "Traceback" in out + err:
            problems.append("a traceback")
        if out:
            problems.append(f"stdout {out[:60]!r}")
        after = tree(tmp_path)
        if opens_db and lock in after:
            after[lock] = before.get(lock, after[lock])
        changed = diff_trees(before, after)
        if changed:
            problems.append(f"wrote something ({changed})")
        if problems:
            failures.append(f"{shown}: {', '.join(problems)}; stderr {err.strip()[:120]!r}")
    assert not failures, (f"{len(failures)} of {len(rows)} bad command lines not refused "
                          "cleanly:\n" + "\n".join(failures))
