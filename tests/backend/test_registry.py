"""Backend discovery: isolation of broken plugins, strict mode, light listing, CLI output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import flavorkit
from flavorkit.backend.registry import get_registry
from flavorkit.errors import BackendNotFound, BackendUnavailable, PluginSpecError
from plugin_fixtures import COUNTING_MIDDLEWARE, ECHO_BACKEND, make_distribution

BROKEN_IMPORT = """
raise ImportError("this plugin needs a library that is not installed: frobnitz")
"""

UNKNOWN_HOOK = ECHO_BACKEND.replace(
    "backend = EchoBackend()",
    """
class WithUnknownHook(EchoBackend):
    @hookimpl
    def frobnicate(self, handle):
        return 42

backend = WithUnknownHook()
""",
)

MISSING_HOOK = """
from flavorkit import hookimpl

class NoGenerate:
    @hookimpl
    def dependencies(self):
        return []

backend = NoGenerate()
"""

NEEDS_MISSING_DEP = ECHO_BACKEND.replace(
    "return []\n\n    @hookimpl\n    def capabilities",
    'return ["frobnitz-runtime>=2.0"]\n\n    @hookimpl\n    def capabilities',
    1,
)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site folder with one good, one broken, one unknown-hook and one incomplete plugin."""
    root = make_distribution(
        tmp_path / "site",
        "fk-test-plugins",
        modules={
            "fk_echo": ECHO_BACKEND,
            "fk_broken": BROKEN_IMPORT,
            "fk_unknown": UNKNOWN_HOOK,
            "fk_missing": MISSING_HOOK,
            "fk_needsdep": NEEDS_MISSING_DEP,
        },
        backends={
            "echo": "fk_echo:backend",
            "broken": "fk_broken:backend",
            "unknown-hook": "fk_unknown:backend",
            "no-generate": "fk_missing:backend",
            "needs-dep": "fk_needsdep:backend",
        },
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("FLAVORKIT_STRICT_PLUGINS", raising=False)
    yield root
    for mod in ("fk_echo", "fk_broken", "fk_unknown", "fk_missing", "fk_needsdep", "fk_mw"):
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    get_registry(refresh=True)


def _by_name() -> dict[str, dict[str, object]]:
    return {b["name"]: b for b in flavorkit.backends(refresh=True)}


def test_broken_plugins_are_recorded_and_others_keep_working(plugins: Path) -> None:
    listed = _by_name()
    assert listed["echo"]["available"] is True
    assert listed["onnx-cpu"]["available"] is True, "a broken third-party plugin must not hide first-party ones"

    broken = listed["broken"]
    assert broken["available"] is False
    assert broken["distribution"] == "fk-test-plugins" and broken["version"] == "0.1.0"
    assert "ImportError" in str(broken["error"]) and "frobnitz" in str(broken["error"])

    unknown = listed["unknown-hook"]
    assert unknown["available"] is False
    assert "frobnicate" in str(unknown["error"])

    incomplete = listed["no-generate"]
    assert incomplete["available"] is False
    assert "generate" in str(incomplete["error"]) and "required hook" in str(incomplete["error"])

    # The good plugin is usable end to end while its neighbours are broken.
    info = flavorkit.package(model="hello", backend="echo", path=plugins.parent / "echo-model")
    import mlflow

    out = mlflow.pyfunc.load_model(info.model_uri).predict({"messages": [{"role": "user", "content": "abc"}]})
    assert out[0]["choices"][0]["message"]["content"] == "abc"


def test_asking_for_a_broken_backend_explains_why(plugins: Path) -> None:
    get_registry(refresh=True)
    with pytest.raises(PluginSpecError, match="frobnicate"):
        flavorkit.package(model="x", backend="unknown-hook", path=plugins.parent / "m")
    assert not (plugins.parent / "m").exists()


def test_missing_dependency_gives_exact_pip_hint(plugins: Path) -> None:
    listed = _by_name()
    entry = listed["needs-dep"]
    assert entry["available"] is False
    assert entry["install_hint"] == "pip install 'frobnitz-runtime>=2.0'"
    with pytest.raises(BackendUnavailable) as exc:
        flavorkit.package(model="x", backend="needs-dep", path=plugins.parent / "m")
    assert "pip install 'frobnitz-runtime>=2.0'" in str(exc.value)


def test_strict_mode_turns_plugin_failures_into_errors(plugins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginSpecError, match=r"broken|unknown-hook|no-generate"):
        get_registry(refresh=True)


def test_unknown_backend_lists_installed_ones_and_how_to_add_more() -> None:
    get_registry(refresh=True)
    with pytest.raises(BackendNotFound) as exc:
        flavorkit.package(model="x", backend="onnx-cpuu", path="/tmp/never-written")
    text = str(exc.value)
    assert "'onnx-cpuu'" in text and "onnx-cpu" in text and "onnx-cuda" in text
    assert "flavorkit.backends" in text and "flavorkit backends" in text
    assert not Path("/tmp/never-written").exists()


def test_first_party_gpu_backends_are_listed_unavailable_with_hint() -> None:
    listed = _by_name()
    cuda = listed["onnx-cuda"]
    assert cuda["available"] is False
    assert cuda["install_hint"] == "pip install 'onnxruntime-genai-cuda>=0.15,<0.19'"
    assert cuda["distribution"] == "flavorkit"


def test_middleware_wraps_generate_of_every_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_distribution(
        tmp_path / "site",
        "fk-mw",
        modules={"fk_echo": ECHO_BACKEND, "fk_mw": COUNTING_MIDDLEWARE},
        backends={"echo": "fk_echo:backend"},
        middleware={"counter": "fk_mw:middleware"},
    )
    monkeypatch.syspath_prepend(str(root))
    try:
        import mlflow

        get_registry(refresh=True)
        info = flavorkit.package(model="m", backend="echo", path=tmp_path / "model")
        model = mlflow.pyfunc.load_model(info.model_uri)
        model.predict(
            [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "user", "content": "yo"}]}]
        )
        import fk_mw

        assert fk_mw.calls == [2], "the middleware saw one batched generate call of two requests"
    finally:
        for mod in ("fk_echo", "fk_mw"):
            sys.modules.pop(mod, None)
        monkeypatch.undo()
        get_registry(refresh=True)


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout


def test_listing_never_imports_heavy_runtimes() -> None:
    out = _run(
        "import sys, json, flavorkit; flavorkit.backends();"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch','onnxruntime','onnxruntime_genai','transformers','optimum','mlflow','tensorflow'})))"
    )
    assert json.loads(out) == []


def test_cli_backends_json_and_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flavorkit.cli", "backends", "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(proc.stdout)
    assert isinstance(data, list) and data
    for entry in data:
        assert {"name", "available", "distribution", "version", "error"} <= set(entry)
    names = {e["name"] for e in data}
    assert {"onnx-cpu", "onnx-cuda", "onnx-dml"} <= names

    table = subprocess.run(
        [sys.executable, "-m", "flavorkit.cli", "backends"], capture_output=True, text=True, check=True
    ).stdout
    assert table.splitlines()[0].split() == ["backend", "distribution", "status", "capabilities"]
    cuda_line = next(line for line in table.splitlines() if line.startswith("onnx-cuda "))
    assert cuda_line.split()[:4] == ["onnx-cuda", "flavorkit", flavorkit.__version__, "unavailable"]
    assert (
        "onnx-cuda: onnxruntime-genai-cuda is not installed\n  Fix: pip install 'onnxruntime-genai-cuda>=0.15,<0.19'"
        in table
    )
    assert max(len(line) for line in table.splitlines()) <= 100


def test_a_model_recording_another_object_does_not_replace_an_installed_backend() -> None:
    registry = get_registry(refresh=True)
    shipped = registry.load_object("onnx-cpu", "flavorkit_onnxgenai.plugin:dml")
    assert shipped.object_path == "flavorkit_onnxgenai.plugin:dml"
    assert registry.get("onnx-cpu").object_path == "flavorkit_onnxgenai.plugin:cpu"
    assert registry.load_object("onnx-cpu", "flavorkit_onnxgenai.plugin:dml") is shipped


def test_the_user_guides_backends_sample_is_what_the_command_prints() -> None:
    import re
    from pathlib import Path

    from flavorkit.cli import _backends_table

    guide = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text(encoding="utf-8")
    sample = re.search(r"<!-- backends-sample:start -->\n```\n(.*?)\n```\n<!-- backends-sample:end -->", guide, re.S)
    assert sample, "the user guide's flavorkit backends sample is missing"
    statuses = [s for s in get_registry(refresh=True).statuses() if s.name in ("onnx-cpu", "onnx-cuda")]
    assert _backends_table(statuses) == sample[1]
