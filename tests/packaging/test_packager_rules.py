"""The packager's rules in detail: model ids, targets and overwriting, artifacts, shipped code, signatures.

Real packaging of the tiny ORT model (``tiny_ort``), or of a pure-Python plugin installed as a real
distribution, into real MLflow stores; nothing is mocked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.models import Model

import flavorkit
from flavorkit.backend.registry import get_registry
from flavorkit.errors import InvalidRequest, PackagingError
from flavorkit.model.config import PackagedConfig
from flavorkit.model.manifest import hash_files
from flavorkit.packaging.packager import _save_atomically, _Sealer
from flavorkit.packaging.staging import open_stage
from plugin_fixtures import ECHO_BACKEND, make_distribution

#: The echo backend, counting each load() in the file named by FK_MUT_LOADS (a file, because a
#: model loaded from its folder imports the plugin module afresh from its shipped code).
COUNTING_LOADS = ECHO_BACKEND.replace(
    '        return {"dir": artifacts["echo"]}',
    "        import os\n"
    '        with open(os.environ["FK_MUT_LOADS"], "a") as fh:\n'
    '            fh.write("load\\n")\n'
    '        return {"dir": artifacts["echo"]}',
    1,
)

#: The echo backend creating the output folder while it resolves its artifacts, as another process might.
INTRUDER = ECHO_BACKEND.replace(
    '        out = Path(workdir) / "echo"\n',
    "        import os\n"
    '        intruder = Path(os.environ["FK_MUT_TARGET"])\n'
    "        intruder.mkdir()\n"
    '        (intruder / "theirs.txt").write_text("not yours")\n'
    '        out = Path(workdir) / "echo"\n',
    1,
)

#: The echo backend adding the artifacts named in FK_MUT_FILES (JSON: name -> location) to its own.
EXTRA_FILES = ECHO_BACKEND.replace(
    '        return Artifacts(files={"echo": str(out)}, requirements=[])',
    "        import json, os\n"
    '        files = {"echo": str(out), **json.loads(os.environ["FK_MUT_FILES"])}\n'
    "        return Artifacts(files=files, requirements=[])",
    1,
)


@pytest.fixture
def extra_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The echo backend as ``files``, returning the artifacts FK_MUT_FILES names besides its own."""
    assert EXTRA_FILES != ECHO_BACKEND
    root = make_distribution(
        tmp_path / "site",
        "fk-mut-files",
        modules={"fk_mut_files": EXTRA_FILES},
        backends={"files": "fk_mut_files:backend"},
    )
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    yield
    sys.modules.pop("fk_mut_files", None)
    monkeypatch.undo()
    get_registry(refresh=True)


@pytest.fixture
def counting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The counting echo backend installed as ``counting``; yields the file its loads are written to."""
    assert COUNTING_LOADS != ECHO_BACKEND
    root = make_distribution(
        tmp_path / "site",
        "fk-mut-counting",
        modules={"fk_mut_counting": COUNTING_LOADS},
        backends={"counting": "fk_mut_counting:backend"},
    )
    monkeypatch.syspath_prepend(str(root))
    loads = tmp_path / "loads.txt"
    loads.touch()
    monkeypatch.setenv("FK_MUT_LOADS", str(loads))
    get_registry(refresh=True)
    yield loads
    sys.modules.pop("fk_mut_counting", None)
    monkeypatch.undo()
    get_registry(refresh=True)


def test_a_logged_model_keeps_mlflows_run_and_model_ids(tiny_ort: Path) -> None:
    with mlflow.start_run() as run:
        info = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", name="chat")
    assert info.run_id == run.info.run_id
    assert {"python_function", "flavorkit"} <= set(info.flavors)
    assert [i.name for i in info.signature.inputs.inputs][:1] == ["messages"]
    logged = Model.load(info.model_uri)
    assert logged.run_id == run.info.run_id
    assert logged.model_id == info.model_id
    assert logged.model_uuid == info.model_uuid
    assert logged.flavors["flavorkit"]["backend"] == "onnx-cpu"


def test_logging_never_loads_the_model(counting: Path) -> None:
    """MLflow's serving-input check would load the weights a second time while packaging."""
    info = flavorkit.package(model="hello", backend="counting")
    assert counting.read_text() == "", "packaging (logging) loads nothing"
    out = mlflow.pyfunc.load_model(info.model_uri).predict({"messages": [{"role": "user", "content": "abc"}]})
    assert out[0]["choices"][0]["message"]["content"] == "abc"
    assert counting.read_text() == "load\n"


def test_saving_never_loads_the_model(counting: Path, tmp_path: Path) -> None:
    info = flavorkit.package(model="someorg/echoX", backend="counting", path=tmp_path / "m")
    assert counting.read_text() == ""
    plugin = {"object": "fk_mut_counting:backend", "distribution": "fk-mut-counting", "version": "0.1.0"}
    assert info.metadata["flavorkit"]["plugin"] == plugin
    assert info.flavors["python_function"]["config"]["plugin"] == plugin
    assert (info.flavors["flavorkit"]["plugin_distribution"], info.flavors["flavorkit"]["plugin_version"]) == (
        "fk-mut-counting",
        "0.1.0",
    )
    assert info.metadata["flavorkit"]["model_name"] == "someorg/echoX", "a source that is no folder is named as given"


def test_the_model_info_of_a_saved_model_describes_that_folder(tiny_ort: Path, tmp_path: Path) -> None:
    target = tmp_path / "m"
    info = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    saved = Model.load(str(target))
    assert info.artifact_path == info.model_uri == str(target.resolve())
    assert info.run_id is None
    assert info.flavors == saved.flavors and info.flavors["flavorkit"]["backend"] == "onnx-cpu"
    assert info.model_uuid == saved.model_uuid and len(info.model_uuid) == 32
    assert info.saved_input_example_info == saved.saved_input_example_info
    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    assert info.signature == saved.signature and info.signature is not None
    assert info.utc_time_created == saved.utc_time_created
    assert info.mlflow_version == mlflow.__version__
    assert info.metadata == saved.metadata and info.metadata["flavorkit"]["backend"] == "onnx-cpu"


def test_saving_into_a_stage_opened_for_another_target_is_refused(tmp_path: Path) -> None:
    with open_stage(tmp_path / "a"), pytest.raises(RuntimeError) as exc:
        _save_atomically(tmp_path / "b", False, lambda staging: None)
    assert str(exc.value) == f"the open staging folder is for {tmp_path / 'a'}, not {tmp_path / 'b'}"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_target_appearing_while_packaging_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert INTRUDER != ECHO_BACKEND
    root = make_distribution(
        tmp_path / "site",
        "fk-mut-intruder",
        modules={"fk_mut_intruder": INTRUDER},
        backends={"intruder": "fk_mut_intruder:backend"},
    )
    monkeypatch.syspath_prepend(str(root))
    target = tmp_path / "out" / "m"
    monkeypatch.setenv("FK_MUT_TARGET", str(target))
    get_registry(refresh=True)
    try:
        with pytest.raises(PackagingError) as exc:
            flavorkit.package(model="hello", backend="intruder", path=target)
        assert str(exc.value) == f"{target} appeared while packaging; pass overwrite=True to replace it"
        assert [p.name for p in target.iterdir()] == ["theirs.txt"]
        assert (target / "theirs.txt").read_text() == "not yours"
        assert [p.name for p in target.parent.iterdir()] == ["m"], "no staging folder is left behind"
    finally:
        sys.modules.pop("fk_mut_intruder", None)
        monkeypatch.undo()
        get_registry(refresh=True)


def test_the_default_model_name_is_the_source_folder_even_with_a_trailing_slash(tiny_ort: Path, tmp_path: Path) -> None:
    info = flavorkit.package(model=f"{tiny_ort}/", backend="onnx-cpu", path=tmp_path / "m")
    assert info.metadata["flavorkit"]["model_name"] == tiny_ort.name


def test_only_what_loading_needs_of_flavorkit_is_shipped(tiny_ort: Path, tmp_path: Path) -> None:
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m")
    code = tmp_path / "m" / "code" / "flavorkit"
    shipped = {p.relative_to(code).as_posix() for p in code.rglob("*")}
    assert {"__init__.py", "runtime/loaded.py", "model/loading.py", "backend/registry.py", "mlflow_model.py"} <= shipped
    assert not shipped & {"packaging/packager.py", "cli.py", "serve", "spark.py", "demo", "testing", "__main__.py"}
    assert not any("__pycache__" in name for name in shipped)
    plugin_files = {p.name for p in (tmp_path / "m" / "code" / "flavorkit_onnxgenai").iterdir()}
    assert "plugin.py" in plugin_files and "__pycache__" not in plugin_files


def test_a_plugin_folder_named_flavorkit_is_shipped_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only flavorkit's own top level leaves out the parts loading never imports."""
    root = make_distribution(tmp_path / "site", "fk-mut-pkg", modules={}, backends={"pkg": "fk_mut_pkg.plugin:backend"})
    package_dir = root / "fk_mut_pkg"
    (package_dir / "flavorkit").mkdir(parents=True)
    (package_dir / "__init__.py").write_text("")
    (package_dir / "plugin.py").write_text(ECHO_BACKEND)
    (package_dir / "flavorkit" / "cli.py").write_text("NAME = 'a module of the plugin'\n")
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    try:
        flavorkit.package(model="hello", backend="pkg", path=tmp_path / "m")
        assert (tmp_path / "m" / "code" / "fk_mut_pkg" / "flavorkit" / "cli.py").is_file()
        assert (tmp_path / "m" / "code" / "fk_mut_pkg" / "plugin.py").is_file()
    finally:
        for mod in ("fk_mut_pkg", "fk_mut_pkg.plugin"):
            sys.modules.pop(mod, None)
        monkeypatch.undo()
        get_registry(refresh=True)


@pytest.mark.parametrize("name", ["flavorkit_manifest", "not-an-identifier", "1st"])
def test_an_invalid_artifact_name_is_refused(
    extra_files: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"w")
    monkeypatch.setenv("FK_MUT_FILES", json.dumps({name: str(tmp_path / "weights.bin")}))
    with pytest.raises(PackagingError) as exc:
        flavorkit.package(model="hello", backend="files", path=tmp_path / "out" / "m")
    assert str(exc.value) == f"backend 'files' returned an invalid artifact name {name!r}"
    assert not (tmp_path / "out" / "m").exists()


def test_an_artifact_that_does_not_exist_is_refused(
    extra_files: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere.bin"
    monkeypatch.setenv("FK_MUT_FILES", json.dumps({"weights": str(missing)}))
    with pytest.raises(PackagingError) as exc:
        flavorkit.package(model="hello", backend="files", path=tmp_path / "out" / "m")
    assert str(exc.value) == f"backend 'files' returned artifact 'weights' at {missing}, which does not exist"
    assert not (tmp_path / "out" / "m").exists()


def test_a_single_file_artifact_is_packaged_and_named(
    extra_files: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"weights")
    monkeypatch.setenv("FK_MUT_FILES", json.dumps({"weights": str(tmp_path / "weights.bin")}))
    info = flavorkit.package(model="hello", backend="files", path=tmp_path / "out" / "deeper" / "m")
    arts = info.flavors["python_function"]["artifacts"]
    assert sorted(arts) == ["echo", "weights"]
    assert (tmp_path / "out" / "deeper" / "m" / arts["weights"]["path"]).read_bytes() == b"weights"


def test_saving_refuses_an_occupied_target_but_reuses_an_empty_folder(
    tmp_path: Path, extra_files: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FK_MUT_FILES", "{}")
    (tmp_path / "empty").mkdir()
    info = flavorkit.package(model="hello", backend="files", path=tmp_path / "empty")
    assert info.model_uri == str((tmp_path / "empty").resolve())
    (tmp_path / "file").write_text("mine")
    with pytest.raises(PackagingError) as exc:
        flavorkit.package(model="hello", backend="files", path=tmp_path / "file")
    assert str(exc.value) == f"{(tmp_path / 'file').resolve()} already exists; pass overwrite=True to replace it"
    assert (tmp_path / "file").read_text() == "mine"


def test_registration_with_a_path_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model="x", backend="onnx-cpu", path=tmp_path / "m", registered_model_name="chat")
    assert (exc.value.field, exc.value.detail) == (
        "registered_model_name",
        "registration needs the model logged to a run; omit path= to log and register it",
    )
    assert not (tmp_path / "m").exists()


def test_sealing_removes_byte_code_caches_before_the_manifest(tiny_ort: Path, tmp_path: Path) -> None:
    """MLflow may import a model while saving it (to infer requirements); its caches are never shipped."""
    target = tmp_path / "m"
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    saved = Model.load(str(target))
    arts = saved.flavors["python_function"]["artifacts"]
    config = PackagedConfig.from_model_config(saved.flavors["python_function"]["config"])
    caches = [target / "__pycache__", target / "code" / "flavorkit" / "__pycache__"]
    for cache in caches:
        cache.mkdir()
        (cache / "x.cpython-311.pyc").write_bytes(b"\x00")
    _Sealer(config, hash_files({name: target / a["path"] for name, a in arts.items()}), None).seal(target)
    assert not any(cache.exists() for cache in caches)
    listed = json.loads((target / "flavorkit_manifest.json").read_text())["files"]
    assert not [rel for rel in listed if "__pycache__" in rel]
    assert "code/flavorkit/runtime/loaded.py" in listed


def test_an_output_path_inside_an_artifact_folder_is_refused_with_the_way_out(
    extra_files: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "weights"
    source.mkdir()
    (source / "w.bin").write_bytes(b"w")
    monkeypatch.setenv("FK_MUT_FILES", json.dumps({"weights": str(source)}))
    target = source / "packaged"
    with pytest.raises(PackagingError) as exc:
        flavorkit.package(model="hello", backend="files", path=target)
    assert str(exc.value) == (
        f"the output path {target.resolve()} is inside the model files at {source}: the model would copy itself; "
        "choose a path outside the model source"
    )
    assert sorted(p.name for p in source.iterdir()) == ["w.bin"]


#: The echo backend with one option, recording what its signature hook is given.
WITH_OPTIONS = ECHO_BACKEND.replace(
    "class EchoBackend:",
    """from pydantic import BaseModel, ConfigDict
from flavorkit.signatures import standard_signature

seen = []

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flavour: str = "plain"

class EchoBackend:
    @hookimpl
    def option_schema(self):
        return Options

    @hookimpl
    def signature(self, task, options):
        seen.append((task, dict(options)))
        return standard_signature(task)
""",
    1,
)


def test_the_signature_hook_gets_the_validated_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert WITH_OPTIONS != ECHO_BACKEND
    root = make_distribution(
        tmp_path / "site",
        "fk-mut-opts",
        modules={"fk_mut_opts": WITH_OPTIONS},
        backends={"opts": "fk_mut_opts:backend"},
    )
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    try:
        info = flavorkit.package(model="hello", backend="opts", path=tmp_path / "m", options={"flavour": "salty"})
        import fk_mut_opts

        assert fk_mut_opts.seen == [("llm/v1/chat", {"flavour": "salty"})]
        assert info.flavors["python_function"]["config"]["options"] == {"flavour": "salty"}
    finally:
        sys.modules.pop("fk_mut_opts", None)
        monkeypatch.undo()
        get_registry(refresh=True)


def test_an_unknown_task_and_n_for_text_generation_are_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model="x", backend="onnx-cpu", path=tmp_path / "m", task="summarise")
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "task",
        "unknown task 'summarise'",
        "llm/v1/chat, text-generation",
    )
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(
            model="x", backend="onnx-cpu", path=tmp_path / "m", task="text-generation", generation={"n": 2}
        )
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "generation.n",
        "text-generation returns one string per prompt",
        "1",
    )
    assert not (tmp_path / "m").exists()


def test_a_bad_prompt_format_is_refused_naming_the_field_before_any_conversion(tmp_path: Path) -> None:
    cases = [
        ("llm/v1/chat", "raw", "a chat model renders its messages with the chat template", "chat_template"),
        ("text-generation", "jinja", "unknown prompt format 'jinja'", "raw, chat_template"),
    ]
    for task, fmt, detail, allowed in cases:
        with pytest.raises(InvalidRequest) as exc:  # "x" is no model: the check comes before artifacts()
            flavorkit.package(model="x", backend="onnx-cpu", path=tmp_path / "m", task=task, prompt_format=fmt)
        assert (exc.value.field, exc.value.detail, exc.value.allowed) == ("prompt_format", detail, allowed)
    assert not (tmp_path / "m").exists()


def test_a_backend_without_encode_text_packages_text_generation_only_with_the_chat_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The echo backend was written for spec 3: a raw text-generation model needs a hook it lacks."""
    root = make_distribution(
        tmp_path / "site", "fk-echo-raw", {"fk_echo_raw": ECHO_BACKEND}, {"echo": "fk_echo_raw:backend"}
    )
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    try:
        with pytest.raises(PackagingError) as exc:
            flavorkit.package(model="src", backend="echo", path=tmp_path / "raw", task="text-generation")
        assert "does not implement the encode_text hook" in str(exc.value)
        assert "prompt_format='chat_template'" in str(exc.value)
        assert not (tmp_path / "raw").exists()
        flavorkit.package(
            model="src", backend="echo", path=tmp_path / "m", task="text-generation", prompt_format="chat_template"
        )
        assert mlflow.pyfunc.load_model(str(tmp_path / "m")).predict({"prompt": "xyz"}) == ["xyz"]
    finally:
        sys.modules.pop("fk_echo_raw", None)
        monkeypatch.undo()
        get_registry(refresh=True)
