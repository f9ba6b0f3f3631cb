"""The pytest side of :mod:`support.checked`: a hook and an autouse fixture.

``tests/conftest.py`` imports both names (pytest finds hooks and fixtures among a
conftest's attributes), so they apply to the whole suite; another test tree can do the same.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from support import checked

_CALL_FAILED = pytest.StashKey[bool]()

# Record opens from the moment the conftest is imported: before any fixture of any scope.
checked.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether a test's body failed: its leftovers are then not checked (the
    failure is reported already, and its databases may be in any state)."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_CALL_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def check_databases_at_teardown(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the test, every database it opened (in this process) or left under its
    ``tmp_path`` (any process) must pass ``check()``; see :mod:`support.checked`.

    A failure is reported as an error at the test's teardown, naming each database and
    its findings. Not checked: the databases of a test whose body failed, and those a test
    opted out, only because it damages them on purpose: ``@pytest.mark.unchecked_db("why")``
    (all of the test's databases) or ``support.expect_damaged(path, "why")`` (one).
    """
    marker = request.node.get_closest_marker(checked.MARKER)
    if marker is not None and not (marker.args and isinstance(marker.args[0], str)
                                   and marker.args[0]):
        pytest.fail(f'@pytest.mark.{checked.MARKER} needs the reason: ("why")',
                    pytrace=False)
    # Not drained here: what this test's module- or session-scoped fixtures opened while
    # setting it up (before this fixture) is checked with the test's own databases.
    yield
    funcargs = getattr(request.node, "funcargs", None) or {}
    tmp_path = funcargs.get("tmp_path")
    roots = [tmp_path] if isinstance(tmp_path, Path) else []
    if marker is not None or request.node.stash.get(_CALL_FAILED, False):
        checked.drain()
        return
    problems = checked.problems_at_teardown(roots)
    if problems:
        pytest.fail(checked.format_problems(problems), pytrace=False)
