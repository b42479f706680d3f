"""Whole-model integrity: every file of a packaged model, and MLmodel's flavorkit part, is checked at load.

Each test copies the shared packaged tiny model, tampers with one thing and loads it with
``mlflow.pyfunc.load_model``, as a user would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from flavorkit.errors import IntegrityError, ModelConfigError
from flavorkit.model.manifest import MANIFEST_FILE, read_manifest, sha256_file

CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def _copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def _edit_mlmodel(model: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    edit(mlmodel)
    (model / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))


def _config(mlmodel: dict[str, Any]) -> dict[str, Any]:
    return mlmodel["flavors"]["python_function"]["config"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "rel",
    [
        "code/flavorkit/runtime/loaded.py",  # flavorkit's shipped code
        "code/flavorkit_onnxgenai/runtime.py",  # the plugin's shipped code
        "mlflow_model.py",  # the models-from-code file (it has run by then, but the load still fails)
        "requirements.txt",
        "python_env.yaml",
        "conda.yaml",
        "serving_input_example.json",
    ],
)
def test_an_edit_to_any_file_of_the_model_fails_the_load_naming_it(
    tiny_model_dir: Path, tmp_path: Path, rel: str
) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    _append(model / rel, "\n# edited\n")
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    (problem,) = exc.value.problems
    assert problem.startswith(f"{rel}: ") and "differs from the manifest" in problem


def test_a_file_added_to_the_shipped_code_fails_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    # code/ is on sys.path while the model loads: an added module could shadow a real one.
    (model / "code" / "flavorkit_extra_module.py").write_text("raise SystemExit('not shipped')\n")
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert exc.value.problems == ["code/flavorkit_extra_module.py: not in the manifest"]


def test_a_removed_file_fails_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    (model / "input_example.json").unlink()
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert exc.value.problems == ["input_example.json: missing"]


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda m: _config(m)["generation"].update(max_tokens=3), "max_tokens: 3 would cut every answer"),
        (lambda m: _config(m)["generation"].update(max_tokens=-5), "max_tokens: -5 crashed predict"),
        (lambda m: _config(m)["options"].update(batching="off"), "a backend option"),
        (lambda m: m["flavors"]["python_function"].update(code="artifacts"), "where MLflow finds the code"),
        (lambda m: m["flavors"]["flavorkit"].update(backend="transformers"), "the flavorkit flavor"),
    ],
)
def test_an_edit_to_mlmodels_flavorkit_part_fails_the_load(
    tiny_model_dir: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], what: str
) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    _edit_mlmodel(model, edit)
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert exc.value.problems[0].startswith("MLmodel: "), what
    assert "differ from the manifest" in exc.value.problems[0]


def test_mlflow_bookkeeping_in_mlmodel_may_change(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    _edit_mlmodel(model, lambda m: m.update(run_id="0123", utc_time_created="2030-01-01 00:00:00"))
    mlflow.pyfunc.load_model(str(model))


def test_python_byte_code_caches_do_not_fail_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Python writes these into a writable model folder whenever it imports the shipped code.
    model = _copy(tiny_model_dir, tmp_path)
    for folder in (model, model / "code" / "flavorkit"):
        (folder / "__pycache__").mkdir()
        (folder / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\x00")
    mlflow.pyfunc.load_model(str(model))


def test_the_registry_download_marker_does_not_fail_the_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    (model / "registered_model_meta").write_text("model_name: x\nmodel_version: '1'\n")
    mlflow.pyfunc.load_model(str(model))


def test_a_missing_manifest_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert MANIFEST_FILE in str(exc.value) and "cannot be read" in str(exc.value)


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda m: m["files"].update({"requirements.txt": "abc"}), "files.requirements.txt"),
        (lambda m: m["files"].update({"requirements.txt": None}), "files.requirements.txt"),
        (lambda m: m["files"]["requirements.txt"].update(sha256="zz"), "files.requirements.txt.sha256"),
        (lambda m: m["files"]["requirements.txt"].update(size=-1), "files.requirements.txt.size"),
        (lambda m: m["files"].update({"../outside": m["files"]["requirements.txt"]}), "files"),
        (lambda m: m.update(version=99), "version"),
        (lambda m: m.update(files=[]), "files"),
        (lambda m: m.pop("mlmodel"), "mlmodel"),
    ],
)
def test_a_malformed_manifest_is_an_integrity_error_naming_the_field(
    tiny_model_dir: Path, tmp_path: Path, mutate: Callable[[dict[str, Any]], None], named: str
) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    raw = json.loads((model / MANIFEST_FILE).read_text())
    mutate(raw)
    (model / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert f"{MANIFEST_FILE} is malformed" in str(exc.value)
    assert f"at {named}:" in str(exc.value)


def test_a_manifest_that_is_not_json_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    (model / MANIFEST_FILE).write_text("[not json")
    with pytest.raises(IntegrityError, match=f"{MANIFEST_FILE} cannot be read"):
        mlflow.pyfunc.load_model(str(model))


def test_verification_can_be_switched_off(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    _append(model / "code" / "flavorkit" / "runtime" / "loaded.py", "\n# edited\n")
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    out = mlflow.pyfunc.load_model(str(model)).predict(CHAT)
    assert out[0]["usage"]["completion_tokens"] <= 4


# -- the typed, versioned configuration -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"generation": {"max_tokens": -5}}, "generation.max_tokens"),
        ({"generation": {"temperature": "hot"}}, "generation.temperature"),
        ({"generation": {"frequency_penalty": 1}}, "generation.frequency_penalty"),
        ({"options": {"batching": "sometimes"}}, "options.batching"),
        ({"options": {"precison": "int4"}}, "options.precison"),
        ({"task": "summarize"}, "task"),
        ({"config_version": 99}, "config_version"),
    ],
)
def test_a_bad_config_value_is_a_clear_error_naming_the_field(
    tiny_model_dir: Path, override: dict[str, Any], field: str
) -> None:
    # MLflow merges load-time model_config overrides into the packaged config; the loader validates the result.
    with pytest.raises(ModelConfigError) as exc:
        mlflow.pyfunc.load_model(str(tiny_model_dir), model_config=override)
    assert exc.value.field == field
    assert repr(field) in str(exc.value)


def test_a_bad_config_is_refused_even_when_verification_is_off(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _copy(tiny_model_dir, tmp_path)
    _edit_mlmodel(model, lambda m: _config(m)["generation"].update(max_tokens=-5))
    monkeypatch.setenv("FLAVORKIT_VERIFY_ARTIFACTS", "0")
    with pytest.raises(ModelConfigError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert exc.value.field == "generation.max_tokens"


def test_a_valid_load_time_override_is_used(tiny_model_dir: Path) -> None:
    model = mlflow.pyfunc.load_model(str(tiny_model_dir), model_config={"generation": {"max_tokens": 2}})
    out = model.predict({"messages": [{"role": "user", "content": "Hello"}]})
    assert out[0]["usage"]["completion_tokens"] <= 2


def test_mlmodel_lists_a_flavorkit_flavor(tiny_model_dir: Path) -> None:
    import flavorkit
    from flavorkit.backend.hookspec import SPEC_VERSION
    from flavorkit.model.config import CONFIG_VERSION

    flavor = mlflow.models.Model.load(str(tiny_model_dir)).flavors["flavorkit"]
    assert flavor == {
        "backend": "onnx-cpu",
        "plugin_object": "flavorkit_onnxgenai.plugin:cpu",
        "plugin_distribution": "flavorkit",
        "plugin_version": flavorkit.__version__,
        "flavorkit_version": flavorkit.__version__,
        "spec_version": SPEC_VERSION,
        "config_version": CONFIG_VERSION,
    }
    config = mlflow.models.Model.load(str(tiny_model_dir)).flavors["python_function"]["config"]
    assert config["config_version"] == CONFIG_VERSION


def test_the_manifest_covers_every_file_but_mlmodel_and_itself(tiny_model_dir: Path) -> None:
    manifest = read_manifest(tiny_model_dir)
    on_disk = {
        p.relative_to(tiny_model_dir).as_posix()
        for p in tiny_model_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert set(manifest.files) == on_disk - {"MLmodel", MANIFEST_FILE}
    assert {"mlflow_model.py", "requirements.txt", "python_env.yaml", "conda.yaml"} <= set(manifest.files)
    assert any(f.startswith("code/flavorkit/") for f in manifest.files)
    assert any(f.startswith("artifacts/") for f in manifest.files)
    for rel, entry in manifest.files.items():
        assert entry.sha256 == sha256_file(tiny_model_dir / rel)


def test_a_bad_copy_by_mlflow_fails_packaging_and_leaves_nothing(
    tiny_ort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flavorkit

    real_save = mlflow.pyfunc.save_model

    def save_then_corrupt(*args: Any, path: str, **kwargs: Any) -> None:
        real_save(*args, path=path, **kwargs)
        copied = next(Path(path, "artifacts").glob("*/genai_config.json"))
        copied.write_text(copied.read_text().replace('"context_length": 256', '"context_length": 255'))

    monkeypatch.setattr(mlflow.pyfunc, "save_model", save_then_corrupt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as exc:
        flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=out / "m")
    (problem,) = exc.value.problems
    assert problem.startswith("artifacts/") and "genai_config.json: MLflow's copy differs" in problem
    assert list(out.iterdir()) == []


def test_links_in_a_packaged_model_are_refused_without_following_them(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flavorkit.cli import main

    model = _copy(tiny_model_dir, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any model")
    (model / "code" / "a").symlink_to("..")  # two loops back to the root: exponential if followed
    (model / "code" / "b").symlink_to("..")
    (model / "artifacts" / "notes.txt").symlink_to(secret)
    expected = [
        "artifacts/notes.txt: a symbolic link (a packaged model holds none)",
        "code/a: a symbolic link (a packaged model holds none)",
        "code/b: a symbolic link (a packaged model holds none)",
    ]
    with pytest.raises(IntegrityError) as exc:
        mlflow.pyfunc.load_model(str(model))
    assert exc.value.problems == expected
    assert main(["verify", str(model)]) == 1
    err = capsys.readouterr().err
    assert all(problem in err for problem in expected), err
