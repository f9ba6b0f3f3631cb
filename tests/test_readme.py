"""The README's Python tour runs as written (so the user's page cannot drift from the API)."""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_tour() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "lamina.open(" in b and "db.backup(" in b)


def _run(tour: str, tmp_path: Path) -> None:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(tour, "README.md", "exec"), {"print": lambda *a: None})
    finally:
        os.chdir(old)
    assert (tmp_path / "copy.db" / "LAMINA").exists()
    assert (tmp_path / "mon.db" / "LAMINA").exists()
    assert (tmp_path / "latest.db" / "LAMINA").exists()


def test_python_tour_runs(tmp_path: Path) -> None:
    _run(_python_tour(), tmp_path)


#: A repository the tour opens: ``Repository.init("backups")``, ``Repository.open("vault"``.
REPOSITORY = re.compile(r'(?<=Repository\.(?:init|open)\()"(\w+)"')


def test_python_tour_runs_on_s3(tmp_path: Path, s3_url: str) -> None:
    """The same tour with its repositories on the tests' S3 server: each repository name
    becomes an ``s3://`` URL, nothing else changes."""
    from lamina.repository import layout as L
    from support.rawstore import RawStore

    tour = _python_tour()
    names = set(REPOSITORY.findall(tour))
    assert names == {"backups", "vault"}, names
    _run(REPOSITORY.sub(lambda m: f'"{s3_url}-{m.group(1)}"', tour), tmp_path)
    for name in names:
        assert not (tmp_path / name).exists()
        assert L.CONFIG_KEY in RawStore(f"{s3_url}-{name}").names()
    assert RawStore(f"{s3_url}-backups").names(L.IMAGES_PREFIX)


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    commands = re.findall(r"```sh\n(.*?)```", text, re.S)[0].strip().splitlines()
    assert "lamina demo" in commands[0] and "pytest" in commands[1]
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = commands[1].split("#")[0].strip()
    assert test_command in ci, "CI must run exactly the README's test command"
