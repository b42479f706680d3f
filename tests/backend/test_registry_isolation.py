"""Registry isolation and the listing's fields: hooks raising while listed, duplicate ids, strict mode.

Plugins are real distributions (a ``*.dist-info`` with ``entry_points.txt``) put on ``sys.path``;
discovery reads them through ``importlib.metadata`` exactly as it reads installed packages.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flavorkit
from flavorkit.backend.registry import Registry, get_backend, get_registry, strict_from_env
from flavorkit.cli import main
from flavorkit.errors import BackendNotFound, PluginSpecError
from plugin_fixtures import ECHO_BACKEND, install, isolated_site

RAISES_WHILE_LISTED = ECHO_BACKEND.replace(
    "return []\n\n    @hookimpl\n    def capabilities",
    'raise RuntimeError("dependencies exploded")\n\n    @hookimpl\n    def capabilities',
    1,
)
CAPABILITIES_RAISE = ECHO_BACKEND.replace(
    "return [Capability.STREAMING, Capability.BATCHING]",
    'raise KeyError("no capabilities today")',
    1,
)
WITH_DEPS = ECHO_BACKEND.replace(
    "return []\n\n    @hookimpl\n    def capabilities",
    'return ["pluggy>=1.0", "packaging"]\n\n    @hookimpl\n    def capabilities',
    1,
)
MODULES = ("fk_echo", "fk_echo2", "fk_raises", "fk_capraise", "fk_deps")


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store (0.3 s a test)."""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from isolated_site(tmp_path, monkeypatch, MODULES)


def _listed() -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in flavorkit.backends(refresh=True)}


def test_a_hook_raising_while_listed_marks_only_that_backend_unavailable(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-raisers",
        modules={"fk_raises": RAISES_WHILE_LISTED, "fk_capraise": CAPABILITIES_RAISE, "fk_echo": ECHO_BACKEND},
        backends={"raises": "fk_raises:backend", "capraise": "fk_capraise:backend", "echo": "fk_echo:backend"},
    )
    listed = _listed()
    raises = listed["raises"]
    assert raises["available"] is False
    assert raises["error"].startswith("RuntimeError: dependencies exploded (at ")
    assert "fk_raises.py" in raises["error"]
    assert (raises["install_hint"], raises["dependencies"], raises["capabilities"]) == (None, [], [])
    assert listed["capraise"]["available"] is False
    assert listed["capraise"]["error"].startswith("KeyError: 'no capabilities today'")
    echo = listed["echo"]
    assert echo == {
        "name": "echo",
        "available": True,
        "distribution": "fk-raisers",
        "version": "0.1.0",
        "object": "fk_echo:backend",
        "error": None,
        "install_hint": None,
        "dependencies": [],
        "capabilities": ["batching", "streaming"],
    }
    assert listed["onnx-cpu"]["available"] is True
    # The CLI lists it too, instead of failing.
    assert main(["backends"]) == 0


def test_listed_dependencies_capabilities_and_hint(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(site, monkeypatch, "fk-deps", modules={"fk_deps": WITH_DEPS}, backends={"deps": "fk_deps:backend"})
    entry = _listed()["deps"]
    assert entry["available"] is True
    assert entry["dependencies"] == ["pluggy>=1.0", "packaging"]
    assert entry["capabilities"] == ["batching", "streaming"]
    assert entry["install_hint"] is None and entry["error"] is None
    onnx = _listed()["onnx-cpu"]
    assert onnx["dependencies"] == ["onnxruntime-genai>=0.15,<0.19"]
    assert onnx["capabilities"] == [
        "batch_invariant",
        "batching",
        "continuous_batching",
        "guided_decoding",
        "sampling",
        "seeded_sampling",
        "streaming",
    ]
    cuda = _listed()["onnx-cuda"]
    assert cuda["dependencies"] == ["onnxruntime-genai-cuda>=0.15,<0.19"]
    assert "gpu" in cuda["capabilities"]
    assert cuda["error"] == "onnxruntime-genai-cuda is not installed"


def test_a_duplicate_backend_id_keeps_the_first_and_records_the_second(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(site, monkeypatch, "fk-one", modules={"fk_echo": ECHO_BACKEND}, backends={"echo": "fk_echo:backend"})
    install(site, monkeypatch, "fk-two", modules={"fk_echo2": ECHO_BACKEND}, backends={"echo": "fk_echo2:backend"})
    order = [ep for ep in md.entry_points(group="flavorkit.backends") if ep.name == "echo"]
    assert len(order) == 2
    first, second = order[0], order[1]
    registry = get_registry(refresh=True)
    assert registry.get("echo").object_path == first.value
    assert get_backend("echo").distribution == first.dist.name  # type: ignore[union-attr]
    # Both entry points are listed under their id, in discovery order: the one in use, then the ignored one.
    rows = [b for b in flavorkit.backends(refresh=True) if b["name"] == "echo"]
    assert [(r["object"], r["available"]) for r in rows] == [(first.value, True), (second.value, False)]
    dup = rows[1]
    assert dup["distribution"] == second.dist.name  # type: ignore[union-attr]
    assert dup["error"] == (
        f"duplicate backend id 'echo': also provided by {first.dist.name} ({first.value}); this one is ignored"  # type: ignore[union-attr]
    )
    assert registry.names().count("echo") == 1 and not any(n.startswith("echo [") for n in registry.names())
    assert second.value.partition(":")[0] not in sys.modules, "the ignored duplicate is never imported"


def test_the_same_distribution_seen_twice_is_not_a_duplicate(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = install(
        site, monkeypatch, "fk-once", modules={"fk_echo": ECHO_BACKEND}, backends={"echo": "fk_echo:backend"}
    )
    monkeypatch.syspath_prepend(str(path))  # the same folder twice on sys.path
    registry = Registry.discover(strict=False)
    rows = [s for s in registry.statuses() if s.name.startswith("echo")]
    assert [(s.name, s.available, s.error) for s in rows] == [("echo", True, None)]


def test_strict_mode_refuses_a_duplicate_id(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(site, monkeypatch, "fk-one", modules={"fk_echo": ECHO_BACKEND}, backends={"echo": "fk_echo:backend"})
    install(site, monkeypatch, "fk-two", modules={"fk_echo2": ECHO_BACKEND}, backends={"echo": "fk_echo2:backend"})
    with pytest.raises(PluginSpecError) as exc:
        Registry.discover(strict=True)
    assert str(exc.value).startswith("duplicate backend id 'echo': also provided by fk-")
    assert str(exc.value).endswith("this one is ignored failed to load (FLAVORKIT_STRICT_PLUGINS is set)")


def test_cli_backends_strict_fails_on_a_broken_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install(
        site,
        monkeypatch,
        "fk-broken",
        modules={"fk_raises": 'raise ImportError("needs frobnitz")', "fk_echo": ECHO_BACKEND},
        backends={"broken": "fk_raises:backend", "echo": "fk_echo:backend"},
    )
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    broken_line = next(line for line in out.splitlines() if line.startswith("broken "))
    assert broken_line.split()[:4] == ["broken", "fk-broken", "0.1.0", "broken"]
    assert "\nbroken: ImportError: needs frobnitz" in out  # the reason, below the table
    assert main(["backends", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "flavorkit: error: backend 'broken' (fk_raises:backend) failed to load: ImportError: needs frobnitz"
    )
    assert err.rstrip().endswith("(FLAVORKIT_STRICT_PLUGINS is set)")
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "yes")
    assert main(["backends", "--json"]) == 2
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "0")
    assert main(["backends", "--json"]) == 0


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_strict_env_values(site: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", value)
    assert strict_from_env() is True


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_non_strict_env_values(site: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", value)
    assert strict_from_env() is False
    assert get_registry(refresh=True).strict is False


def test_a_broken_middleware_is_isolated_unless_strict(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        site,
        monkeypatch,
        "fk-mw-broken",
        modules={"fk_raises": 'raise ImportError("middleware needs frobnitz")', "fk_echo": ECHO_BACKEND},
        backends={"echo": "fk_echo:backend"},
        middleware={"tracer": "fk_raises:middleware"},
    )
    registry = Registry.discover(strict=False)
    assert registry.get("echo").name == "echo"
    with pytest.raises(PluginSpecError) as exc:
        Registry.discover(strict=True)
    assert str(exc.value).startswith(
        "middleware 'tracer' (fk_raises:middleware) failed to load: ImportError: middleware needs frobnitz"
    )


def test_a_broken_backend_is_named_when_asked_for_and_when_another_is_unknown(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-broken",
        modules={"fk_raises": 'raise ImportError("needs frobnitz")'},
        backends={"broken": "fk_raises:backend"},
    )
    registry = get_registry(refresh=True)
    with pytest.raises(PluginSpecError) as exc:
        registry.get("broken")
    assert str(exc.value).startswith("backend 'broken' (fk_raises:backend) failed to load: ImportError: needs frobnitz")
    with pytest.raises(BackendNotFound) as missing:
        registry.get("nope")
    assert "Plugins that failed to load: broken" in str(missing.value)
    assert "broken" not in missing.value.available
    assert "onnx-cpu" in missing.value.available


def test_load_object_reuses_the_installed_backend_or_builds_one_apart() -> None:
    registry = get_registry(refresh=True)
    installed = registry.get("onnx-cpu", require_available=False)
    assert registry.load_object("onnx-cpu", "flavorkit_onnxgenai.plugin:cpu") is installed
    shipped = registry.load_object("shipped-cpu", "flavorkit_onnxgenai.plugin:cpu")
    assert shipped is not installed
    assert (shipped.name, shipped.object_path, shipped.distribution) == (
        "shipped-cpu",
        "flavorkit_onnxgenai.plugin:cpu",
        None,
    )
    assert registry.load_object("shipped-cpu", "flavorkit_onnxgenai.plugin:cpu") is shipped
    assert "shipped-cpu" not in registry.names()


def test_load_object_names_what_cannot_be_imported() -> None:
    registry = get_registry(refresh=True)
    with pytest.raises(PluginSpecError) as exc:
        registry.load_object("ghost", "fk_no_such_module:backend")
    assert str(exc.value).startswith(
        "backend 'ghost': cannot import fk_no_such_module:backend: "
        "ModuleNotFoundError: No module named 'fk_no_such_module' (at "
    )
    with pytest.raises(PluginSpecError) as exc:
        registry.load_object("ghost", "flavorkit_onnxgenai.plugin:nothing_here")
    assert "AttributeError" in str(exc.value) and "nothing_here" in str(exc.value)


def _config(backend: str, obj: str | None = None) -> Any:
    from flavorkit.model.config import PackagedConfig, PluginRef

    return PackagedConfig(
        flavorkit_version="0", spec_version=1, backend=backend, plugin=PluginRef(object=obj or ""), task="llm/v1/chat"
    )


def test_a_packaged_model_finds_its_backend_by_entry_point_or_shipped_object() -> None:
    from flavorkit.errors import BackendUnavailable
    from flavorkit.model.loading import resolve_backend

    registry = get_registry(refresh=True)
    installed = registry.get("onnx-cpu")
    assert resolve_backend(_config("onnx-cpu")) is installed
    assert resolve_backend(_config("onnx-cpu", "flavorkit_onnxgenai.plugin:cpu")) is installed
    # Recorded under a name no entry point provides: the shipped object is imported under that name.
    shipped = resolve_backend(_config("renamed", "flavorkit_onnxgenai.plugin:cpu"))
    assert shipped is not installed and shipped.name == "renamed"
    # The installed id with another object: that object, checked for its own runtime.
    with pytest.raises(BackendUnavailable) as exc:
        resolve_backend(_config("onnx-cpu", "flavorkit_onnxgenai.plugin:dml"))
    assert exc.value.install_hint == "pip install 'onnxruntime-genai-directml>=0.15,<0.19'"
    with pytest.raises(BackendUnavailable) as exc:
        resolve_backend(_config("onnx-cuda", "flavorkit_onnxgenai.plugin:cuda"))
    assert exc.value.install_hint == "pip install 'onnxruntime-genai-cuda>=0.15,<0.19'"
    with pytest.raises(BackendNotFound) as missing:
        resolve_backend(_config("nope"))
    assert missing.value.name == "nope"


def test_a_model_config_without_a_backend_is_not_a_flavorkit_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from flavorkit.errors import ModelConfigError
    from flavorkit.model.loading import load_packaged

    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")  # reach the configuration check itself
    with pytest.raises(ModelConfigError) as exc:
        load_packaged({}, {"task": "llm/v1/chat"}, None)
    assert exc.value.field == "backend"
    assert str(exc.value) == "invalid packaged model_config: field 'backend': missing: this is not a flavorkit model"
