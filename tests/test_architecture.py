"""The package's import graph: no cycle anywhere, and surgery imports no importer.

The graph is read from the source with :mod:`ast`: every ``import`` statement counts,
at module level or inside a function, except those under ``if TYPE_CHECKING:`` (never
run). ``from . import name`` of a lazily mapped public name (``fcn_cam._PUBLIC``) counts
as an import of the module that defines it. A module's implicit import of its parent
package is not an edge (every submodule would otherwise form a cycle with its
``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            t = node.test
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def _lazy_names(modules: dict[str, Path], package: str) -> dict[str, str]:
    """``_PUBLIC``-style tables of a package ``__init__``: public name → defining module."""
    tree = ast.parse(modules[package].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_PUBLIC" for t in node.targets):
            table = ast.literal_eval(node.value)
            return {name: f"{package}.{mod}" for name, mod in table.items()}
    return {}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports (anywhere in its body, functions included)."""
    modules = _modules(root, package)
    lazy = _lazy_names(modules, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def resolve(target: str, name: str | None) -> str | None:
        if name is not None and f"{target}.{name}" in modules:
            return f"{target}.{name}"
        if name is not None and target == package and name in lazy:
            return lazy[name]
        return target if target in modules else None

    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            found: list[str | None] = []
            if isinstance(node, ast.Import):
                found = [resolve(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [resolve(target, a.name) for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                  == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
                found = [resolve(str(node.args[0].value), None)]
            graph[mod].update(m for m in found if m is not None and m != mod)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, "fcn_cam")


def test_no_import_cycle(graph):
    assert "fcn_cam.surgery" in graph and "fcn_cam.importers.fx" in graph
    assert cycles(graph) == []


def test_surgery_imports_no_importer(graph):
    """Surgery converts a Layout; importers (and the public convert that picks one) sit above it."""
    below = reachable(graph, "fcn_cam.surgery")
    above = sorted(m for m in below if m.startswith("fcn_cam.importers") or m == "fcn_cam.conversion")
    assert above == []
    assert {"fcn_cam.layout", "fcn_cam.layers", "fcn_cam.errors"} <= below


def test_checker_finds_function_level_cycles(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found, one under
    TYPE_CHECKING is not, and a lazily mapped public name counts as its module."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('_PUBLIC = {"thing": "c"}\n')
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import y\n")
    (pkg / "d.py").write_text("from .c import z\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "e.py").write_text("from .. import thing\n")
    (pkg / "e.py").write_text("import importlib\nimportlib.import_module('pkg.sub.e')\n")
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.sub.e"] == {"pkg.c"} and g["pkg.e"] == {"pkg.sub.e"} and g["pkg.c"] == set()
    assert cycles(g) == [["pkg.a", "pkg.b"]]


def test_public_names_are_one_table():
    """What ``fcn_cam`` exports is the lazy table, and every name in it resolves."""
    import fcn_cam

    assert set(fcn_cam.__all__) == set(fcn_cam._PUBLIC)
    for name in fcn_cam.__all__:
        assert getattr(fcn_cam, name) is not None
    assert not hasattr(fcn_cam, "stretch")  # documented as wrong: a test helper now
