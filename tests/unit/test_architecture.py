"""The shape the README promises: no import cycles among pykexec's modules (imports for
type checkers only are allowed), no module over about 500 lines, mypy clean."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "pykexec").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_graph() -> dict[str, set[str]]:
    """Module -> the pykexec modules it imports at run time (at the top or in a function).
    Importing ``a.b.c`` depends on ``a.b.c`` itself, or on ``a.b`` for a name in it."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if _type_checking_only(child):
                    continue
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                        base = ".".join(parts + ([child.module] if child.module else []))
                    targets = [f"{base}.{alias.name}" for alias in child.names]
                for target in targets:
                    dep = resolve(target) if target.startswith("pykexec") else None
                    if dep and dep != name:
                        graph[name].add(dep)
                visit(child)

        visit(ast.parse(path.read_text()))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            strongconnect(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "pykexec.kexec" in graph and "pykexec.request" in graph["pykexec.kexec"]
    assert cycles(graph) == []


def test_no_module_over_500_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_mypy_is_clean():
    env = dict(os.environ, MYPY_CACHE_DIR=str(SRC.parent / ".mypy_cache"))
    proc = subprocess.run([sys.executable, "-m", "mypy", str(SRC / "pykexec")], capture_output=True, text=True,
                          cwd=SRC.parent, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_test_files_have_unique_basenames():
    """pytest imports test files by basename (rootdir mode, no __init__.py): two files of one
    name in different folders stop the whole run at collection, as a clean CI clone showed."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name]} and {path}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
