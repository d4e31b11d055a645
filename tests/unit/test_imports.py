"""No import cycle among si_xen's modules.

Every import counts, module-level or inside a function: a cycle made "work" by moving one of
its imports into a function (both cycles this test was written for were such) is still two
modules that cannot be understood, tested or moved one without the other. Imports under
``if TYPE_CHECKING:`` do not run, so they do not count. ``from pkg import name`` is an edge
to the module pkg.name if there is one, else to pkg (whose __init__ defines name)."""

from __future__ import annotations

import ast
import os

import si_xen

PKG_DIR = os.path.dirname(si_xen.__file__)


def modules(pkg_dir: str = PKG_DIR) -> dict[str, str]:
    out = {}
    top = os.path.dirname(pkg_dir)
    for d, _, files in os.walk(pkg_dir):
        for f in files:
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(d, f), top)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = os.path.join(d, f)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The si_xen modules that module ``name`` (file ``path``) imports."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: set[str] = set()
    todo = [tree]
    while todo:
        for node in ast.iter_child_nodes(todo.pop()):
            if _type_checking(node):
                continue
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name in known}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    out |= {sub} if sub in known else {base} & known.keys()
            else:
                todo.append(node)
    return out - {name}


def cycles(pkg_dir: str = PKG_DIR) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    known = modules(pkg_dir)
    graph = {m: sorted(imports(m, p, known)) for m, p in known.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles() == []


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "si_xen"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from si_xen import a\n")
    (pkg / "c.py").write_text("import si_xen.sub\n")
    assert cycles(str(pkg)) == [["si_xen.a", "si_xen.sub.b"]]
