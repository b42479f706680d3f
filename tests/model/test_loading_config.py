"""What a packaged model's configuration decides at load: options, task, defaults, model name.

The backend is a real plugin installed as a throwaway distribution; its handle records the options
``load`` received and whether ``unload`` was called.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

import flavorkit
from flavorkit.backend.registry import get_registry
from flavorkit.errors import PackagingError
from flavorkit.model.loading import load_packaged
from flavorkit.model.manifest import MANIFEST_FILE
from plugin_fixtures import ECHO_BACKEND, make_distribution

WITH_OPTIONS = ECHO_BACKEND.replace(
    "backend = EchoBackend()",
    """
from pydantic import BaseModel, ConfigDict

unloaded = []


class GreetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"


class Greeter(EchoBackend):
    @hookimpl
    def option_schema(self):
        return GreetOptions

    @hookimpl
    def artifacts(self, source, options, workdir):
        out = Path(workdir) / "echo"
        out.mkdir()
        (out / "config.txt").write_text(str(source))
        note = Path(workdir) / "note.txt"  # an artifact that is a single file, not a folder
        note.write_text("a file artifact")
        return Artifacts(files={"echo": str(out), "note": str(note)}, requirements=[])

    @hookimpl
    def load(self, artifacts, options):
        return {"dir": artifacts["echo"], "options": dict(options)}

    @hookimpl
    def describe(self, handle):
        if handle["options"].get("greeting") == "boom":
            raise RuntimeError("cannot describe a model that greets with boom")
        return RuntimeInfo(context_length=512, model_name=handle["options"].get("greeting", "none"))

    @hookimpl
    def unload(self, handle):
        unloaded.append(handle)


backend = Greeter()
""",
)

HI = {"messages": [{"role": "user", "content": "abcdef"}]}


@pytest.fixture
def greeter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = make_distribution(
        tmp_path / "site", "fk-greet", modules={"fk_greet": WITH_OPTIONS}, backends={"greet": "fk_greet:backend"}
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("FLAVORKIT_VERIFY_ARTIFACTS", raising=False)
    get_registry(refresh=True)
    yield tmp_path
    sys.modules.pop("fk_greet", None)
    monkeypatch.undo()
    get_registry(refresh=True)


def _artifacts(model: Path) -> dict[str, str]:
    from mlflow.models import Model

    conf = Model.load(str(model)).flavors["python_function"]
    return {k: str(model / v["path"]) for k, v in conf["artifacts"].items()}


def test_packaged_options_defaults_and_name_reach_the_loaded_model(greeter: Path) -> None:
    info = flavorkit.package(
        model="src",
        backend="greet",
        path=greeter / "m",
        options={"greeting": "bonjour"},
        generation={"max_tokens": 2},
        model_name="custom",
    )
    model = mlflow.pyfunc.load_model(info.model_uri)
    loaded = model.unwrap_python_model().loaded
    assert loaded.handle["options"] == {"greeting": "bonjour"}
    assert Path(_artifacts(Path(info.model_uri))["note"]).read_text() == "a file artifact"
    answer = model.predict(HI)[0]
    assert answer["model"] == "custom"
    assert answer["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "ab"},
        "finish_reason": "length",
    }
    default_name = flavorkit.package(model="src", backend="greet", path=greeter / "n")
    assert mlflow.pyfunc.load_model(default_name.model_uri).predict(HI)[0]["model"] == "src"


def _config(model: Path) -> dict[str, Any]:
    from mlflow.models import Model

    return dict(Model.load(str(model)).flavors["python_function"]["config"])


def test_the_packaged_config_loads_as_chat_with_the_backend_name(greeter: Path) -> None:
    model = greeter / "m"
    flavorkit.package(model="src", backend="greet", path=model, options={"greeting": "salut"})
    config = _config(model)
    assert config["task"] == "llm/v1/chat" and config["options"] == {"greeting": "salut"}
    loaded = load_packaged(_artifacts(model), {**config, "model_name": None}, model)
    assert loaded.task == "llm/v1/chat"
    assert loaded.defaults == {"max_tokens": 256, "temperature": 0.0, "top_p": 1.0, "n": 1}
    assert loaded.model_name == "salut", "without model_name, the backend's describe() names the model"
    bare = load_packaged(_artifacts(model), {**config, "options": {}, "model_name": None}, model)
    assert bare.handle["options"] == {"greeting": "hello"} and bare.model_name == "hello"


def test_a_model_failing_to_start_releases_its_handle(greeter: Path) -> None:
    model = greeter / "m"
    flavorkit.package(model="src", backend="greet", path=model, options={"greeting": "boom"})
    import fk_greet  # type: ignore[import-not-found]

    with pytest.raises(RuntimeError, match="cannot describe a model that greets with boom"):
        load_packaged(_artifacts(model), _config(model), model)
    assert len(fk_greet.unloaded) == 1 and fk_greet.unloaded[0]["options"] == {"greeting": "boom"}


def test_a_model_without_its_manifest_is_refused_unless_verification_is_off(
    greeter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flavorkit.errors import IntegrityError

    model = greeter / "m"
    flavorkit.package(model="src", backend="greet", path=model)
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(IntegrityError) as exc:
        load_packaged(_artifacts(model), _config(model), model)
    assert len(exc.value.problems) == 1
    assert exc.value.problems[0].startswith(f"{MANIFEST_FILE} cannot be read ([Errno 2] No such file or directory")
    with pytest.raises(PackagingError) as unknown:
        load_packaged(_artifacts(model), _config(model), None)
    assert str(unknown.value) == "the packaged model's folder is unknown, so it cannot be verified"
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    answer = load_packaged(_artifacts(model), _config(model), None).predict(HI)[0]
    assert answer["choices"][0]["message"]["content"] == "abcdef"


def test_each_missing_or_changed_artifact_is_reported(greeter: Path) -> None:
    from flavorkit.errors import IntegrityError

    model = greeter / "m"
    flavorkit.package(model="src", backend="greet", path=model)
    artifacts = _artifacts(model)
    config = Path(artifacts["echo"]) / "config.txt"
    config.write_text("sr?")  # same size as "src": only the hash can tell
    with pytest.raises(IntegrityError) as exc:
        load_packaged(artifacts, _config(model), model)
    assert [p.split(":")[0] for p in exc.value.problems] == ["artifacts/echo/config.txt"]
    assert "sha256" in exc.value.problems[0]
    config.unlink()
    Path(artifacts["note"]).unlink()
    with pytest.raises(IntegrityError) as exc:
        load_packaged(artifacts, _config(model), model)
    assert [p.split(":")[0] for p in exc.value.problems] == ["artifacts/echo/config.txt", "artifacts/note.txt"]
