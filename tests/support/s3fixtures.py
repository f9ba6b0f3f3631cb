"""Pytest fixtures of the S3 tests: one ``weed mini`` per test process (session), a fresh
``s3://`` prefix per test, and repository locations parametrized over local and S3.

``tests/conftest.py`` imports them. Each pytest-xdist worker starts its own server on its
own free ports (see :mod:`support.s3server`), started only when a test asks for it, and
points the AWS settings of the process — inherited by every ``lamina`` CLI process a test
starts — at it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.s3server import S3Server, client

#: The bucket the tests' repositories live in (a prefix per test).
BUCKET = "lamina-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The session's running SeaweedFS server, with the AWS settings pointing at it
    (``AWS_MAX_ATTEMPTS=3`` and short lease expiry keep failure tests short)."""
    server = S3Server(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in server.env().items():
                mp.setenv(name, value)
            mp.setenv("AWS_MAX_ATTEMPTS", "3")
            mp.delenv("AWS_PROFILE", raising=False)
            client(server.endpoint).create_bucket(Bucket=BUCKET)
            yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty ``s3://`` location for this test."""
    name = request.node.name.split("[")[0][:40].replace("_", "-")
    return f"s3://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["local", "s3"])
def repo_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's repository goes: a local directory, then an ``s3://`` prefix."""
    if request.param == "local":
        return str(tmp_path / "repo")
    return str(request.getfixturevalue("s3_url"))
