"""The plugin SDK is a declared surface: pinned names, cheap to import, and the only door plugins use.

``flavorkit.sdk`` is what a backend imports; ``flavorkit.testing`` is the kit. Everything else in
``core/flavorkit`` is internal and says so in its module docstring, and only the demo and the kit
may name a first-party backend.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pluggy
import pytest

import flavorkit
import flavorkit.sdk

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "flavorkit"

#: The SDK's names. Changing this list is changing the plugin contract: do it on purpose.
SDK_NAMES = [
    "Artifacts",
    "BackendError",
    "BackendUnavailable",
    "ByteDecoder",
    "Capability",
    "CostModel",
    "Delta",
    "FlavorkitError",
    "GenerationRequest",
    "GenerationSession",
    "HandleHooks",
    "InterleavedSession",
    "InvalidRequest",
    "LogitsProcessor",
    "Message",
    "ModelConfigError",
    "ModelDir",
    "ModelSourceError",
    "NativeStream",
    "PackagingError",
    "PluginSpecError",
    "RuntimeHandle",
    "RuntimeInfo",
    "SPEC_VERSION",
    "TextStream",
    "TokenRow",
    "WindowDecoder",
    "accept_tokens",
    "build_scratch",
    "cache_root",
    "cached_build",
    "cached_dir",
    "check_links",
    "content_key",
    "cpu_threads",
    "extra_requirements",
    "guidance_tokenizer_from_file",
    "guidance_tokenizer_from_hf",
    "hookimpl",
    "installed_version",
    "looks_like_hub_id",
    "model_dir",
    "pinned",
    "process_logits",
    "resolve_model_dir",
    "stage_tree",
    "step",
    "tool_versions",
    "tree_digest",
    "usable_cores",
]

#: The only flavorkit modules a first-party plugin or the example may import.
ALLOWED_IMPORTS = frozenset(
    {"flavorkit", "flavorkit.sdk", "flavorkit.testing", "flavorkit.testing.plugin", "flavorkit.testing.models"}
)

#: What a user's script (``examples/spark``: not a plugin) may import besides: the public user API.
USER_SCRIPT_IMPORTS = ALLOWED_IMPORTS | {"flavorkit.spark", "flavorkit.serve"}
#: The folders under examples/ that hold scripts for users rather than a backend plugin.
USER_SCRIPTS = ("spark",)

#: Modules of core/flavorkit (relative paths) that are public and so carry no internal marker.
PUBLIC_MODULES = frozenset(
    {
        "__init__.py",  # the user surface: package, backends, errors, types
        "sdk.py",  # the plugin SDK
        "spark.py",  # spark_udf with flavorkit's request check, documented in scaling-out
        "serve/__init__.py",  # create_app, documented in the user guide
        "testing/__init__.py",  # the kit
        "testing/plugin.py",  # the kit's pytest plugin, enabled by its module name
        "testing/models.py",  # the kit's test-model builders
    }
)
INTERNAL_MARKER = "Internal: not part of the plugin SDK"

#: Backend ids of the first-party plugins and the example.
BACKEND_IDS = ("onnx-cpu", "onnx-cuda", "onnx-dml", "transformers", "optimum-onnx", "llama-cpp")
#: (module, backend id) pairs outside demo/ and testing/ allowed to name a backend, with the reason.
BACKEND_ID_ALLOWED: dict[tuple[str, str], str] = {}

HEAVY = ("mlflow", "torch", "onnxruntime", "onnxruntime_genai", "transformers", "optimum")


def _python_files(*roots: Path) -> list[Path]:
    files = [p for root in roots for p in sorted(root.rglob("*.py"))]
    return [p for p in files if "__pycache__" not in p.parts and ".venv" not in p.parts]


def _core_modules() -> list[str]:
    return [p.relative_to(CORE).as_posix() for p in _python_files(CORE)]


def _flavorkit_imports(path: Path) -> list[tuple[int, str]]:
    """Every flavorkit module a file imports (``from flavorkit import sub`` counts as ``flavorkit.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "flavorkit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "flavorkit":
                continue
            found.append((node.lineno, node.module))
            if node.module == "flavorkit":  # a submodule imported by name is an import of that submodule
                found += [(node.lineno, f"flavorkit.{a.name}") for a in node.names if a.name not in flavorkit.__all__]
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in node.targets
        ):
            found += [
                (node.lineno, c.value)
                for c in ast.walk(node.value)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value.split(".")[0] == "flavorkit"
            ]
    return found


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """The ids of the constant nodes that are module, class or function docstrings."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _module_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported when the module itself is imported (not inside functions or ``if TYPE_CHECKING:``)."""
    found: list[str] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)  # the type checker's imports never run
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return found


def test_the_sdk_names_are_pinned() -> None:
    assert sorted(flavorkit.sdk.__all__) == SDK_NAMES, "flavorkit.sdk.__all__ changed: update SDK_NAMES on purpose"
    assert len(set(flavorkit.sdk.__all__)) == len(flavorkit.sdk.__all__), "a name is listed twice in __all__"


@pytest.mark.parametrize("name", SDK_NAMES)
def test_every_sdk_name_resolves_to_a_flavorkit_object(name: str) -> None:
    value = getattr(flavorkit.sdk, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert value.__module__.split(".")[0] == "flavorkit", f"{name} comes from {value.__module__}"
        assert value.__name__ == name, f"flavorkit.sdk.{name} is {value.__name__}"
    elif name == "hookimpl":
        assert isinstance(value, pluggy.HookimplMarker) and value.project_name == "flavorkit"
    elif name == "Message":  # a type alias
        assert typing.get_origin(value) is not None
    else:
        assert name == "SPEC_VERSION" and type(value) is int and value >= 1, name


def test_star_import_gives_exactly_the_sdk_names() -> None:
    namespace: dict[str, object] = {}
    exec("from flavorkit.sdk import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == SDK_NAMES


def test_importing_the_sdk_or_the_cli_loads_no_heavy_runtime_and_no_demo() -> None:
    """Entry points import the SDK whenever backends are listed; the CLI imports the demo only when it runs."""
    script = (
        "import json, sys, flavorkit.sdk, flavorkit.cli\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        f"print(json.dumps(sorted(top & {set(HEAVY)!r}) + sorted(m for m in sys.modules if m == 'flavorkit.demo')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize(
    "path",
    _python_files(ROOT / "plugins", ROOT / "examples"),
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_plugins_and_examples_import_only_the_sdk_and_the_kit(path: Path) -> None:
    script = any(path.is_relative_to(ROOT / "examples" / folder) for folder in USER_SCRIPTS)
    allowed = USER_SCRIPT_IMPORTS if script else ALLOWED_IMPORTS
    bad = [f"line {line}: {module}" for line, module in _flavorkit_imports(path) if module not in allowed]
    assert not bad, f"{path.relative_to(ROOT)} imports flavorkit internals (use flavorkit.sdk): {bad}"


def test_a_plugin_may_not_import_the_user_api_a_user_script_may(tmp_path: Path) -> None:
    """flavorkit.spark is public for users' scripts, not for plugins: a backend builds on the SDK alone."""
    source = tmp_path / "plugin.py"
    source.write_text("from flavorkit.spark import spark_udf\nimport flavorkit.serve\n", encoding="utf-8")
    modules = sorted(m for _, m in _flavorkit_imports(source))
    assert [m for m in modules if m not in ALLOWED_IMPORTS] == ["flavorkit.serve", "flavorkit.spark"]
    assert [m for m in modules if m not in USER_SCRIPT_IMPORTS] == []


def test_the_import_scan_sees_internal_imports(tmp_path: Path) -> None:
    """The scan above must not pass by seeing nothing."""
    source = tmp_path / "plugin.py"
    source.write_text(
        "import flavorkit.backend.registry\n"
        "from flavorkit import hookimpl, registry\n"
        "from flavorkit.sdk import hookimpl as h\n"
        "def f():\n    from flavorkit.errors import InvalidRequest\n"
        "pytest_plugins = ['flavorkit.testing.harness']\n",
        encoding="utf-8",
    )
    modules = sorted(m for _, m in _flavorkit_imports(source) if m not in ALLOWED_IMPORTS)
    assert modules == [
        "flavorkit.backend.registry",
        "flavorkit.errors",
        "flavorkit.registry",
        "flavorkit.testing.harness",
    ]


def test_the_public_module_list_is_current() -> None:
    assert not PUBLIC_MODULES - set(_core_modules()), "a public module listed here no longer exists"


@pytest.mark.parametrize("module", _core_modules())
def test_every_internal_module_says_so_first(module: str) -> None:
    doc = ast.get_docstring(ast.parse((CORE / module).read_text(encoding="utf-8")), clean=True)
    assert doc, f"{module} has no module docstring"
    head = "\n".join(doc.splitlines()[:3])  # the summary line, or the paragraph right after it
    private = Path(module).name.startswith("_") and Path(module).name != "__init__.py"
    if module in PUBLIC_MODULES:
        assert INTERNAL_MARKER not in doc, f"{module} is public but marked internal"
    elif not private:  # underscore modules are private by name
        assert INTERNAL_MARKER in head, f"{module}: the docstring must start by saying '{INTERNAL_MARKER}'"


@pytest.mark.parametrize("module", [m for m in _core_modules() if not m.startswith("demo/")])
def test_no_core_module_imports_the_demo_at_import_time(module: str) -> None:
    imported = _module_level_imports(ast.parse((CORE / module).read_text(encoding="utf-8")))
    assert not [m for m in imported if m == "flavorkit.demo" or m.startswith("flavorkit.demo.")], module


def _backend_ids_named(path: Path) -> list[tuple[int, str]]:
    """Backend ids in a module's string literals (docstrings are documentation and do not count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstring_nodes(tree)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(b) for b in BACKEND_IDS) + r")(?![\w-])")
    return [
        (node.lineno, match.group(1))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        for match in pattern.finditer(node.value)
    ]


def test_the_core_names_no_backend_outside_the_demo_and_the_kit() -> None:
    named = [
        f"{module}:{line}: {backend_id}"
        for module in _core_modules()
        if not module.startswith(("demo/", "testing/"))
        for line, backend_id in _backend_ids_named(CORE / module)
        if (module, backend_id) not in BACKEND_ID_ALLOWED
    ]
    assert not named, f"the core names a backend (move it to flavorkit.demo or a plugin): {named}"


def test_the_backend_id_scan_sees_literals_but_not_docstrings(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        '"""Docstrings may say onnx-cpu."""\n'
        'HINT = "try --backend transformers"\n'
        'def f(x):\n    """Or optimum-onnx."""\n    return x == "llama-cpp" or f"{x} onnx-cpu-ish"\n',
        encoding="utf-8",
    )
    assert _backend_ids_named(source) == [(2, "transformers"), (5, "llama-cpp")]


def test_the_kit_gives_plugin_tests_what_they_used_to_take_from_internals() -> None:
    """The example's tests need the registered backend and a GGUF model: both come from flavorkit.testing."""
    import flavorkit.backend.registry
    import flavorkit.testing
    from flavorkit.testing.models import smollm2_gguf

    assert "get_backend" in flavorkit.testing.__all__
    assert flavorkit.testing.get_backend is flavorkit.backend.registry.get_backend
    assert flavorkit.testing.get_backend("onnx-cpu").name == "onnx-cpu"
    assert smollm2_gguf().suffix == ".gguf" and smollm2_gguf().is_file()
