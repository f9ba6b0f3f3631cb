"""Issue 10, item 15: the README's CLI tour runs verbatim, in order, and every command
exits 0.

The tour is every ```sh block after the one under "The two commands" (that one installs
and runs the whole suite). Each line runs with ``bash -c`` in a fresh temporary directory,
with the venv's ``lamina`` first on PATH, transformed in three documented ways only:

* a line that is only a comment (``#   continued explanation``) is skipped;
* a trailing comment (`` # -> admin``, outside quotes) is removed;
* optional-argument markers (``[--json]``, ``[--id ID]``) are removed: the command runs
  without them.

A line ending in ``&`` runs in the background, as the README says; the test waits for it
(its exit code must be 0 too) after the last block.

The tour runs a second time with its repository on the S3 server of the tests: every
repository command's ``backups`` (``repo init backups``, ``--repo backups``) becomes an
``s3://`` URL, nothing else changes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
OPTIONAL = re.compile(r"\s*\[--[^\]]*\]")


def _strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment that starts outside quotes after whitespace."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def tour_commands(text: str) -> list[str]:
    """The tour's command lines, transformed as the module doc says."""
    after = text[text.index("## The two commands"):]
    blocks = re.findall(r"```sh\n(.*?)```", after, re.S)
    commands = []
    for block in blocks[1:]:  # blocks[0]: the two commands themselves
        for raw in block.splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            line = OPTIONAL.sub("", _strip_comment(raw)).strip()
            if line:
                commands.append(line)
    return commands


def test_the_tour_is_extracted_as_documented() -> None:
    commands = tour_commands(README.read_text())
    assert commands[0] == "lamina create-table shop.db users"
    assert "lamina scan shop.db users --prefix al --limit 10" in commands
    assert any(c.endswith("&") and "workload" in c for c in commands)
    assert all("#" not in c and "[--" not in c for c in commands)
    assert any("--repo" in c for c in commands) and any("prune" in c for c in commands)


REPO_WORD = re.compile(r"(?<=repo init )backups\b|(?<=--repo )backups\b")


def test_readme_tour_runs_verbatim(tmp_path: Path) -> None:
    _run_tour(tour_commands(README.read_text()), tmp_path)


def test_readme_repository_tour_runs_on_s3(tmp_path: Path, s3_url: str) -> None:
    commands = tour_commands(README.read_text())
    on_s3 = [REPO_WORD.sub(s3_url, c) for c in commands]
    changed = [c for c, new in zip(commands, on_s3, strict=True) if c != new]
    assert len(changed) >= 6 and all("backups" not in c for c in on_s3 if s3_url in c)
    _run_tour(on_s3, tmp_path)
    assert not (tmp_path / "backups").exists()  # the repository was on S3


def _run_tour(commands: list[str], tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "lamina").exists(), "the venv's lamina command"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    background: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for line in commands:
            if line.endswith("&"):
                proc = subprocess.Popen(["bash", "-c", line[:-1].strip()], cwd=tmp_path,
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                background.append((line, proc))
                continue
            done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (f"README tour: {line!r} exited "
                                          f"{done.returncode}: {done.stderr.strip()}")
        for line, proc in background:
            _out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"README tour: {line!r} exited {proc.returncode}: {err}"
    finally:
        for _line, proc in background:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
