"""The packager with the onnx-cpu backend on a tiny real model: what lands in the model directory."""

from __future__ import annotations

import json
import pickle
import pickletools
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

import flavorkit
from flavorkit.errors import IntegrityError, InvalidRequest, ModelSourceError, PackagingError

CHAT_FIELDS_IN = ["messages", "temperature", "max_tokens", "stop", "n", "stream", "top_p", "top_k", "seed"]
#: OpenAI's fields that flavorkit ignores or accepts at a neutral value only (listed so MLflow passes them on).
CHAT_COMPAT_IN = ["user", "presence_penalty", "frequency_penalty", "logit_bias", "store", "metadata", "service_tier"]
CHAT_COMPAT_IN += ["parallel_tool_calls", "prediction", "modalities", "tools", "tool_choice", "response_format"]
CHAT_COMPAT_IN += ["logprobs", "top_logprobs"]
CHAT_FIELDS_OUT = ["id", "object", "created", "model", "choices", "usage"]


def _signature(model_dir: Path) -> dict[str, Any]:
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    return {k: json.loads(v) for k, v in mlmodel["signature"].items() if k in ("inputs", "outputs")}


def test_chat_signature_uses_mlflow_llm_v1_chat_field_names(tiny_model_dir: Path) -> None:
    from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA

    sig = _signature(tiny_model_dir)
    names_in = [c["name"] for c in sig["inputs"]]
    assert names_in == CHAT_FIELDS_IN + CHAT_COMPAT_IN
    mlflow_in = set(CHAT_MODEL_INPUT_SCHEMA.input_names())
    assert set(CHAT_FIELDS_IN) - {"seed"} <= mlflow_in, "every chat setting except seed is one of MLflow's own"
    assert [c["name"] for c in sig["outputs"]] == CHAT_FIELDS_OUT == CHAT_MODEL_OUTPUT_SCHEMA.input_names()[:6]
    messages = sig["inputs"][0]
    assert messages["type"] == "array" and messages["required"] is True
    assert set(messages["items"]["properties"]) == {"role", "content", "name"}
    assert all(c["required"] is False for c in sig["inputs"][1:])
    example = json.loads((tiny_model_dir / "serving_input_example.json").read_text())
    assert example["messages"][0]["role"] == "user"


def test_text_generation_signature_and_round_trip(tiny_ort: Path, tmp_path: Path) -> None:
    info = flavorkit.package(
        model=str(tiny_ort),
        backend="onnx-cpu",
        task="text-generation",
        path=tmp_path / "m",
        generation={"temperature": 0},
    )
    sig = _signature(tmp_path / "m")
    assert sig["inputs"][0] == {"type": "string", "name": "prompt", "required": True}
    assert sig["outputs"] == [{"type": "string", "required": True}]
    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict([{"prompt": "Hello", "max_tokens": 5}, {"prompt": "Bye", "max_tokens": 3}])
    assert [type(x) for x in out] == [str, str]
    assert out[0] == model.predict({"prompt": "Hello", "max_tokens": 5})[0]
    assert "".join(model.predict_stream({"prompt": "Hello", "max_tokens": 5})) == out[0]


def test_requirements_are_minimal_and_pinned(tiny_model_dir: Path) -> None:
    reqs = (tiny_model_dir / "requirements.txt").read_text().split()
    names = {r.split("==")[0].lower() for r in reqs}
    assert all("==" in r for r in reqs), reqs
    assert {"mlflow-skinny", "pandas", "onnxruntime-genai", "pluggy", "pydantic"} <= names
    assert "mlflow" not in names, "the skinny client is enough to load and serve"
    assert not names & {"torch", "transformers", "torchvision", "optimum", "accelerate"}
    import importlib.metadata as md

    assert f"onnxruntime-genai=={md.version('onnxruntime-genai')}" in reqs


def test_metadata_records_backend_plugin_versions_and_defaults(tiny_model_dir: Path) -> None:
    meta = mlflow.models.Model.load(str(tiny_model_dir)).metadata["flavorkit"]
    assert meta["backend"] == "onnx-cpu"
    assert meta["plugin"] == {
        "object": "flavorkit_onnxgenai.plugin:cpu",
        "distribution": "flavorkit",
        "version": "0.1.0",
    }
    assert meta["flavorkit_version"] == flavorkit.__version__
    assert meta["generation"] == {"temperature": 0.0}
    assert meta["task"] == "llm/v1/chat"


def _is_pickle(data: bytes) -> bool:
    """True when ``data`` is a whole pickle stream of any protocol (0 and 1 have no header)."""
    last = None
    count = 0
    try:
        for opcode, _arg, pos in pickletools.genops(data):
            last, count = (opcode.name, pos), count + 1
    except Exception:  # not a pickle: an unknown opcode or a truncated argument
        return False
    return last is not None and last[0] == "STOP" and last[1] == len(data.rstrip()) - 1 and count >= 2


def test_the_pickle_scan_detects_every_protocol(tmp_path: Path) -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert _is_pickle(pickle.dumps({"weights": [1.5, 2], "name": "x"}, protocol=protocol)), protocol
    for text in (b'{"a": 1}', b"", b".", b"hello world", b"\x80\x04not a pickle"):
        assert not _is_pickle(text), text


def test_model_directory_holds_no_pickle(tiny_model_dir: Path) -> None:
    scanned = 0
    for path in tiny_model_dir.rglob("*"):
        if not path.is_file():
            continue
        assert path.suffix not in {".pkl", ".pickle", ".pyc"}, path
        assert not _is_pickle(path.read_bytes()), f"{path} is a pickle stream"
        scanned += 1
    assert scanned >= 10
    files = {p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file()}
    assert "mlflow_model.py" in files, "models-from-code: the model is rebuilt from source"
    assert "code/flavorkit/__init__.py" in files and "code/flavorkit_onnxgenai/plugin.py" in files
    assert not any("__pycache__" in f for f in files)


def test_manifest_covers_every_artifact_file(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "flavorkit_manifest.json").read_text())
    art_root = next(p for p in (tiny_model_dir / "artifacts").iterdir() if p.is_dir())
    on_disk = {p.relative_to(tiny_model_dir).as_posix() for p in art_root.rglob("*") if p.is_file()}
    listed = {rel for rel in manifest["files"] if rel.startswith("artifacts/")}
    assert listed == on_disk
    assert all(len(v["sha256"]) == 64 for v in manifest["files"].values())


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("tamper", ["modify", "delete", "add"])
def test_tampered_artifacts_are_detected_at_load(tiny_model_dir: Path, tmp_path: Path, tamper: str) -> None:
    model = _copy(tiny_model_dir, tmp_path / "copy")
    art = next(p for p in (model / "artifacts").iterdir() if p.is_dir())
    if tamper == "modify":
        target = art / "genai_config.json"
        target.write_text(target.read_text().replace('"context_length": 256', '"context_length": 255'))
        expected = f"{art.relative_to(model).as_posix()}/genai_config.json: sha256 differs"
    elif tamper == "delete":
        (art / "tokenizer.json").unlink()
        expected = f"{art.relative_to(model).as_posix()}/tokenizer.json: missing"
    else:
        (art / "evil.py").write_text("print('hi')")
        expected = f"{art.relative_to(model).as_posix()}/evil.py: not in the manifest"
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert expected in str(exc.value)


def test_same_size_modification_is_caught_by_the_hash(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path / "copy")
    data = next(p for p in (model / "artifacts").iterdir() if p.is_dir()) / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"artifacts/\w+/model.onnx.data: sha256 differs"):
        mlflow.pyfunc.load_model(str(model))


def test_existing_directory_is_never_replaced_without_overwrite(tiny_ort: Path, tmp_path: Path) -> None:
    target = tmp_path / "existing"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(PackagingError, match="overwrite=True"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target, overwrite=True)
    assert not (target / "keep.txt").exists()
    assert (target / "MLmodel").is_file()
    assert _leftovers(tmp_path) == [], "no staging or backup directory is left"


def test_an_empty_directory_may_be_used(tiny_ort: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "empty")
    assert (tmp_path / "empty" / "MLmodel").is_file()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_interrupted_packaging_leaves_nothing_behind(
    tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = mlflow.pyfunc.save_model

    def save_then_interrupt(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C after MLflow wrote its files

    monkeypatch.setattr(mlflow.pyfunc, "save_model", save_then_interrupt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=out / "model")
    assert list(out.iterdir()) == []


def test_failed_overwrite_keeps_the_old_model(tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target)
    before = (target / "MLmodel").read_text()

    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.pyfunc, "save_model", broken_save)
    with pytest.raises(PackagingError, match="disk full"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target, overwrite=True)
    assert (target / "MLmodel").read_text() == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("source", ["does/not/exist", "/definitely/missing/model-dir"])
def test_missing_model_path_is_named(source: str, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as exc:
        flavorkit.package(model=source, backend="onnx-cpu", path=tmp_path / "m")
    assert source.strip("/").split("/")[-1] in str(exc.value)
    assert not (tmp_path / "m").exists()


def test_a_directory_that_is_not_a_model_is_explained(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(ModelSourceError, match=r"genai_config\.json"):
        flavorkit.package(model=str(tmp_path / "notes"), backend="onnx-cpu", path=tmp_path / "m")


def test_a_file_instead_of_a_model_folder_is_named(tmp_path: Path) -> None:
    weights = tmp_path / "model.onnx"
    weights.write_bytes(b"not a folder")
    with pytest.raises(ModelSourceError) as exc:
        flavorkit.package(model=str(weights), backend="onnx-cpu", path=tmp_path / "m")
    assert str(weights) in str(exc.value) and "expected a directory" in str(exc.value)


def test_bad_generation_defaults_and_options_fail_before_any_work(tiny_ort: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", generation={"top_p": 0})
    assert exc.value.field == "generation.top_p"
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", options={"precision": "int3"})
    assert exc.value.field == "options.precision"
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", options={"precison": "int4"})
    assert exc.value.field == "options.precison" and "precision" in str(exc.value.allowed)
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", task="summarize")
    assert exc.value.field == "task" and "llm/v1/chat" in str(exc.value.allowed)
    assert not (tmp_path / "m").exists()


def test_log_register_and_load_from_the_model_registry(tiny_ort: Path) -> None:
    info = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", registered_model_name="tiny-chat")
    assert info.registered_model_version == 1
    assert info.run_id is not None, "a run is started when none is active"
    assert mlflow.active_run() is None, "and ended again"
    run = mlflow.get_run(info.run_id)
    assert run.info.status == "FINISHED"
    again = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", registered_model_name="tiny-chat")
    assert again.registered_model_version == 2

    model = mlflow.pyfunc.load_model("models:/tiny-chat/1")
    out = model.predict({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
    assert out[0]["usage"]["completion_tokens"] <= 3
    versions = mlflow.MlflowClient().search_model_versions("name='tiny-chat'")
    assert sorted(int(v.version) for v in versions) == [1, 2]


def test_logging_into_an_active_run_keeps_it_open(tiny_ort: Path) -> None:
    with mlflow.start_run() as run:
        info = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", name="chat")
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == run.info.run_id
    assert info.run_id == run.info.run_id
    assert info.name == "chat"


def test_an_alias_is_set_in_the_same_call_and_moves_to_the_next_version(tiny_ort: Path) -> None:
    client = mlflow.MlflowClient()
    first = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", registered_model_name="aliased", alias="prod")
    assert str(client.get_model_version_by_alias("aliased", "prod").version) == str(first.registered_model_version)
    second = flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", registered_model_name="aliased", alias="prod")
    assert str(client.get_model_version_by_alias("aliased", "prod").version) == str(second.registered_model_version)
    assert str(second.registered_model_version) == "2"
    model = mlflow.pyfunc.load_model("models:/aliased@prod")
    assert model.metadata.run_id == second.run_id


@pytest.mark.parametrize(
    ("alias", "register", "detail"),
    [
        ("prod", None, "an alias names a registered version; give registered_model_name too"),
        ("v3", "x", "'v3' is not a valid alias"),
        ("latest", "x", "'latest' is not a valid alias"),
        ("has space", "x", "'has space' is not a valid alias"),
        ("", "x", "'' is not a valid alias"),
    ],
)
def test_a_bad_alias_is_refused_before_anything_is_logged(
    tiny_ort: Path, alias: str, register: str | None, detail: str
) -> None:
    runs_before = len(mlflow.search_runs(search_all_experiments=True))
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", registered_model_name=register, alias=alias)
    assert (exc.value.field, exc.value.detail) == ("alias", detail)
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before, "no run was started"


def test_registration_needs_logging(tiny_ort: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", registered_model_name="x")
    assert exc.value.field == "registered_model_name"


def test_converting_a_transformers_checkpoint_is_cached(
    tiny_hf: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    flavorkit.package(model=str(tiny_hf), backend="onnx-cpu", path=tmp_path / "a", options={"precision": "fp32"})
    capfd.readouterr()
    flavorkit.package(model=str(tiny_hf), backend="onnx-cpu", path=tmp_path / "b", options={"precision": "fp32"})
    assert "Converting" not in capfd.readouterr().err, "the second packaging reuses the cached conversion"
    meta = mlflow.models.Model.load(str(tmp_path / "b")).metadata["flavorkit"]
    assert meta["backend_metadata"]["converted"] == {"precision": "fp32"}


def test_symlinked_folders_inside_the_source_are_packaged(tiny_ort: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_ort, source)
    notes = source / "shared"  # a folder link out of the source is refused (tests/packaging/test_hostile_sources.py)
    notes.mkdir()
    (notes / "notes.txt").write_text("kept beside the model")
    (source / "docs").symlink_to("shared", target_is_directory=True)
    info = flavorkit.package(model=str(source), backend="onnx-cpu", path=tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "flavorkit_manifest.json").read_text())
    assert any(rel.endswith("/docs/notes.txt") for rel in manifest["files"])
    mlflow.pyfunc.load_model(info.model_uri)


def test_output_inside_the_model_source_is_refused(tiny_ort: Path, tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "src"
    shutil.copytree(tiny_ort, source)
    with pytest.raises(PackagingError, match="inside the model files"):
        flavorkit.package(model=str(source), backend="onnx-cpu", path=source / "packaged")
    assert sorted(p.name for p in source.iterdir()) == sorted(p.name for p in tiny_ort.iterdir())


def test_overwriting_a_file_leaves_no_backup(tiny_ort: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("an old file in the way")
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=target, overwrite=True)
    assert (target / "MLmodel").is_file()
    assert _leftovers(tmp_path) == []


def test_a_failed_log_marks_the_run_it_started_as_failed(tiny_ort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.pyfunc, "save_model", broken_save)
    with pytest.raises(PackagingError, match="disk full"):
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu")
    assert mlflow.active_run() is None
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FAILED"


def test_text_generation_refuses_default_n(tiny_ort: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as exc:
        flavorkit.package(
            model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", task="text-generation", generation={"n": 4}
        )
    assert exc.value.field == "generation.n"


# What loading never imports: the packager, the server, the faces, the demo and the kit.
NOT_SHIPPED = [
    "flavorkit.packaging.packager",
    "flavorkit.packaging.staging",
    "flavorkit.serve",
    "flavorkit.cli",
    "flavorkit.demo",
    "flavorkit.spark",
    "flavorkit.testing",
]


def test_the_model_ships_only_the_code_loading_needs(tiny_model_dir: Path) -> None:
    shipped = {p.relative_to(tiny_model_dir / "code").as_posix() for p in (tiny_model_dir / "code").rglob("*.py")}
    for module in NOT_SHIPPED:
        rel = module.replace(".", "/")
        assert f"{rel}.py" not in shipped and not any(f.startswith(f"{rel}/") for f in shipped), module
    assert {
        "flavorkit/model/loading.py",
        "flavorkit/model/manifest.py",
        "flavorkit/model/config.py",
        "flavorkit/model/signing.py",
    } <= shipped


def test_loading_in_a_fresh_interpreter_uses_only_the_shipped_code(tiny_model_dir: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    import flavorkit_onnxgenai
    from flavorkit.testing._probes import child_env

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    # This checkout's sources only: not the code/ folders of models other tests loaded into sys.path.
    sources = [Path(flavorkit.__file__).parents[1], Path(flavorkit_onnxgenai.__file__).parents[1]]
    env = {**child_env(), "PYTHONPATH": os.pathsep.join(str(p) for p in sources)}
    script = f"""
import json, sys, mlflow
m = mlflow.pyfunc.load_model({str(model)!r})
out = m.predict({{"messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 2}})
mods = {{n: getattr(mod, "__file__", None) for n, mod in list(sys.modules.items()) if n.split(".")[0] == "flavorkit"}}
print("RESULT " + json.dumps({{"modules": mods, "tokens": out[0]["usage"]["completion_tokens"]}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    assert result["tokens"] <= 2
    modules = result["modules"]
    assert "flavorkit.model.loading" in modules and "flavorkit.runtime.loaded" in modules
    outside = {n: f for n, f in modules.items() if f and not f.startswith(str(model / "code"))}
    assert outside == {}, "every flavorkit module comes from the model's code/ folder"
    assert not [m for m in modules if any(m == x or m.startswith(f"{x}.") for x in NOT_SHIPPED)]
