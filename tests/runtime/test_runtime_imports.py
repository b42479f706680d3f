"""The runtime's modules import each other without a cycle and use only each other's public names."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import flavorkit

CORE = Path(flavorkit.__file__).parent
RUNTIME = CORE / "runtime"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _runtime_imports(path: Path) -> dict[str, list[str]]:
    """Every ``flavorkit.runtime`` module ``path`` imports (anywhere, TYPE_CHECKING included) -> names taken."""
    found: dict[str, list[str]] = {}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flavorkit.runtime."):
            found.setdefault(node.module, []).extend(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("flavorkit.runtime."):
                    found.setdefault(a.name, [])
    return found


def _modules() -> dict[str, Path]:
    return {f"flavorkit.runtime.{p.stem}": p for p in sorted(RUNTIME.glob("*.py")) if p.stem != "__init__"}


def test_no_runtime_module_imports_another_in_a_cycle() -> None:
    graph = {name: set(_runtime_imports(path)) for name, path in _modules().items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, f"import cycle: {' -> '.join([*path[path.index(name) :], name])}"
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_no_runtime_module_uses_another_module_s_underscore_names() -> None:
    bad: list[str] = []
    for name, path in _modules().items():
        for module, names in _runtime_imports(path).items():
            bad += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                bad.append(f"{name}:{node.lineno} reads .{node.attr} of another object")
    assert bad == []


def test_the_response_models_are_a_kernel_module() -> None:
    # flavorkit.responses sits beside errors and types: it imports only them, the standard library and pydantic.
    allowed = {"flavorkit.errors", "flavorkit.types", "pydantic", "__future__"}
    imported: set[str] = set()
    for node in ast.walk(_tree(CORE / "responses.py")):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    outside = {m for m in imported if m not in allowed and m.split(".")[0] not in sys.stdlib_module_names}
    assert outside == set()
