"""Arrows point down only: cli -> repository -> backup -> (api) -> engines -> core.

Each package may import only the packages below it (and ``lamina.errors``). Two documented
exceptions: engines implement the backup driver API, so they may import
``lamina.backup.driver`` (and nothing else of ``lamina.backup``); and the facade's
``Database.backup()`` imports ``lamina.backup.online`` inside the method.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lamina

SRC = Path(lamina.__file__).parent

#: package (first component after "lamina.") -> what its modules may import from lamina.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "core": {"core", "errors"},
    "engines": {"core", "errors", "engines", "backup.driver"},
    "database": {"core", "errors", "engines", "database"},
    "dbm": {"core", "errors", "database", "dbm"},
    "workload": {"core", "errors", "database", "workload"},
    "backup": {"core", "errors", "backup"},  # online and chain: see GLUE
    "repository": {"core", "errors", "backup", "database", "engines", "repository"},
    "cli": {"core", "errors", "backup", "database", "engines", "repository", "cli", "dbm",
            "workload", "__version__"},
}
#: backup modules that build a database's native drivers: they may reach the engines.
GLUE = {"online", "chain"}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported lamina module, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # "from lamina.backup import online" imports lamina.backup.online
                found.extend((f"{child.module}.{a.name}", child.lineno, in_function)
                             for a in child.names)
            walk(child, nested)

    walk(tree, False)
    return [(name, line, fn) for name, line, fn in found if name.startswith("lamina.")]


def _allowed(package: str, module: str, target: str, in_function: bool) -> bool:
    rest = target.split(".")[1:]
    top = rest[0]
    allowed = ALLOWED[package]
    if package == "backup" and module in GLUE:
        allowed = allowed | {"engines", "database"}
    if package == "database" and in_function and target == "lamina.backup.online":
        return True  # Database.backup(): the one documented upward call
    if top == "backup" and "backup.driver" in allowed:
        return ".".join(rest[:2]) == "backup.driver"
    return top in allowed


def test_every_import_points_down() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        package = rel.parts[0].removesuffix(".py")
        if package in ("__init__", "__main__", "py"):
            continue
        for target, line, in_function in _imports(path):
            if not _allowed(package, path.stem, target, in_function):
                wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "imports pointing up:\n" + "\n".join(wrong)


def test_the_checker_notices_an_upward_import() -> None:
    assert not _allowed("core", "x", "lamina.engines.btree", False)
    assert not _allowed("engines", "x", "lamina.backup.kernel", False)
    assert _allowed("engines", "x", "lamina.backup.driver", False)
    assert not _allowed("backup", "kernel", "lamina.engines.btree", False)
    assert _allowed("backup", "online", "lamina.engines.btree", False)
