"""What every command shares: opening a database, printing text or JSON, key encodings."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

import lamina
from lamina.database import Database
from lamina.errors import UsageError

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
hex_option = click.option("--hex", "as_hex", is_flag=True,
                          help="Keys and values are hexadecimal instead of UTF-8 text.")


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
        return text.encode("utf-8")
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not hexadecimal") from exc


def decode_out(data: bytes, as_hex: bool) -> str:
    """Bytes for display: hex with ``--hex``, else UTF-8 (undecodable bytes escaped)."""
    if as_hex:
        return data.hex()
    return data.decode("utf-8", errors="backslashreplace")


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def stdout_is_terminal() -> bool:
    """True when stdout is an interactive terminal (progress bars go there)."""
    return sys.stdout.isatty()


@contextmanager
def progress_bar(description: str, enabled: bool | None) -> Iterator[Any]:
    """Yield a ``progress(done_bytes, total_bytes_or_None)`` callback.

    Draws a rich progress bar on stderr when ``enabled`` (None: when stderr is a terminal);
    otherwise the callback does nothing.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


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
