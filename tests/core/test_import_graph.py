"""No import cycles in the core, lazy imports that dodge a cycle included (issue 12).

The graph is built from the source with ast: every ``import`` and ``from ...
import`` of a module of the package, at module level and inside functions,
except those under ``if TYPE_CHECKING:`` (never run). An edge to a package's
``__init__`` counts when a name is read from it: ``from . import x`` depends on
the submodule ``x`` when there is one, else on the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core" / "opp_auth"


def _module_name(root: Path, path: Path) -> str:
    """Dotted name of a source file under root (the package directory)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an if-test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere in the tree but under ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (at any level, TYPE_CHECKING-only excluded)."""
    package = root.name
    files = {_module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # ``from base import name``: the submodule base.name when there is one, else base itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if target in files and target != name and (target == package or target.startswith(package + ".")):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first repeated at the end), or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == white:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_the_core_has_no_import_cycle() -> None:
    """Not at module level, not through a function-level import."""
    graph = import_graph(CORE)
    assert graph.get("opp_auth.manager"), "the graph was not built"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A synthetic package pkg/ with these files."""
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_a_cycle_at_module_level_is_found_and_named(tmp_path: Path) -> None:
    """a -> b -> a, written as relative and absolute imports."""
    root = _package(tmp_path, {"a.py": "from .b import thing\n", "b.py": "import pkg.a\nthing = 1\n"})
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_a_cycle_through_a_lazy_import_is_found(tmp_path: Path) -> None:
    """The import dodged into a function still makes the cycle."""
    root = _package(
        tmp_path,
        {
            "a.py": "from .b import thing\n",
            "b.py": "thing = 1\n\ndef later():\n    from .a import other\n    return other\n",
        },
    )
    assert find_cycle(import_graph(root)) == ["pkg.a", "pkg.b", "pkg.a"]


def test_a_cycle_through_a_subpackage_and_from_dot_import_is_found(tmp_path: Path) -> None:
    """``from . import sub`` and ``from ..x import y`` inside a subpackage."""
    root = _package(
        tmp_path,
        {
            "x.py": "from .http import app\n",
            "http/__init__.py": "",
            "http/app.py": "from . import views\n",
            "http/views.py": "def f():\n    from ..x import y\n",
        },
    )
    cycle = find_cycle(import_graph(root))
    assert cycle is not None and "pkg.x" in cycle and "pkg.http.views" in cycle


def test_imports_only_for_type_checking_are_no_edge(tmp_path: Path) -> None:
    """``if TYPE_CHECKING:`` imports never run; its else branch does."""
    root = _package(
        tmp_path,
        {
            "a.py": "from .b import thing\n",
            "b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import other\n"
                "else:\n    import json\nthing = 1\n"
            ),
        },
    )
    graph = import_graph(root)
    assert graph["pkg.b"] == set() and find_cycle(graph) is None
