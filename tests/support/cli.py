"""The one way tests run the ``lamina`` command.

Two flavours:

* :func:`invoke` runs the command in this process through click's ``CliRunner`` (fast; the
  command's exit code, stdout and stderr, with exceptions other than ``SystemExit``
  re-raised so that a crash is a test failure, not an exit code).
* :func:`run` (text; :func:`run_ok` also asserts exit code 0), :func:`run_bytes` (binary
  stdin/stdout) and :func:`start` (a background ``Popen``) run it as a real process,
  ``python -m lamina.cli`` with this interpreter: real exit codes, signals, failpoints
  (``env``), resource limits (``preexec_fn``) and concurrency with other processes.

Databases that these processes create under a test's ``tmp_path`` are checked at the
test's teardown like the ones the test opens itself (see :mod:`support.checked`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from click.testing import CliRunner

#: The command line of the ``lamina`` command run with this interpreter.
LAMINA: tuple[str, ...] = (sys.executable, "-m", "lamina.cli")
#: How long a command may run (seconds) before :func:`run` gives up with ``TimeoutExpired``.
DEFAULT_TIMEOUT = 120.0


class CliResult(NamedTuple):
    """What an in-process command did: exit code, stdout, stderr (a tuple, so that
    ``code, out, err = invoke(...)`` and ``invoke(...) == (0, "x\\n", "")`` work)."""

    code: int
    stdout: str
    stderr: str


def invoke(*args: str, input: str | None = None) -> CliResult:
    """Run ``lamina ARGS`` in this process (click's ``CliRunner``), ``input`` as stdin.

    Returns the exit code and the separated stdout and stderr. An exception the command did
    not turn into an exit code is re-raised here.
    """
    from lamina.cli.main import cli

    result = CliRunner().invoke(cli, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def _popen_kwargs(env: Mapping[str, str] | None,
                  preexec_fn: Callable[[], None] | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if env is not None:
        kwargs["env"] = dict(env)
    if preexec_fn is not None:
        kwargs["preexec_fn"] = preexec_fn
    return kwargs


def run(*args: str, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None, preexec_fn: Callable[[], None] | None = None,
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``lamina ARGS`` in a new process and wait for it (text I/O).

    ``returncode`` is the exit code (negative: killed by that signal); ``stdout`` and
    ``stderr`` are captured. ``env`` replaces the environment (pass ``{**os.environ, ...}``
    to add to it); ``check=True`` raises ``CalledProcessError`` on a non-zero exit.
    Raises ``TimeoutExpired`` (the process is killed) after ``timeout`` seconds.
    """
    return subprocess.run([*LAMINA, *args], input=input, capture_output=True, text=True,
                          timeout=timeout, check=check, **_popen_kwargs(env, preexec_fn))


def run_ok(*args: str, input: str | None = None, timeout: float = DEFAULT_TIMEOUT,
           env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """:func:`run` that asserts exit code 0 (the message shows the arguments, stdout and
    stderr); returns the finished process."""
    proc = run(*args, input=input, timeout=timeout, env=env)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def run_bytes(*args: str, input: bytes | None = None, timeout: float = DEFAULT_TIMEOUT,
              env: Mapping[str, str] | None = None,
              preexec_fn: Callable[[], None] | None = None,
              check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """:func:`run` with binary stdin, stdout and stderr (images piped through ``-``)."""
    return subprocess.run([*LAMINA, *args], input=input, capture_output=True,
                          timeout=timeout, check=check, **_popen_kwargs(env, preexec_fn))


def start(*args: str, env: Mapping[str, str] | None = None, capture: bool = True,
          text: bool = True) -> subprocess.Popen[Any]:
    """Start ``lamina ARGS`` in a new process and return at once.

    ``capture=True`` pipes stdout and stderr (read them with ``communicate``), else they
    go to ``/dev/null``; ``text`` selects str or bytes pipes. The caller owns the process:
    wait for it or kill it before the test ends.
    """
    sink = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([*LAMINA, *args], stdout=sink, stderr=sink, text=text,
                            **_popen_kwargs(env, None))
