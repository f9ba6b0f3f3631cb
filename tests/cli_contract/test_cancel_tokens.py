"""Cancel tokens below the CLI (issue 10, item 8): verifying an image or a chain, and a
repository's verify and prune, take a ``cancel`` token like backup and restore do, checked
before every chunk; the CLI's ``verify`` passes its signal-driven one. A cancelled
operation raises CancelledError (exit 10) and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import lamina
from lamina import online
from lamina.errors import CancelledError
from lamina.repository import KeepPolicy, Repository

from .helpers import diff_trees, make_shop, repo_tree


def _after(n: int) -> Callable[[], bool]:
    """A callable token that asks to stop from its ``n``-th check on (0: at once)."""
    calls = [0]

    def token() -> bool:
        calls[0] += 1
        return calls[0] > n

    return token


@pytest.fixture()
def chain_images(tmp_path: Path) -> tuple[Path, Path]:
    db = make_shop(tmp_path / "shop.db", keys=2000, rows=200)
    full, layer = tmp_path / "full.lamina", tmp_path / "layer.lamina"
    with lamina.open(db) as handle:
        online.backup(handle, full, buf_size=4096)
        handle.put("users", b"new", b"value")
        handle.append("events", b"new row")
        online.backup(handle, layer, base=full, buf_size=4096)
    return full, layer


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("when", [0, 3], ids=["at-once", "midway"])
def test_verify_takes_a_cancel_token(chain_images: tuple[Path, Path], deep: bool,
                                     when: int) -> None:
    full, _layer = chain_images
    assert online.verify(full, deep=deep, cancel=_after(10**9))["chunks"] > 3
    with pytest.raises(CancelledError):
        online.verify(full, deep=deep, cancel=_after(when))
    event = threading.Event()
    event.set()
    with pytest.raises(CancelledError):
        online.verify(full, deep=deep, cancel=event)


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("when", [0, 3], ids=["at-once", "midway"])
def test_verify_chain_takes_a_cancel_token(chain_images: tuple[Path, Path], deep: bool,
                                           when: int) -> None:
    paths = list(chain_images)
    assert online.verify_chain(paths, deep=deep, cancel=_after(10**9))["ok"]
    with pytest.raises(CancelledError):
        online.verify_chain(paths, deep=deep, cancel=_after(when))


def test_repository_verify_and_prune_take_a_cancel_token(tmp_path: Path,
                                                         repo_url: str) -> None:
    db = make_shop(tmp_path / "shop.db")
    repo = Repository.init(repo_url)
    with lamina.open(db) as handle:
        repo.backup(handle, full=True)
        handle.put("users", b"k", b"v")
        repo.backup(handle)
        handle.put("users", b"k2", b"v2")
        repo.backup(handle)
    before = repo_tree(repo.url)
    for deep in (False, True):
        with pytest.raises(CancelledError):
            repo.verify(deep=deep, cancel=_after(2))
        assert all(r["ok"] for r in repo.verify(deep=deep, cancel=_after(10**9)).results)
    policy = KeepPolicy(last=1)
    with pytest.raises(CancelledError):
        repo.prune(policy, cancel=_after(0))
    with pytest.raises(CancelledError):  # midway through the merge into a synthetic full
        repo.prune(policy, cancel=_after(3))
    assert diff_trees(before, repo_tree(repo.url)) == "", "a cancelled prune changed nothing"
    result = repo.prune(policy, cancel=_after(10**9))
    assert result.plan.done_merges or result.plan.done_deletes
    assert all(r["ok"] for r in repo.verify(deep=True).results)


def test_the_cli_verify_passes_its_signal_driven_token(
        chain_images: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``lamina verify`` hands the token its signal handler sets to the glue, for one image
    (shallow and deep) and for a chain: set, the command ends "cancelled" (exit 10)."""
    from lamina.cli import common
    from support import cli

    full, layer = chain_images
    real = common.cancellation
    seen: list[threading.Event] = []

    @contextlib.contextmanager
    def cancelled_at_once() -> Iterator[threading.Event]:
        with real() as event:
            event.set()  # as the first SIGINT would
            seen.append(event)
            yield event

    monkeypatch.setattr("lamina.cli.verify.cancellation", cancelled_at_once)
    for args in ((str(full),), (str(full), "--deep"), (str(full), str(layer)),
                 (str(full), str(layer), "--deep")):
        result = cli.invoke("verify", *args)
        assert result.code == 10, (args, result)
        assert "cancelled" in result.stderr, (args, result)
    assert len(seen) == 4
