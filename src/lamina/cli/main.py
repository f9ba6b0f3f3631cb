"""Entry point of the ``lamina`` command: the group, command registration, error exits.

Every :class:`~lamina.errors.LaminaError` becomes one line on stderr and its fixed exit code
(see :mod:`lamina.errors`); anything else is a bug and exits 1 with a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from lamina import __version__
from lamina.errors import LaminaError

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
    "list": "list",
    "prune": "prune",
}


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
        except LaminaError as exc:
            click.echo(f"lamina: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=LaminaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lamina")
def cli() -> None:
    """Lamina: embedded storage that can be backed up online, incrementally and verifiably."""


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="lamina")
