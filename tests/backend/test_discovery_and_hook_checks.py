"""The registry in detail: loading shipped objects, discovery records, hook-result checks, requirements and options.

Plugins are real distributions on ``sys.path`` (see ``plugin_fixtures``); backends built in-process
use a small plugin class defined here. Nothing is mocked.
"""

from __future__ import annotations

import importlib.metadata as md
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import flavorkit
from flavorkit import Artifacts, Capability, Delta, GenerationRequest, RuntimeInfo, hookimpl
from flavorkit.backend.registry import Backend, Registry, get_backend, get_registry, missing_requirements
from flavorkit.errors import BackendUnavailable, InvalidRequest, PluginSpecError
from plugin_fixtures import COUNTING_MIDDLEWARE, ECHO_BACKEND, install, isolated_site

MODULES = ("fk_mut_echo", "fk_mut_raises", "fk_mut_mw", "fk_mut_shipped", "fk_mut_late", "fk_mut_two", "fk_mut_cls")


#: The echo backend reachable only through a dotted attribute path (``fk_mut_shipped:holder.backend``).
SHIPPED = ECHO_BACKEND.replace(
    "backend = EchoBackend()", "class holder:\n    backend = EchoBackend()\n\nbackend = None\n", 1
)

RAISES_WHILE_LISTED = ECHO_BACKEND.replace(
    "return []\n\n    @hookimpl\n    def capabilities",
    'raise RuntimeError("dependencies exploded")\n\n    @hookimpl\n    def capabilities',
    1,
)


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store."""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from isolated_site(tmp_path, monkeypatch, MODULES)


# -- Registry.load_object ----------------------------------------------------------------------


def test_load_object_follows_a_dotted_attribute_path_and_keeps_the_middleware(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-shipped",
        modules={"fk_mut_shipped": SHIPPED, "fk_mut_mw": COUNTING_MIDDLEWARE},
        middleware={"counter": "fk_mut_mw:middleware"},
    )
    registry = Registry.discover(strict=True)
    backend = registry.load_object("shipped", "fk_mut_shipped:holder.backend")
    import fk_mut_mw
    import fk_mut_shipped

    assert backend.plugin is fk_mut_shipped.holder.backend
    assert backend.object_path == "fk_mut_shipped:holder.backend"
    assert backend.pm.get_plugin("middleware:counter") is fk_mut_mw.middleware
    request = GenerationRequest(prompt_ids=[ord(c) for c in "\x01user\x02hi"], max_tokens=8)
    handle = backend.load({"echo": str(site)}, {})
    text = "".join(d.text for d in backend.generate(handle, [request]))
    assert text == "hi"
    assert fk_mut_mw.calls == [1], "a backend built from a shipped object is wrapped by the middleware too"


# -- _describe_exception: where a listed hook raised ----------------------------------------------


def test_a_hook_raising_while_listed_is_located_at_the_raising_line(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-raises",
        modules={"fk_mut_raises": RAISES_WHILE_LISTED},
        backends={"raises": "fk_mut_raises:backend"},
    )
    source = textwrap.dedent(RAISES_WHILE_LISTED).splitlines()
    line = next(n for n, text in enumerate(source, 1) if "dependencies exploded" in text)
    listed = {b["name"]: b for b in flavorkit.backends(refresh=True)}
    error = listed["raises"]["error"]
    where = str(site / "fk-mut-raises" / "fk_mut_raises.py")
    assert error == f"RuntimeError: dependencies exploded (at {where}:{line})"


# -- backends(): the listing is cached until refreshed ---------------------------------------------


def test_backends_reuses_the_discovered_registry_unless_refreshed(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    get_registry(refresh=True)
    install(
        site,
        monkeypatch,
        "fk-mut-late",
        modules={"fk_mut_late": ECHO_BACKEND},
        backends={"late": "fk_mut_late:backend"},
    )
    assert "late" not in {b["name"] for b in flavorkit.backends()}, "no rescan without refresh=True"
    assert "late" in {b["name"] for b in flavorkit.backends(refresh=True)}
    assert "late" in {b["name"] for b in flavorkit.backends()}


# -- Backend.generate_session (hook spec 2) --------------------------------------------------------


class _Minimal:
    """The required hooks only, enough for :class:`Backend` to accept the plugin."""

    @hookimpl
    def dependencies(self) -> list[str]:
        return []

    @hookimpl
    def artifacts(self, source: Any, options: Any, workdir: str) -> Artifacts:
        return Artifacts(files={"weights": workdir})

    @hookimpl
    def load(self, artifacts: Any, options: Any) -> Any:
        return {"loaded": True}

    @hookimpl
    def describe(self, handle: Any) -> RuntimeInfo:
        return RuntimeInfo(context_length=64)

    @hookimpl
    def encode(self, handle: Any, messages: Any) -> list[int]:
        return [1]

    @hookimpl
    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        yield from (Delta(i, "", 1, "stop") for i in range(len(requests)))


class _Session:
    """A conforming session: add, step and close."""

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        return list(range(len(requests)))

    def step(self) -> list[Delta]:
        return []

    def close(self) -> None:
        return None


def _with_session(value: Any) -> Any:
    class WithSession(_Minimal):
        @hookimpl
        def generate_session(self, handle: Any) -> Any:
            return value

    return WithSession()


def test_generate_session_returns_the_backend_session() -> None:
    session = _Session()
    backend = Backend("sessions", _with_session(session), object_path="test_registry_mutants:_Session")
    assert backend.generate_session({"loaded": True}) is session


def test_generate_session_gets_the_handle() -> None:
    class PerHandle(_Minimal):
        @hookimpl
        def generate_session(self, handle: Any) -> Any:
            return handle["session"]

    session = _Session()
    backend = Backend("sessions", PerHandle(), object_path="test_registry_mutants:PerHandle")
    assert backend.generate_session({"session": session}) is session


@pytest.mark.parametrize("plugin", [_Minimal(), _with_session(None)], ids=["no-hook", "hook-returns-none"])
def test_generate_session_is_none_without_a_session(plugin: Any) -> None:
    backend = Backend("plain", plugin, object_path="test_registry_mutants:_Minimal")
    assert backend.generate_session({"loaded": True}) is None


@pytest.mark.parametrize(("value", "kind"), [(object(), "object"), ("session", "str"), (_Minimal(), "_Minimal")])
def test_generate_session_returning_a_non_session_is_a_plugin_spec_error(value: Any, kind: str) -> None:
    backend = Backend("badsession", _with_session(value), object_path="test_registry_mutants:_Minimal")
    with pytest.raises(PluginSpecError) as exc:
        backend.generate_session({"loaded": True})
    assert str(exc.value) == (
        f"backend 'badsession': hook generate_session() must return a flavorkit.GenerationSession or None, got {kind}"
    )


# -- Backend.generate closes the backend's stream --------------------------------------------------


class _Kept(_Minimal):
    """A backend whose handle keeps its generators alive, so only an explicit close() ends them."""

    @hookimpl
    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        def stream() -> Iterator[Delta]:
            try:
                for _ in range(3):
                    for i in range(len(requests)):
                        yield Delta(i, "x", 1)
                for i in range(len(requests)):
                    yield Delta(i, "", 1, "stop")
            finally:
                handle["closed"] += 1

        gen = stream()
        handle["streams"].append(gen)
        return gen


def test_the_backend_stream_is_closed_when_the_reader_stops_even_if_the_backend_keeps_it() -> None:
    backend = Backend("kept", _Kept(), object_path="test_registry_mutants:_Kept")
    handle: dict[str, Any] = {"closed": 0, "streams": []}
    reader = backend.generate(handle, [GenerationRequest(prompt_ids=[1], max_tokens=8)] * 2)
    assert next(reader) == Delta(0, "x", 1)
    reader.close()
    assert handle["closed"] == 1, "closed at once, not when the backend drops its reference"
    assert handle["streams"][0].gi_frame is None


def test_a_plain_iterator_without_close_is_accepted() -> None:
    class Listed(_Minimal):
        @hookimpl
        def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Any:
            return iter([Delta(0, "a", 1), Delta(0, "", 1, "stop")])

    backend = Backend("listed", Listed(), object_path="test_registry_mutants:Listed")
    deltas = list(backend.generate({}, [GenerationRequest(prompt_ids=[1], max_tokens=4)]))
    assert deltas == [Delta(0, "a", 1), Delta(0, "", 1, "stop")]


# -- several requirements: the hint and the error list every one -----------------------------------

TWO_MISSING = ECHO_BACKEND.replace(
    "return []\n\n    @hookimpl\n    def capabilities",
    'return ["frobnitz-a>=1", "frobnitz-b"]\n\n    @hookimpl\n    def capabilities',
    1,
)


def test_two_missing_requirements_are_each_named_and_installed_by_one_command(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site, monkeypatch, "fk-mut-two", modules={"fk_mut_two": TWO_MISSING}, backends={"two": "fk_mut_two:backend"}
    )
    entry = {b["name"]: b for b in flavorkit.backends(refresh=True)}["two"]
    assert entry["available"] is False
    assert entry["error"] == "frobnitz-a is not installed; frobnitz-b is not installed"
    assert entry["install_hint"] == "pip install 'frobnitz-a>=1' frobnitz-b"
    assert entry["dependencies"] == ["frobnitz-a>=1", "frobnitz-b"]


# -- Backend.capabilities, validate_options, signature; get_backend ----------------------------------


def test_an_unknown_capability_is_refused_with_the_known_ones() -> None:
    class Telepathic(_Minimal):
        @hookimpl
        def capabilities(self) -> list[str]:
            return ["streaming", "telepathy"]

    backend = Backend("psychic", Telepathic(), object_path="test_registry_mutants:Telepathic")
    with pytest.raises(PluginSpecError) as exc:
        backend.capabilities()
    known = ", ".join(c.value for c in Capability)
    assert "streaming, " in known
    assert str(exc.value) == f"backend 'psychic' declares unknown capability 'telepathy' (known: {known})"


def test_options_of_a_backend_without_a_schema_are_refused_naming_the_backend() -> None:
    backend = Backend("plain", _Minimal(), object_path="test_registry_mutants:_Minimal")
    assert backend.validate_options(None) == {}
    with pytest.raises(InvalidRequest) as exc:
        backend.validate_options({"threads": 2})
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "options.threads",
        "backend 'plain' takes no options",
        "none",
    )


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threads: int = 1


def test_an_unknown_option_names_the_backend_and_the_known_options() -> None:
    class WithOptions(_Minimal):
        @hookimpl
        def option_schema(self) -> type[BaseModel]:
            return _Options

    backend = Backend("opts", WithOptions(), object_path="test_registry_mutants:WithOptions")
    assert backend.validate_options({"threads": 3}) == {"threads": 3}
    with pytest.raises(InvalidRequest) as exc:
        backend.validate_options({"thread": 3})
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "options.thread",
        "unknown option for backend 'opts'",
        "threads",
    )


def test_the_signature_hook_gets_the_options_and_an_unknown_task_is_an_invalid_request() -> None:
    seen: list[Any] = []

    class Recording(_Minimal):
        @hookimpl
        def signature(self, task: str, options: Any) -> Any:
            seen.append((task, options))
            return None

    backend = Backend("sig", Recording(), object_path="test_registry_mutants:Recording")
    with pytest.raises(InvalidRequest) as exc:
        backend.signature("summarise", {"threads": 2})
    assert seen == [("summarise", {"threads": 2})]
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "task",
        "unknown task 'summarise'",
        "llm/v1/chat, text-generation",
    )
    assert str(exc.value) == (
        "invalid request: field 'task': unknown task 'summarise' (allowed: llm/v1/chat, text-generation)"
    )


def test_get_backend_can_skip_the_availability_check(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        site, monkeypatch, "fk-mut-two", modules={"fk_mut_two": TWO_MISSING}, backends={"two": "fk_mut_two:backend"}
    )
    get_registry(refresh=True)
    assert get_backend("two", require_available=False).object_path == "fk_mut_two:backend"
    with pytest.raises(BackendUnavailable) as exc:
        get_backend("two")
    assert (exc.value.name, exc.value.reason, exc.value.install_hint) == (
        "two",
        "frobnitz-a is not installed; frobnitz-b is not installed",
        "pip install 'frobnitz-a>=1' frobnitz-b",
    )
    with pytest.raises(BackendUnavailable):
        get_registry().get("two")


# -- missing_requirements ------------------------------------------------------------------------------


def test_missing_requirements_names_each_problem_and_skips_other_platforms(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(site, monkeypatch, "fk-mut-pre", modules={}, version="2.0.0rc1")
    problems = missing_requirements(
        [
            "not a requirement!",
            'frobnitz-old; python_version < "3"',
            'frobnitz-new; python_version >= "3"',
            "fk-mut-pre>=1.0",
            "fk-mut-pre>=3",
        ]
    )
    assert len(problems) == 3
    assert problems[0].startswith("invalid requirement 'not a requirement!': ")
    assert problems[1:] == [
        "frobnitz-new is not installed",
        "fk-mut-pre 2.0.0rc1 is installed but fk-mut-pre>=3 is required",
    ], "a pre-release that is installed satisfies the range it is in"


def test_backend_unavailable_keeps_the_backend_name() -> None:
    """ImportError's own __init__ used to reset ``name`` to None."""
    exc = BackendUnavailable("onnx-cuda", "onnxruntime-genai-cuda is not installed", "pip install x")
    assert (exc.name, exc.reason, exc.install_hint) == (
        "onnx-cuda",
        "onnxruntime-genai-cuda is not installed",
        "pip install x",
    )
    assert isinstance(exc, ImportError)
    assert str(exc) == (
        "backend 'onnx-cuda' is not available: onnxruntime-genai-cuda is not installed. Fix it with: pip install x"
    )


# -- Backend.__init__ and Registry.discover --------------------------------------------------------


def test_a_backend_missing_required_hooks_names_each_one() -> None:
    class OnlyDependencies:
        @hookimpl
        def dependencies(self) -> list[str]:
            return []

    with pytest.raises(PluginSpecError) as exc:
        Backend("partial", OnlyDependencies(), object_path="pkg.mod:partial")
    assert str(exc.value) == (
        "backend 'partial' (pkg.mod:partial) does not implement required hook(s): "
        "artifacts, load, describe, encode, generate"
    )


def test_the_plugin_manager_names_the_defaults_the_middleware_and_the_backend() -> None:
    plugin = _Minimal()
    middleware = _Session()  # any object: a plugin without hookimpls registers fine
    backend = Backend("plain", plugin, object_path="x:y", middleware=[("mw", middleware)])
    names = dict(backend.pm.list_name_plugin())
    assert sorted(names) == ["backend:plain", "flavorkit.backend.defaults", "middleware:mw"]
    assert names["backend:plain"] is plugin and names["middleware:mw"] is middleware


def test_discovery_records_distribution_and_version_and_instantiates_classes(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-cls",
        modules={"fk_mut_cls": ECHO_BACKEND},
        backends={"cls": "fk_mut_cls:EchoBackend"},
        version="3.1.4",
    )
    backend = Registry.discover(strict=True).get("cls")
    import fk_mut_cls

    assert isinstance(backend.plugin, fk_mut_cls.EchoBackend), "an entry point naming a class gets an instance"
    assert (backend.distribution, backend.version) == ("fk-mut-cls", "3.1.4")
    assert backend.dependencies() == []


def test_discovery_reads_strict_mode_from_the_environment_when_not_given(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-raises",
        modules={"fk_mut_raises": "raise ImportError('x')"},
        backends={"r": "fk_mut_raises:backend"},
    )
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginSpecError):
        Registry.discover()
    monkeypatch.setenv("FLAVORKIT_STRICT_PLUGINS", "0")
    assert Registry.discover().strict is False


def test_a_broken_middleware_does_not_stop_the_next_one(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-mws",
        modules={
            "fk_mut_raises": "raise ImportError('x')",
            "fk_mut_mw": COUNTING_MIDDLEWARE,
            "fk_mut_echo": ECHO_BACKEND,
        },
        middleware={"broken": "fk_mut_raises:middleware", "counter": "fk_mut_mw:middleware"},
        backends={"echo": "fk_mut_echo:backend"},
    )
    order = [ep.name for ep in md.entry_points(group="flavorkit.middleware") if ep.value.startswith("fk_mut_")]
    assert order == ["broken", "counter"]
    backend = Registry.discover(strict=False).get("echo")
    assert backend.pm.get_plugin("middleware:counter") is not None


def test_discovery_goes_on_after_a_duplicate_id(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(
        site,
        monkeypatch,
        "fk-mut-two",
        modules={"fk_mut_two": ECHO_BACKEND, "fk_mut_late": ECHO_BACKEND},
        backends={"echo": "fk_mut_two:backend", "late": "fk_mut_late:backend"},
    )
    install(
        site, monkeypatch, "fk-mut-one", modules={"fk_mut_echo": ECHO_BACKEND}, backends={"echo": "fk_mut_echo:backend"}
    )
    order = [ep.value for ep in md.entry_points(group="flavorkit.backends") if ep.value.startswith("fk_mut_")]
    assert order == ["fk_mut_echo:backend", "fk_mut_two:backend", "fk_mut_late:backend"]
    registry = Registry.discover(strict=False)
    assert registry.get("echo").object_path == "fk_mut_echo:backend"
    assert registry.get("late").object_path == "fk_mut_late:backend"


def test_discovery_goes_on_after_the_same_entry_point_seen_twice(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """importlib.metadata lists a distribution once; two distributions may still name one object under one id."""
    install(
        site,
        monkeypatch,
        "fk-mut-copy",
        modules={"fk_mut_late": ECHO_BACKEND},
        backends={"echo": "fk_mut_echo:backend", "late": "fk_mut_late:backend"},
    )
    install(
        site, monkeypatch, "fk-mut-one", modules={"fk_mut_echo": ECHO_BACKEND}, backends={"echo": "fk_mut_echo:backend"}
    )
    order = [ep.value for ep in md.entry_points(group="flavorkit.backends") if ep.value.startswith("fk_mut_")]
    assert order == ["fk_mut_echo:backend", "fk_mut_echo:backend", "fk_mut_late:backend"]
    registry = Registry.discover(strict=True)
    assert [s.name for s in registry.statuses() if s.object.startswith("fk_mut_")] == ["echo", "late"]
    assert registry.get("echo").distribution == "fk-mut-one"
    assert registry.get("late").object_path == "fk_mut_late:backend"


def test_get_registry_rediscovers_when_strictness_changes(site: Path) -> None:
    lenient = get_registry(strict=False)
    assert get_registry(strict=False) is lenient
    strict = get_registry(strict=True)
    assert strict is not lenient and strict.strict is True
    assert get_registry(strict=True) is strict
