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

The tour runs a second time with its repositories on the S3 server of the tests: every
repository command's repository (``repo init backups``, ``--repo backups``, the encrypted
``vault`` likewise) becomes an ``s3://`` URL, nothing else changes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lamina.repository import layout as L
from support.rawstore import RawStore

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


#: A repository named by a tour command (the word after ``repo init`` or ``--repo``).
REPO_WORD = re.compile(r"(?<=repo init )(\S+)|(?<=--repo )(\S+)")
#: The tour's repositories (local directory names).
TOUR_REPOSITORIES = ("backups", "vault")


def test_readme_tour_runs_verbatim(tmp_path: Path) -> None:
    _run_tour(tour_commands(README.read_text()), tmp_path)


def test_readme_repository_tour_runs_on_s3(tmp_path: Path, s3_url: str) -> None:
    commands = tour_commands(README.read_text())
    urls = {"backups": s3_url, "vault": f"{s3_url}-vault"}
    named = {m.group(0) for c in commands for m in REPO_WORD.finditer(c)}
    assert named == set(TOUR_REPOSITORIES), named  # a new one: give it a URL here
    on_s3 = [REPO_WORD.sub(lambda m: urls[m.group(0)], c) for c in commands]
    changed = [new for c, new in zip(commands, on_s3, strict=True) if c != new]
    verbs = {c.split()[1] for c in changed}
    assert {"repo", "backup", "list", "restore", "verify", "prune", "replicate",
            "key"} <= verbs, verbs
    assert not [c for c in on_s3 if "--repo" in c and "s3://" not in c]
    _run_tour(on_s3, tmp_path)
    for name, url in urls.items():
        assert not (tmp_path / name).exists()  # the repositories were on S3
        keys = RawStore(url).names()
        assert L.CONFIG_KEY in keys and any(k.startswith(L.IMAGES_PREFIX) for k in keys)
    assert any(k.startswith(L.KEYS_PREFIX) for k in RawStore(urls["vault"]).names())


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
