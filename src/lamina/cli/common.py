"""What every command shares: opening a database, printing text or JSON, key encodings,
option types, units and times, progress bars and cancellation (SIGINT/SIGTERM).

Human output (like restic's): times are ISO 8601 in UTC (:func:`iso_time`), sizes are in
one unit system, KiB/MiB/GiB (:func:`human_bytes`), in bars, summaries and ``stat`` alike;
no Python reprs (:func:`human_value`). JSON output: one field name per quantity
(:func:`json_ready`: the commit blocker's hold and wait times are always ``*_ms``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import click

import lamina
from lamina.core import compression
from lamina.database import Database
from lamina.errors import CancelledError, UsageError

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON instead of text (errors: one JSON object on "
                                "stderr).")
hex_option = click.option("--hex", "as_hex", is_flag=True,
                          help="Keys and values are hexadecimal instead of UTF-8 text.")


# ---------------------------------------------------------------------- option types
class Number(click.FloatRange):
    """A finite float in a range (click's FloatRange lets ``nan`` and ``inf`` through)."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """A positive duration in seconds, written ``90``, ``90s``, ``30m``, ``1h`` or ``2d``
    (one number and one unit); converted to seconds (a float)."""

    name = "duration"
    _UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            unit = text[-1:] if text[-1:].isalpha() else ""
            try:
                seconds = float(text[:len(text) - len(unit)]) * self._UNITS[unit]
            except (KeyError, ValueError):
                self.fail(f"{value!r} is not a duration (e.g. 90s, 30m, 1h, 2d).", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a positive duration.", param, ctx)
        return seconds


#: A lease or age: a positive duration (see :class:`Duration`).
DURATION = Duration()

#: Seconds to wait for something: 0 (try once) or more.
TIMEOUT = Number(min=0)
#: A rate or size that must be more than zero.
POSITIVE = Number(min=0, min_open=True)


def check_level(codec: str, level: int | None, *, option: str = "--compress") -> None:
    """Raise UsageError unless ``level`` fits ``codec`` (None: the codec's default), by the
    one table of levels, :data:`lamina.core.compression.LEVEL_RANGES` (archive blocks and
    backup images alike; ``none`` takes no level)."""
    if level is None:
        return
    bounds = compression.LEVEL_RANGES.get(codec)
    if bounds is None:
        raise UsageError(f"--level does not apply to {option} {codec}")
    low, high = bounds
    if not low <= level <= high:
        raise UsageError(f"--level for {codec} must be in {low}..{high}, not {level}")


@contextmanager
def open_database(path: str, *, readonly: bool = False, create: bool = False) -> Iterator[Database]:
    """Open an existing database (``create`` only where a command says so) and close it."""
    db = lamina.open(path, create=create, readonly=readonly)
    try:
        yield db
    finally:
        db.close()


def encode_arg(text: str, as_hex: bool, what: str) -> bytes:
    """A command-line key or value to bytes (UTF-8, or hex with ``--hex``)."""
    if not as_hex:
        return text.encode("utf-8", errors="surrogateescape")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not hexadecimal") from exc


def decode_out(data: bytes, as_hex: bool) -> str:
    """Bytes for display: hex with ``--hex``, else UTF-8 (undecodable bytes escaped)."""
    if as_hex:
        return data.hex()
    return data.decode("utf-8", errors="backslashreplace")


# ---------------------------------------------------------------------- JSON
#: Duration fields kept in ns below the CLI, shown in ms in the CLI's JSON.
_NS_TO_MS = {"blocker_held_ns": "blocker_held_ms", "blocker_wait_ns": "blocker_wait_ms"}


def json_ready(obj: Any) -> Any:
    """``obj`` with one field name per quantity: the commit blocker's hold/wait times are
    ``blocker_held_ms``/``blocker_wait_ms`` (floats) wherever they appear (backup, history,
    info, verify, list), never ``*_ns``."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if key in _NS_TO_MS and isinstance(value, int | float):
                out[_NS_TO_MS[key]] = value / 1e6
            else:
                out[key] = json_ready(value)
        return out
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout (see :func:`json_ready`)."""
    click.echo(json.dumps(json_ready(obj), indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------- units and times
def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (the one unit system of every human output)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def iso_time(ns: int | None) -> str:
    """ns since the epoch -> '2026-11-21T10:00:00.123456Z' (UTC); 0/None -> '-'."""
    if not ns:
        return "-"
    when = dt.datetime.fromtimestamp(ns // 1_000_000_000, tz=dt.UTC)
    when = when.replace(microsecond=(ns // 1000) % 1_000_000)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def human_ms(ns: int | float) -> str:
    """A duration in ns -> '0.027 ms'."""
    return f"{ns / 1e6:.3f} ms"


#: ``*_ns`` fields that are durations (shown in ms); every other ``*_ns`` is a time.
DURATIONS_NS = frozenset({"blocker_held_ns", "blocker_wait_ns", "elapsed_ns"})
#: Integer fields that are sizes in bytes although their names do not end in bytes/size.
_SIZE_KEYS = frozenset({"committed_length", "tail_bytes", "block_target"})


def human_key(key: str) -> str:
    """The text label of a field: ``created_ns`` -> ``created`` (its value is a time)."""
    last = key.rpartition(".")[2]
    if last.endswith("_ns"):
        return key[:-3]
    return key


def human_value(key: str, value: Any) -> str:
    """One field for humans: sizes in KiB/MiB, ``*_ns`` as ISO times or ms, None as '-',
    booleans as yes/no, lists comma-separated; never a Python repr."""
    last = key.rpartition(".")[2]
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and last.endswith("_ns"):
        return human_ms(value) if last in DURATIONS_NS else iso_time(int(value))
    if isinstance(value, int) and (last.endswith(("bytes", "size")) or last in _SIZE_KEYS
                                   or ".files." in f".{key}"):
        return human_bytes(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(human_value(key, v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {human_value(str(k), v)}" for k, v in flatten(value)) or "-"
    return str(value)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings -> sorted ``("a.b.c", value)`` pairs (lists stay values)."""
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            out.extend(flatten(obj[key], f"{prefix}.{key}" if prefix else str(key)))
    else:
        out.append((prefix, obj))
    return out


def echo_fields(obj: Mapping[str, Any]) -> None:
    """Print a nested mapping as aligned ``key  value`` lines (stat, check)."""
    rows = [(human_key(k), human_value(k, v)) for k, v in flatten(obj)]
    if not rows:
        return
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal (binary output must not go there)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------------- cancellation
@contextmanager
def cancellation() -> Iterator[threading.Event]:
    """Yield a cancel token (an Event) that SIGINT (Ctrl-C) or SIGTERM sets, for the glue
    to cancel cleanly at its next check (CancelledError: exit 10, the history says
    ``cancelled``). A second signal interrupts at once (KeyboardInterrupt, also exit 10).
    Outside the main thread (an in-process test runner) the token is never set."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: object) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def cancellation_if(enabled: bool) -> Iterator[threading.Event | None]:
    """:func:`cancellation` when ``enabled`` (the glue checks a token or calls back often),
    else None: a signal then interrupts at once (KeyboardInterrupt, exit 10)."""
    if not enabled:
        yield None
        return
    with cancellation() as event:
        yield event


# ---------------------------------------------------------------------- progress
class Progress:
    """The ``progress(done_bytes, total_bytes_or_None)`` callback handed to the glue.

    It raises CancelledError once ``cancel`` is set (so that glue without a cancel token
    still stops at its next chunk, cleaning up as after any error), and shows the phase:
    ``phases[0]`` while bytes are read, ``phases[1]`` once they all are (the glue calls
    back a last time with done == total; what follows — proving the root hash, running
    the checker — reports no progress of its own).
    """

    def __init__(self, title: str, phases: tuple[str, ...], cancel: threading.Event | None,
                 bar: Any = None, task: Any = None) -> None:
        self.title = title
        self.phases = phases
        self.cancel = cancel
        self.bar = bar
        self.task = task
        self.phase_index = 0

    def describe(self) -> str:
        return f"{self.title}: {self.phases[self.phase_index]}"

    def set_phase(self, index: int) -> None:
        """Show phase ``index`` (refreshed at once, not at the next tick)."""
        if index == self.phase_index or index >= len(self.phases):
            return
        self.phase_index = index
        if self.bar is not None:
            self.bar.update(self.task, description=self.describe())
            self.bar.refresh()

    def __call__(self, done: int, total: int | None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"{self.title} cancelled")
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
        if total is not None and done >= total:
            self.set_phase(1)


def transfer_text(done: float, total: float | None) -> str:
    """'1.5 MiB / 8.0 MiB' (or '1.5 MiB' with no total): the bar's size column."""
    return human_bytes(done) if total is None else f"{human_bytes(done)} / {human_bytes(total)}"


def _columns() -> list[Any]:
    from rich.progress import BarColumn, ProgressColumn, Task, TimeRemainingColumn
    from rich.text import Text

    class SizeColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(transfer_text(task.completed, task.total), style="progress.download")

    class SpeedColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{human_bytes(speed)}/s",
                        style="progress.data.speed")

    return [BarColumn(), SizeColumn(), SpeedColumn(), TimeRemainingColumn()]


@contextmanager
def progress_bar(title: str, enabled: bool | None, *, cancel: threading.Event | None = None,
                 phases: tuple[str, ...] = ("copying",)) -> Iterator[Progress]:
    """Yield a :class:`Progress` callback.

    Draws a rich progress bar on stderr when ``enabled`` (None: when stderr is a terminal);
    sizes in KiB/MiB/GiB like every other output.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Progress(title, phases, cancel)
        return
    from rich.console import Console
    from rich.progress import Progress as RichProgress

    with RichProgress("[progress.description]{task.description}", *_columns(),
                      console=Console(stderr=True), transient=True) as bar:
        progress = Progress(title, phases, cancel, bar)
        progress.task = bar.add_task(progress.describe(), total=None)
        yield progress


progress_option = click.option("--progress/--no-progress", "show_progress", default=None,
                               help="Progress bar on stderr (default: when it is a terminal).")


def split_tables(value: str | None) -> list[str] | None:
    """``--tables a,b`` -> ["a", "b"]; None stays None."""
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UsageError("--tables needs at least one table name")
    return names


def only_with_repo(repo_path: str | None, **options: Any) -> None:
    """Raise UsageError for a ``--repo``-only option given without ``--repo``."""
    if repo_path is not None:
        return
    for name, value in options.items():
        if value not in (None, False):
            raise UsageError(f"--{name.replace('_', '-')} applies only with --repo")



@contextmanager
def phase_status(title: str, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """Yield a ``phase(name)`` callback that shows ``title: name`` with a spinner on stderr
    while the work runs (for work whose size is unknown, e.g. the checker); it draws
    nothing unless ``enabled`` (None: when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda name: None
        return
    from rich.console import Console

    with Console(stderr=True).status(f"{title}: starting") as status:
        yield lambda name: status.update(f"{title}: {name}")
