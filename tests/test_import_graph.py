"""The import graph of ``runs/`` and ``strategies/`` has no cycle (function-level imports included).

Built from the source with :mod:`ast`: every ``import`` / ``from ... import`` anywhere in a module
(module level or inside a function) is an edge, relative imports resolved; ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Imports under ``if TYPE_CHECKING:``
never run and are left out; so is the implicit import of a module's parent package. A cycle is a
strongly connected component of more than one module (or a module importing itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runs", "strategies")

# frozenset of the modules of a cycle that cannot be removed here -> why
ALLOWED: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                found += _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        found += _imports(node)
    return found


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _base(module, path, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges[module] |= {t for t in targets if t in modules and t != module}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_and_relative_imports():
    edges = graph()
    assert "runs.driver" in edges["runs.__main__"]  # inside _cmd_run
    assert "runs.session" in edges["runs.executors.job"]  # from ..session import RunSession
    assert "runs.executors.base" in edges["runs.executors.local"]  # from .base import ...


def test_no_import_cycle_in_runs_or_strategies():
    found = [sorted(c) for c in cycles(graph()) if c not in ALLOWED]
    assert not found, f"import cycles: {found}"


def test_runs_layers_import_one_way():
    """``__main__`` -> driver -> executors -> session -> library: nothing imports a layer above it."""
    edges = graph()
    above = {"runs.session": ("runs.executors", "runs.driver", "runs.__main__", "runs.runner"),
             "runs.executors": ("runs.driver", "runs.__main__", "runs.runner"),
             "runs.driver": ("runs.__main__", "runs.runner")}
    for module, targets in edges.items():
        for layer, forbidden in above.items():
            if module == layer or module.startswith(layer + "."):
                bad = [t for t in targets if t.startswith(forbidden)]
                assert not bad, f"{module} imports {bad}"
