"""A small TCP proxy for fault tests: forwards 127.0.0.1:``port`` to an upstream port and,
on request, drops every connection — at once, or the moment a given number of bytes has
passed in one direction (deterministic: no timing involved) — and refuses new ones until
healed.

Dropped connections are closed with an RST (``SO_LINGER`` 0), as a crashed server or a
broken network path does.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

UP, DOWN = "up", "down"


def _reset(sock: socket.socket) -> None:
    """Drop ``sock`` now: shut it down (which also wakes a thread blocked reading it; a
    bare close would not) and close it with an RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """See the module doc. ``port`` is where clients connect; use as a context manager."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Condition()
        self._socks: set[socket.socket] = set()
        self.bytes = {UP: 0, DOWN: 0}
        self._trip: tuple[str, int] | None = None
        self._once = False
        self.broken = False
        self.tripped = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def break_after(self, direction: str, n: int) -> None:
        """Drop everything once ``n`` more bytes went ``direction`` (UP: to the server)."""
        with self._lock:
            self._trip = (direction, self.bytes[direction] + n)

    def cut_after(self, direction: str, n: int) -> None:
        """Drop the connections open once ``n`` more bytes went ``direction``, once, and
        go on forwarding new ones (a transient fault that retries must absorb)."""
        with self._lock:
            self._trip = (direction, self.bytes[direction] + n)
            self._once = True

    def break_now(self, *, refuse: bool = True) -> None:
        """Drop every connection and (``refuse``) refuse new ones."""
        with self._lock:
            self.broken = refuse
            socks, self._socks = set(self._socks), set()
        for s in socks:
            _reset(s)
        self.tripped.set()

    def heal(self) -> None:
        """Accept and forward connections again."""
        with self._lock:
            self.broken = False
            self._trip, self._once = None, False
        self.tripped.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                broken = self.broken
            if broken:
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._socks |= {client, server}
            for src, dst, direction in ((client, server, UP), (server, client, DOWN)):
                threading.Thread(target=self._pump, args=(src, dst, direction),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if self.broken:
                        break
                    self.bytes[direction] += len(data)
                    trip = self._trip
                    fire = trip is not None and trip[0] == direction and \
                        self.bytes[direction] >= trip[1]
                    once = self._once
                    if fire:
                        self._trip, self._once = None, False
                if fire:
                    self.break_now(refuse=not once)
                    return
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._socks.discard(src)
            self._socks.discard(dst)
        _reset(src)
        _reset(dst)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self.break_now()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
