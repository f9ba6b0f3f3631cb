"""An HTTP-aware proxy in front of the tests' S3 server, for fault tests counted in requests
(not bytes, not seconds): it reads each request's line and headers as it passes, counts
requests by kind, and on request fails or holds the N-th one of a kind.

Kinds (what the request does to the store): ``put`` (PUT of a whole object: config, index,
lease, upload description, a small image), ``part`` (PUT of a multipart part), ``create``
(POST ``?uploads``: start a multipart upload), ``complete`` (POST ``?uploadId``: publish
it), ``abort`` (DELETE ``?uploadId``), ``delete`` (DELETE of an object, POST ``?delete``),
``list``, ``get``, ``head``. :data:`WRITES` are the object writes.

* :meth:`S3Proxy.fail_from` — from the N-th request of a kind on (counted from the call),
  every request of that kind is answered ``500 InternalError`` (an S3 error document) or
  its connection reset: a store that keeps refusing that write, so retries cannot absorb
  it. Other requests pass.
* :meth:`S3Proxy.hold_at` — the N-th request (of some kinds, or any) is never forwarded:
  the client waits for an answer while the test does something to it (kill -9), and
  :attr:`S3Proxy.held` is set. A deterministic "random moment" of a process's progress.

Requests must carry a ``Content-Length`` body (or none); botocore sends them so with
request checksums "when required" (as Lamina configures it). Use as a context manager.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from collections.abc import Collection
from urllib.parse import parse_qs, urlsplit

from support.tcpproxy import _reset

#: The kinds of request that write an object.
WRITES = ("put", "part", "create", "complete")


def request_kind(method: str, target: str) -> str:
    """The kind of an S3 request (see the module doc) from its method and target."""
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    has_key = "/" in split.path.strip("/")
    if method == "PUT":
        return "part" if "partNumber" in query else "put"
    if method == "POST":
        if "uploads" in query:
            return "create"
        if "uploadId" in query:
            return "complete"
        return "delete" if "delete" in query else "post"
    if method == "DELETE":
        return "abort" if "uploadId" in query else "delete"
    if method == "HEAD":
        return "head"
    if method == "GET" and has_key and not ({"uploadId", "uploads"} & set(query)):
        return "get"
    return "list"


_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
          b"<Message>injected by the test proxy</Message></Error>")


class S3Proxy:
    """See the module doc. ``port`` is where clients connect."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        #: Requests seen (forwarded, failed or held), by kind.
        self.counts: collections.Counter[str] = collections.Counter()
        #: (kind, method, target) of every request seen, in arrival order.
        self.log: list[tuple[str, str, str]] = []
        self._fail: tuple[str, int, str] | None = None
        self._hold: tuple[frozenset[str] | None, int] | None = None
        #: Set when a request was failed (:meth:`fail_from`) or held (:meth:`hold_at`).
        self.failed = threading.Event()
        self.held = threading.Event()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def fail_from(self, kind: str, n: int, *, how: str = "500") -> None:
        """Fail the ``n``-th request of ``kind`` from now (1: the next) and every later
        one of that kind: ``how`` ``"500"`` answers InternalError, ``"reset"`` resets the
        connection."""
        assert n >= 1 and how in ("500", "reset")
        with self._lock:
            self._fail = (kind, self.counts[kind] + n, how)
            self.failed.clear()

    def hold_at(self, n: int, kinds: Collection[str] | None = None) -> None:
        """Hold the ``n``-th request from now (of ``kinds``; None: of any kind): never
        forward it (its client waits) and set :attr:`held`."""
        assert n >= 1
        with self._lock:
            chosen = None if kinds is None else frozenset(kinds)
            seen = sum(self.counts.values()) if chosen is None else \
                sum(self.counts[k] for k in chosen)
            self._hold = (chosen, seen + n)
            self.held.clear()

    def heal(self) -> None:
        """Forward every request again (held ones stay held until :meth:`close`)."""
        with self._lock:
            self._fail = self._hold = None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._socks |= {client, server}
            threading.Thread(target=self._requests, args=(client, server),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client),
                             daemon=True).start()

    def _decide(self, kind: str) -> str:
        """Count a request of ``kind``; "fail:HOW", "hold" or "forward"."""
        with self._lock:
            self.counts[kind] += 1
            if self._fail is not None and self._fail[0] == kind and \
                    self.counts[kind] >= self._fail[1]:
                self.failed.set()
                return f"fail:{self._fail[2]}"
            if self._hold is not None:
                kinds, at = self._hold
                seen = sum(self.counts.values()) if kinds is None else \
                    sum(self.counts[k] for k in kinds)
                if (kinds is None or kind in kinds) and seen == at:
                    self._hold = None
                    self.held.set()
                    return "hold"
        return "forward"

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        graceful = False
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (line.partition(":") for line in lines[1:])}
                assert "chunked" not in headers.get("transfer-encoding", ""), \
                    "the proxy needs Content-Length bodies"
                length = int(headers.get("content-length", "0"))
                kind = request_kind(method, target)
                action = self._decide(kind)
                with self._lock:
                    self.log.append((kind, method, target))
                if action == "hold":
                    self._closed.wait()
                    return
                if action.startswith("fail:"):
                    if action == "fail:500":
                        if headers.get("expect", "").lower() != "100-continue":
                            self._drain(client, length - len(buf))
                        client.sendall(b"HTTP/1.1 500 Internal Server Error\r\n"
                                       b"Content-Type: application/xml\r\n"
                                       b"Content-Length: %d\r\nConnection: close\r\n\r\n"
                                       % len(_ERROR) + _ERROR)
                    graceful = True  # the client reads the answer before the close
                    return
                server.sendall(head + b"\r\n\r\n")
                body, buf = buf[:length], buf[length:]
                server.sendall(body)
                remaining = length - len(body)
                while remaining > 0:
                    data = client.recv(min(remaining, 65536))
                    if not data:
                        return
                    server.sendall(data)
                    remaining -= len(data)
        except OSError:
            pass
        finally:
            if graceful:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)
                with self._lock:
                    self._socks.discard(client)
                client.close()
                self._drop(server)
            else:
                self._drop(client, server)

    @staticmethod
    def _drain(sock: socket.socket, n: int) -> None:
        while n > 0:
            data = sock.recv(min(n, 65536))
            if not data:
                return
            n -= len(data)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        self._drop(client, server)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            self._socks.difference_update(socks)
        for s in socks:
            _reset(s)

    def close(self) -> None:
        """Stop listening, release held requests, drop every connection."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, self._socks = set(self._socks), set()
        for s in socks:
            _reset(s)

    def __enter__(self) -> S3Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
