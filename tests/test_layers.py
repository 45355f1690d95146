"""The folders are the layers: no module imports a higher layer, and the import graph has no loop.

near_schema  <  near_service.core  <  near_service.stores  <  near_service.report  <  near_service.engine
             <  near_service.server  <  near_service.cli
near_schema  <  near_client            (the client never imports near_service)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "near_service": ROOT / "service" / "near_service",
    "near_client": ROOT / "client" / "near_client",
    "near_schema": ROOT / "client" / "near_schema",
}
LAYERS = [
    "near_schema",
    "near_service.core",
    "near_service.stores",
    "near_service.report",
    "near_service.engine",
    "near_service.server",
    "near_service.cli",
]


def module_name(path: Path) -> str:
    for pkg, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [pkg, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def our_imports(path: Path) -> set[str]:
    """Modules of ours that ``path`` imports (at any depth: lazy imports count too)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def layer(module: str) -> int | None:
    hits = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    return hits[-1] if hits else None


MODULES = {module_name(p): p for folder in PACKAGES.values() for p in folder.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_import(module: str) -> None:
    mine = layer(module)
    for imported in our_imports(MODULES[module]):
        if module.startswith("near_client"):
            assert not imported.startswith("near_service"), f"{module} imports {imported}: the client stays light"
        if mine is not None and (theirs := layer(imported)) is not None:
            assert theirs <= mine, f"{module} ({LAYERS[mine]}) imports {imported} ({LAYERS[theirs]}), a higher layer"


def test_import_graph_has_no_loop() -> None:
    graph = {m: {i for i in our_imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}
    for m in graph:  # a module's __init__ re-exporting its children is not a loop
        graph[m] = {i for i in graph[m] if not i.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for nxt in sorted(graph[m]):
            assert state.get(nxt) != 1, "import loop: " + " -> ".join([*path, m, nxt])
            if nxt not in state:
                visit(nxt, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
