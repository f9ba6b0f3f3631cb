"""``lamina replicate DB --repo REPO``: continuous replication (a point every ``--interval``
while DB commits; levels, fulls and retention), until SIGINT or SIGTERM (exit 0)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

import click

from lamina.cli.common import json_option, open_database
from lamina.cli.repo import lock_timeout_option, open_repository
from lamina.errors import UsageError

_DEFAULT_LEVELS = "10s:1h,1m:1d,1h"


def _levels(text: str, retain_ns: int) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """``BUCKET[:KEEP],...`` finest first (KEEP: how long that level's points stay; default
    the whole retention)."""
    from lamina.repository.timespec import parse_duration

    buckets: list[int] = []
    keeps: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        bucket, _, keep = part.partition(":")
        buckets.append(parse_duration(bucket, "--levels bucket"))
        keeps.append(parse_duration(keep, "--levels keep") if keep else None)
    return tuple(buckets), tuple(keeps)


def _text_line(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind in ("point", "full"):
        what = "full" if event["kind"] == "full" else f"layer on {event['base'][:8]}"
        return (f"{event['time']}  point {event['id']}  {what}  seq {event['vp_seq']}  "
                f"{event['bytes']} bytes" + (f"  ({event['reason']})"
                                             if event.get("reason") else ""))
    if kind == "compact":
        return (f"{event['time']}  compacted {event['id']} onto {event['onto'][:8]}  "
                f"seq {event['vp_seq']}  {event['bytes']} bytes")
    if kind == "merge":
        return f"{event['time']}  merged {event['id']} into a full ({event['reason']})"
    if kind == "retention":
        return f"{event['time']}  retention deleted {event['deleted']} image(s)"
    if kind == "error":
        return (f"{event['time']}  error: {event['message']} (retry in "
                f"{event['retry_in_seconds']:g} s)")
    if kind == "metrics":
        return f"{event['time']}  metrics on {event['address']}"
    if kind == "start":
        return (f"{event['time']}  replicating {event['database']} to "
                f"{event['repository']} every {event['interval']:g} s")
    return f"{event['time']}  stopped after {event.get('points', 0)} point(s)"


@click.command("replicate")
@click.argument("db", type=click.Path())
@click.option("--repo", "repo_path", required=True, type=click.Path(), help="Repository.")
@click.option("--interval", default="1s", show_default=True,
              help="How often to look for new commits (a point when there are).")
@click.option("--full-every", default="24h", show_default=True,
              help="Longest time between full images (0: only by size).")
@click.option("--full-fraction", type=float, default=0.5, show_default=True,
              help="A full when the chain's layers exceed this fraction of the full.")
@click.option("--full-from", type=click.Choice(["repository", "database"]),
              default="repository", show_default=True,
              help="Make a due full by merging in the repository, or read DB whole.")
@click.option("--retain", default="7d", show_default=True,
              help="Keep points this long (and what they stand on).")
@click.option("--fine-window", default="10m", show_default=True,
              help="Keep every point this long; older ones only as level points.")
@click.option("--levels", default=_DEFAULT_LEVELS, show_default=True,
              help="Level buckets, finest first, each a multiple of the one before, "
                   "BUCKET[:KEEP]; closed buckets' last points are compacted in the "
                   "repository (a level-i point reads at most levels - i + 2 images).")
@click.option("--compact-every", default="10s", show_default=True,
              help="How often retention runs.")
@click.option("--max-backoff", default="60s", show_default=True,
              help="Longest wait between retries of a failing repository.")
@click.option("--run-for", default=None,
              help="Stop after this long, as on SIGTERM (default: until a signal).")
@click.option("--status-file", type=click.Path(dir_okay=False), default=None,
              help="Write the status here (JSON, atomically) after every step.")
@click.option("--metrics-addr", default=None,
              help="Serve Prometheus metrics on HOST:PORT (needs lamina[metrics]).")
@lock_timeout_option
@json_option
def command(db: str, repo_path: str, interval: str, full_every: str, full_fraction: float,
            full_from: str, retain: str, fine_window: str, levels: str, compact_every: str,
            max_backoff: str, run_for: str | None, status_file: str | None,
            metrics_addr: str | None,
            lock_timeout: float, as_json: bool) -> None:
    """Replicate DB into REPO continuously: a layer whenever DB committed since the last
    point, nothing while it is idle. Runs until SIGINT or SIGTERM, which finish (or
    abandon, publishing nothing) the point under way and exit 0. A failing repository is
    retried with backoff; the status file shows the lag growing."""
    from lamina.repository.levels import LevelPolicy
    from lamina.repository.replicate import ReplicateOptions, Replicator
    from lamina.repository.timespec import iso_ns, parse_duration

    ns = 1e9
    retain_ns = parse_duration(retain, "--retain")
    buckets, keeps = _levels(levels, retain_ns)
    if not buckets:
        raise UsageError("--levels needs at least one bucket")
    policy = LevelPolicy(levels_ns=buckets, level_keep_ns=keeps,
                         fine_window_ns=parse_duration(fine_window, "--fine-window"),
                         retain_ns=retain_ns,
                         full_every_ns=parse_duration(full_every, "--full-every"),
                         full_fraction=full_fraction)
    options = ReplicateOptions(interval=parse_duration(interval, "--interval") / ns,
                               policy=policy, full_from=full_from,
                               compact_every=parse_duration(compact_every,
                                                            "--compact-every") / ns,
                               max_backoff=parse_duration(max_backoff, "--max-backoff") / ns)
    stop_after = None if run_for is None else parse_duration(run_for, "--run-for") / ns
    metrics = None
    if metrics_addr is not None:
        from lamina.repository.replication_metrics import ReplicationMetrics, parse_addr

        host, port = parse_addr(metrics_addr)
        metrics = ReplicationMetrics()
    repo = open_repository(repo_path, lock_timeout)

    def log(event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True) if as_json else _text_line(event)
        click.echo(line)
        sys.stdout.flush()

    with open_database(db) as database:
        replicator = Replicator(database, repo, options, status_file=status_file,
                                on_event=log, metrics=metrics)
        if metrics is not None:
            bound = metrics.serve(host, port)
            log({"event": "metrics", "time": iso_ns(time.time_ns()),
                 "address": f"http://{bound[0]}:{bound[1]}/metrics"})
        timer = None
        if stop_after is not None:
            timer = threading.Timer(stop_after, replicator.stop)
            timer.daemon = True
            timer.start()
        try:
            _run_until_signalled(replicator)
        finally:
            if timer is not None:
                timer.cancel()
        if metrics is not None:
            metrics.close()


def _run_until_signalled(replicator: Any) -> None:
    """Run the replicator; SIGINT/SIGTERM stop it cleanly (the point under way is
    cancelled: nothing of it is published) and the command exits 0."""
    if threading.current_thread() is not threading.main_thread():  # in-process runner
        replicator.run()
        return

    def handler(signum: int, frame: object) -> None:
        replicator.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        replicator.run()
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
