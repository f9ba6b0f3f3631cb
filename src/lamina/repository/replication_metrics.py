"""Prometheus metrics of a replicator (``lamina replicate --metrics-addr HOST:PORT``),
served with ``prometheus_client`` (the optional extra ``metrics``).

Metrics (all prefixed ``lamina_replicate_``): ``last_vp_age_seconds`` (now minus the newest
point's VP time, computed at each scrape), ``lag_seconds`` and ``lag_commits`` (see
:class:`~lamina.repository.replicate.ReplicationStatus`), ``last_vp_seq``, and the
counters ``layers_total``, ``fulls_total``, ``bytes_total``, ``errors_total``,
``compactions_total`` (layers rewritten onto their anchors by level compaction),
``merged_bytes_total`` (bytes those rewrites stored), ``retention_runs_total``,
``points_deleted_total``. Each :class:`ReplicationMetrics` has its
own registry (several replicators in one process do not clash).

Concurrency: the HTTP server runs in a daemon thread; updates are thread-safe
(prometheus_client's own locks).
"""

from __future__ import annotations

import time
from typing import Any

from lamina.errors import UnsupportedError, UsageError

PREFIX = "lamina_replicate_"


def parse_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0: any free port). Raises UsageError."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--metrics-addr {text!r} is not HOST:PORT (like 127.0.0.1:9090)")
    return host.strip("[]"), int(port)


class ReplicationMetrics:
    """The metrics of one replicator, and (after :meth:`serve`) their HTTP endpoint.

    Raises UnsupportedError when ``prometheus_client`` is not installed."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:  # pragma: no cover - the extra is part of the test install
            raise UnsupportedError("metrics need prometheus_client: pip install "
                                   "'lamina[metrics]'") from None
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self._last_vp_ns: int | None = None
        r = self.registry
        self.last_vp_age = prom.Gauge(PREFIX + "last_vp_age_seconds",
                                      "Seconds since the newest point's validity point",
                                      registry=r)
        self.last_vp_age.set_function(self._age)
        self.last_vp_seq = prom.Gauge(PREFIX + "last_vp_seq",
                                      "Commit seq of the newest point", registry=r)
        self.lag_seconds = prom.Gauge(PREFIX + "lag_seconds",
                                      "How long the oldest commit not in a point has waited",
                                      registry=r)
        self.lag_commits = prom.Gauge(PREFIX + "lag_commits",
                                      "Commits not in a point yet", registry=r)
        self.layers = prom.Counter(PREFIX + "layers", "Layers sent", registry=r)
        self.fulls = prom.Counter(PREFIX + "fulls", "Full images sent", registry=r)
        self.bytes = prom.Counter(PREFIX + "bytes", "Image bytes sent", registry=r)
        self.errors = prom.Counter(PREFIX + "errors", "Failed steps (retried)", registry=r)
        self.compactions = prom.Counter(PREFIX + "compactions",
                                        "Points rewritten by level compaction", registry=r)
        self.merged_bytes = prom.Counter(PREFIX + "merged_bytes",
                                         "Image bytes stored by level compaction", registry=r)
        self.retention_runs = prom.Counter(PREFIX + "retention_runs", "Retention passes",
                                           registry=r)
        self.points_deleted = prom.Counter(PREFIX + "points_deleted",
                                           "Points deleted by retention", registry=r)
        self._seen = {"layers": 0, "fulls": 0, "bytes": 0, "deleted": 0, "compactions": 0,
                      "merged": 0, "retention": 0}
        self.server: Any = None
        self.address: tuple[str, int] | None = None

    def _age(self) -> float:
        if self._last_vp_ns is None:
            return float("nan")
        return max(0.0, (time.time_ns() - self._last_vp_ns) / 1e9)

    def update(self, status: Any, now_ns: int) -> None:
        """Bring the metrics up to ``status`` (a ReplicationStatus)."""
        self._last_vp_ns = status.last_vp_time_ns
        if status.last_vp_seq is not None:
            self.last_vp_seq.set(status.last_vp_seq)
        self.lag_seconds.set(status.lag_seconds)
        self.lag_commits.set(status.lag_commits)
        for name, counter, value in (("layers", self.layers, status.layers_sent),
                                     ("fulls", self.fulls, status.fulls_sent),
                                     ("bytes", self.bytes, status.bytes_sent),
                                     ("deleted", self.points_deleted, status.points_deleted),
                                     ("compactions", self.compactions, status.compactions),
                                     ("merged", self.merged_bytes, status.merged_bytes),
                                     ("retention", self.retention_runs,
                                      status.retention_runs)):
            if value > self._seen[name]:
                counter.inc(value - self._seen[name])
                self._seen[name] = value

    def error(self) -> None:
        """Count a failed step."""
        self.errors.inc()

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns the address
        bound (port 0 picks one). Raises UsageError when the address
        cannot be bound."""
        try:
            server, _thread = self._prom.start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as exc:
            raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
        self.server = server
        self.address = (host, server.server_address[1])
        return self.address

    def close(self) -> None:
        """Stop the HTTP server (idempotent)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


__all__ = ["ReplicationMetrics", "parse_addr"]
