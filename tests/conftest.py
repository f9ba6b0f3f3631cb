"""Suite-wide pytest configuration: hypothesis profiles sized for 2-core CI, and the
teardown check of every database a test leaves behind (``support.checked``)."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from support import plugin, s3fixtures

settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", parent=settings.get_profile("ci"), max_examples=20)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A suite started in the background of a non-interactive shell (`cmd &` in a CI script)
# inherits SIGINT ignored, and so would every CLI process the tests start: Python keeps
# an inherited SIG_IGN, and the tests that interrupt a command with SIGINT would wait for
# an exit that never comes. The suite's own processes get Python's default handler back
# (an exec resets a handler, not an ignore, so the children then see SIGINT's default).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The teardown check of every database a test leaves behind (imported: pytest finds
# hooks and fixtures among a conftest's names).
check_databases_at_teardown = plugin.check_databases_at_teardown
pytest_runtest_makereport = plugin.pytest_runtest_makereport
# The S3 server and repository locations (support.s3fixtures).
s3_server = s3fixtures.s3_server
s3_url = s3fixtures.s3_url
repo_url = s3fixtures.repo_url


@pytest.fixture(scope="session", autouse=True)
def _tempdir_inside_pytest_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep every ``tempfile`` file of the session inside pytest's temporary area.

    Code under test makes temporary files and directories with ``tempfile`` (deep verify's
    ``lamina-verify-*`` page file, the demo, the state-machine tests): pointing ``TMPDIR``
    at a directory of this session (this process and every child process it starts) and
    dropping ``tempfile``'s cached default means nothing lands in the system temp
    directory, even when a process is killed before it could clean up.
    """
    path = tmp_path_factory.mktemp("tmpdir")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(path))
        mp.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR on next use
        assert tempfile.gettempdir() == str(path)
        yield path
