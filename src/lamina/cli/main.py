"""Entry point of the ``lamina`` command: the group, command registration, error exits.

The contract every command keeps (README, "Errors"):

* Every :class:`~lamina.errors.LaminaError` and every bad argument (click's usage errors)
  becomes ONE line on stderr and its fixed exit code (see :mod:`lamina.errors`); with
  ``--json`` on the command line that line is one JSON object (:func:`error_json`).
* Ctrl-C (SIGINT) and SIGTERM end a command with exit 10 ("cancelled", one line): commands
  that can cancel cleanly pass a cancel token down (:func:`lamina.cli.common.cancellation`),
  the others are interrupted (KeyboardInterrupt).
* A closed stdout (``lamina scan DB T | head -1``) ends the command quietly with exit 141
  (128 + SIGPIPE, what the shell reports for any tool killed by a closed pipe), nothing on
  stderr.
* Anything else is a bug: exit 1 with a traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from lamina import __version__
from lamina.errors import CancelledError, LaminaError

#: command name -> module under lamina.cli (one command per module).
COMMANDS = {
    "demo": "demo",
    "check": "check",
    "stat": "stat",
    "tables": "tables",
    "create-table": "create_table",
    "drop-table": "drop_table",
    "put": "put",
    "get": "get",
    "delete": "delete",
    "scan": "scan",
    "append": "append",
    "optimize": "optimize",
    "workload": "workload",
    "backup": "backup",
    "restore": "restore",
    "verify": "verify",
    "info": "info",
    "history": "history",
    "repo": "repo",
    "key": "key",
    "list": "list",
    "prune": "prune",
    "replicate": "replicate",
}

#: Exit status of a command whose stdout was closed by its reader (128 + SIGPIPE).
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE
#: Exit status of a bad argument (click's usage errors; same as UsageError).
EXIT_USAGE = 2


def json_requested(args: Sequence[str]) -> bool:
    """True when ``--json`` is on the command line (before a ``--``), so that errors are
    reported as JSON even when they happen before the option is parsed."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def error_json(exc: BaseException, code: int, message: str,
               kind: str | None = None) -> dict[str, Any]:
    """The JSON object an error is reported as with ``--json``: ``error`` (the class name of
    a LaminaError; ``UsageError`` for every bad argument click finds),
    ``exit``, ``message``, and the error's own location fields when it has them
    (CorruptionError: ``what``, ``path``, ``where``; CheckFailedError: ``findings``;
    a bad argument: ``param``)."""
    out: dict[str, Any] = {"error": kind or type(exc).__name__, "exit": code,
                           "message": message}
    for name in ("what", "path", "where"):
        value = getattr(exc, name, None)
        if isinstance(value, str) and value:
            out[name] = value
    findings = getattr(exc, "findings", None)
    if isinstance(findings, list) and findings:
        out["findings"] = [dataclasses.asdict(f) if dataclasses.is_dataclass(f)
                           and not isinstance(f, type) else str(f) for f in findings]
    param = getattr(exc, "param", None)
    if isinstance(param, click.Parameter):
        out["param"] = param.opts[0] if param.opts else param.name
    return out


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _report(exc: BaseException, code: int, message: str, as_json: bool,
            kind: str | None = None) -> NoReturn:
    message = _one_line(message)
    if as_json:
        line = json.dumps(error_json(exc, code, message, kind), sort_keys=True, default=str)
    else:
        line = f"lamina: {message}"
    try:
        click.echo(line, err=True)
    except OSError:
        pass
    sys.exit(code)


def _quiet_pipe_end() -> NoReturn:
    """stdout's reader went away: point stdout at /dev/null (so that the interpreter's last
    flush cannot complain on stderr) and exit like a process killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (in-process runner)
        pass
    sys.exit(EXIT_PIPE_CLOSED)


def _usage_message(exc: click.ClickException) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        return f"{message} (see '{ctx.command_path} --help')"
    return message


class _PipeClosed(Exception):
    """stdout's reader went away (EPIPE) while a command wrote to it."""


class LaminaGroup(click.Group):
    """A click group that loads each command from its module and maps errors to exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"lamina.cli.{module_name}")
        command: click.Command = module.command
        return command

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see main())
            raise CancelledError("cancelled") from exc
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            raise _PipeClosed from exc  # past click's own EPIPE handling (exit 1)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        """Run the command; every outcome ends here as an exit status (see the module doc)."""
        argv = list(sys.argv[1:] if args is None else args)
        as_json = json_requested(argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False,
                              windows_expand_args=windows_expand_args, **extra)
        except LaminaError as exc:
            _report(exc, exc.exit_code, str(exc), as_json)
        except click.exceptions.Abort:  # Ctrl-C while click itself was parsing
            _report(CancelledError("cancelled"), CancelledError.exit_code, "cancelled",
                    as_json)
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError):
                _report(exc, EXIT_USAGE, _usage_message(exc), as_json, kind="UsageError")
            _report(exc, exc.exit_code, _usage_message(exc), as_json)
        except _PipeClosed:
            _quiet_pipe_end()
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=LaminaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lamina")
def cli() -> None:
    """Lamina: embedded storage that can be backed up online, incrementally and verifiably."""


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: SIGTERM is handled like Ctrl-C (exit 10, cancelled)."""
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="lamina")
