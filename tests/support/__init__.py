"""Shared test support: the one ``lamina`` CLI runner (:mod:`support.cli`) and the
teardown check of every database a test leaves behind (:mod:`support.checked`).

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so tests import it as
``support``: ``from support import cli, expect_damaged``.
"""

from __future__ import annotations

from support import cli
from support.checked import expect_damaged

__all__ = ["cli", "expect_damaged"]
