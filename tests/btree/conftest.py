"""Fixtures of the btree engine tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import opened

from lamina.engines.btree import BtreeStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BtreeStore]:
    """A fresh 4 KiB-page store in a temporary database directory."""
    with opened(tmp_path / "db") as s:
        yield s


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[BtreeStore]:
    """A fresh 1 KiB-page store (deep trees with few keys)."""
    with opened(tmp_path / "db", page_size=1024) as s:
        yield s
