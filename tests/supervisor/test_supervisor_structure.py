"""The supervisor layer's modules import each other without circles: the zygote, the pool
and the start methods are handed what they need, never the Supervisor (core)."""

from __future__ import annotations

import ast
from pathlib import Path

import warden.supervisor

HERE = Path(next(iter(warden.supervisor.__path__)))
# Modules above the Supervisor: they use it; nothing below may reach back up to it.
ABOVE_CORE = {"__init__", "sync", "executor", "dask_executor", "serve", "serve_config", "serve_cli"}


def _imports() -> dict[str, set[str]]:
    """Every module's imports of its siblings, at any depth (function-level and
    TYPE_CHECKING ones included: a circle hidden in a function is still a circle)."""
    mods = {p.stem for p in HERE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for m in mods:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((HERE / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "warden.supervisor":
                    deps.update(a.name for a in node.names if a.name in mods)
                elif node.module.startswith("warden.supervisor."):
                    deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[2] for a in node.names
                            if a.name.startswith("warden.supervisor.")
                            and len(a.name.split(".")) > 2)
        graph[m] = {d for d in deps if d in mods and d != m}
    return graph


def test_no_module_below_the_supervisor_imports_it() -> None:
    graph = _imports()
    users = {m for m, deps in graph.items() if "core" in deps}
    assert users <= ABOVE_CORE, users - ABOVE_CORE


def test_no_import_circles() -> None:
    graph = _imports()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(m):], m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
