"""The README's Python tour runs as written (so the user's page cannot drift from the API)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_tour_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    tour = next(b for b in blocks if "lamina.open(" in b and "db.backup(" in b)
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(tour, "README.md", "exec"), {"print": lambda *a: None})
    finally:
        os.chdir(old)
    assert (tmp_path / "copy.db" / "LAMINA").exists()
    assert (tmp_path / "mon.db" / "LAMINA").exists()
    assert (tmp_path / "latest.db" / "LAMINA").exists()


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)```", text, re.S)[0].strip().splitlines()
    assert "lamina demo" in commands[0] and "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = commands[1].split("#")[0].strip()
    assert test_command in ci, "CI must run exactly the README's test command"
