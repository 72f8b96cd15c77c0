"""No import cycles among fairbench's modules, function-level imports included.

A cycle is found in the source, not by importing: every `import` / `from ... import` statement anywhere in a
module (at module level or inside a function; not under `if TYPE_CHECKING:`, which never runs) is an edge to the
fairbench module it names. `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fairbench"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package (a package's name → its __init__.py)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Edges(ast.NodeVisitor):
    """The fairbench modules one module's import statements name (wherever they stand, except TYPE_CHECKING)."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.targets: set[str] = set()

    def _add(self, name: str) -> None:
        while name and name not in self.known:  # `a.b.c` where c is a class: the module is `a.b`
            name = name.rpartition(".")[0]
        if name:
            self.targets.add(name)

    def visit_If(self, node: ast.If) -> None:
        if _type_checking_only(node):
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        if module.split(".")[0] != PACKAGE:
            return
        for alias in node.names:
            full = f"{module}.{alias.name}"
            self._add(full if full in self.known else module)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        edges = _Edges(name, path.name == "__init__.py", set(modules))
        edges.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = edges.targets - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Every strongly connected component of more than one module (Tarjan): one cycle through it, and all its
    modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append((_one_cycle(graph, set(component)), sorted(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path back to the start inside one component, e.g. [a, b, c, a]."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(component)  # unreachable for a strongly connected component


def test_no_import_cycles_among_fairbench_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(f"{' → '.join(cycle)} (all modules in it: {', '.join(scc)})"
                                                     for cycle, scc in found)


def test_the_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    """The check itself: a cycle closed only by an import inside a function, and a relative import, are found;
    a TYPE_CHECKING import is not an edge."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fairbench.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fairbench.a import y\n")
    graph = import_graph(tmp_path)
    assert graph["fairbench.a"] == {"fairbench.sub.b"} and graph["fairbench.sub.b"] == {"fairbench.a"}
    assert graph["fairbench.c"] == set()
    assert cycles(graph) == [(["fairbench.a", "fairbench.sub.b", "fairbench.a"], ["fairbench.a", "fairbench.sub.b"])]
