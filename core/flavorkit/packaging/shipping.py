"""Which of flavorkit's own files a packaged model ships: what loading it imports, found by reading the code.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A packaged model carries flavorkit's code (``code/flavorkit``) so that it loads where flavorkit is not
installed. It must carry what loading imports and nothing else: the server, the CLI, Spark, the demo
and the conformance kit are thousands of lines a loaded model never runs. Rather than a hand-kept
deny list (which silently ships every new folder), the shipped set is computed: the import closure,
read with :mod:`ast` (imports inside functions included, so nothing loaded lazily is missed; see
:func:`_runs` for the two kinds of code that loading never runs), of the
models-from-code file and of every flavorkit module the backend's own package imports. Each
package's ``__init__`` along the way is shipped too, because importing a module runs it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["LOAD_ROOTS", "imported_modules", "shipped_files"]

# What MLflow runs to load a packaged model; the backend's own imports of flavorkit are added to it.
LOAD_ROOTS = ("flavorkit.mlflow_model",)


def _module_file(root: Path, module: str) -> Path | None:
    """The file of ``module`` (a dotted name under ``root``'s top package), or None if it is not there."""
    parts = module.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    file = base.with_suffix(".py") if parts else None
    return file if file is not None and file.is_file() else None


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` statement found in ``module``."""
    if node.level == 0:
        return node.module or ""
    # A package's own file is named "<package>.__init__", so one level up is the package itself.
    base = ".".join(module.split(".")[: -node.level])
    return f"{base}.{node.module}" if node.module else base


def _runs(tree: ast.Module) -> Iterator[ast.AST]:
    """Every node of ``tree`` that importing it may run, or that its functions may run when called.

    Left out: ``if TYPE_CHECKING:`` blocks (never run) and a module-level ``__getattr__`` (PEP 562),
    which runs only when a caller asks for that attribute by name, as ``flavorkit.package`` is.
    """
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            elif not (node is tree and isinstance(child, ast.FunctionDef) and child.name == "__getattr__"):
                todo.append(child)


def imported_modules(path: Path, module: str, top: str) -> set[str]:
    """Every module of package ``top`` that the source file ``path`` (module ``module``) may import."""
    found: set[str] = set()
    for node in _runs(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            found.add(base)
            # "from flavorkit import errors" imports a submodule; "from flavorkit.sdk import x" a name.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == top or name.startswith(top + ".")}


def _ancestors(module: str) -> Iterable[str]:
    parts = module.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def shipped_files(root: Path, roots: Iterable[str]) -> set[Path]:
    """The files under package folder ``root`` that importing ``roots`` (dotted names) may run, relative to it."""
    top = root.name
    todo = [name for name in roots for name in _ancestors(name)]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        file = _module_file(root, name)
        if file is None:  # a name imported from a module, not a module
            continue
        files.add(file.relative_to(root))
        key = name + ".__init__" if file.name == "__init__.py" else name
        for found in imported_modules(file, key, top):
            todo.extend(_ancestors(found))
    if (root / "py.typed").is_file():
        files.add(Path("py.typed"))
    return files
