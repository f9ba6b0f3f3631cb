"""Arrows point down only, and no module imports itself in a circle.

Layers (docs/architecture.md): cli -> repository -> online (backup glue) -> database ->
engines -> core; the backup kernel (``lamina.backup``) sits on core beside the engines. Each
package may import only the packages below it (and ``lamina.errors``); an engine imports
core, errors and its own package, nothing else. The engine contract (the driver API) is
``lamina.core.driver``. One documented exception: the facade's ``Database.backup()`` imports
``lamina.online`` inside the method (a convenience for users of the facade).

Cycles are found over *every* import: module level, inside functions and under
``TYPE_CHECKING``.
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
    "engines": {"core", "errors"},  # and their own engine package: see _allowed
    "backup": {"core", "errors", "backup"},
    "database": {"core", "errors", "engines", "database"},
    "dbm": {"core", "errors", "database", "dbm"},
    "workload": {"core", "errors", "database", "workload"},
    "online": {"core", "errors", "backup", "engines", "database", "online"},
    "repository": {"core", "errors", "backup", "online", "database", "engines", "repository"},
    "cli": {"core", "errors", "backup", "online", "database", "engines", "repository", "cli",
            "dbm", "workload", "__version__"},
}

#: The one documented import that closes a cycle: Database.backup() (a method-level import
#: of lamina.online, which builds on lamina.database). Without it the graph has no cycle.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = {("lamina.database", "lamina.online")}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported lamina name, line, inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                # "from lamina import online" imports lamina.online
                found.extend((f"{child.module}.{a.name}", child.lineno, in_function)
                             for a in child.names)
            walk(child, nested)

    walk(tree, False)
    return [(name, line, fn) for name, line, fn in found if name.startswith("lamina.")]


def _module_of(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_of(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _allowed(package: str, module: str, target: str, in_function: bool) -> bool:
    rest = target.split(".")[1:]
    top = rest[0]
    if package == "database" and in_function and target == "lamina.online":
        return True  # Database.backup(): the one documented upward call
    if package == "engines":
        own = module.split(".")[2:3]  # lamina.engines.<engine>...
        if top == "engines":
            return len(rest) == 1 or rest[1:2] == own
    return top in ALLOWED[package]


def test_every_import_points_down() -> None:
    wrong = []
    for module, path in _modules().items():
        parts = module.split(".")
        if len(parts) < 2 or parts[1] in ("__main__", "py"):
            continue
        package = parts[1]
        for target, line, in_function in _imports(path):
            if not _allowed(package, module, target, in_function):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not wrong, "imports pointing up:\n" + "\n".join(wrong)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _line, _fn in _imports(path):
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                graph[module].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_no_import_cycles_but_the_documented_one() -> None:
    graph = _graph()
    assert len(KNOWN_CYCLE_EDGES) <= 1
    for source, target in KNOWN_CYCLE_EDGES:
        assert target in graph[source], f"{source} no longer imports {target}: drop the entry"
        graph[source].discard(target)
    cycles = [sorted(c) for c in _cycles(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_notices_an_upward_import() -> None:
    assert not _allowed("core", "lamina.core.x", "lamina.engines.btree", False)
    assert not _allowed("engines", "lamina.engines.btree.x", "lamina.backup.kernel", False)
    assert not _allowed("engines", "lamina.engines.btree.x", "lamina.backup.driver", False)
    assert not _allowed("engines", "lamina.engines.btree.x", "lamina.engines.archive.table",
                        False)
    assert _allowed("engines", "lamina.engines.btree.x", "lamina.engines.btree.tree", False)
    assert _allowed("engines", "lamina.engines.btree.x", "lamina.core.driver", False)
    assert not _allowed("backup", "lamina.backup.kernel", "lamina.engines.btree", False)
    assert not _allowed("backup", "lamina.backup.kernel", "lamina.online", False)
    assert _allowed("online", "lamina.online.chain", "lamina.engines.btree", False)
    assert not _allowed("database", "lamina.database", "lamina.online", False)
    assert _allowed("database", "lamina.database", "lamina.online", True)


def test_the_checker_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []
