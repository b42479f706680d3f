"""Models packaged by the flavorkit of before the wings keep loading and answering with today's flavorkit.

``data/flavorkit-0.1.0-pre-wings.tar.xz`` is ``git archive 8434356 core/flavorkit plugins/flavorkit_onnxgenai``:
the code as it was before ``core/flavorkit`` was split into backend/, runtime/, packaging/ and model/.
A child interpreter packages the tiny model with that code; this process, where today's flavorkit is
already imported, then loads it. So the old model's shipped ``mlflow_model.py`` imports
``flavorkit.loading``, ``flavorkit.mlflow_columns`` and ``flavorkit.errors`` from today's package,
as it does under ``flavorkit serve``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import mlflow
import pytest

from flavorkit.testing._probes import child_env

OLD_CODE = Path(__file__).parent / "data" / "flavorkit-0.1.0-pre-wings.tar.xz"
REQUEST = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 6, "temperature": 0}


@pytest.fixture(scope="module")
def old_model(tiny_ort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ORT model packaged by the pre-wings code, in a child interpreter that sees only that code."""
    code = tmp_path_factory.mktemp("pre-wings-code")
    with tarfile.open(OLD_CODE) as tar:
        tar.extractall(code, filter="data")
    model = tmp_path_factory.mktemp("pre-wings-model") / "m"
    script = (
        "import json, sys, flavorkit\n"
        "flavorkit.package(model=sys.argv[1], backend='onnx-cpu', path=sys.argv[2], generation={'temperature': 0})\n"
        "print('RESULT ' + json.dumps({'flavorkit': flavorkit.__file__}))\n"
    )
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(code / "core"), str(code / "plugins"), env["PYTHONPATH"]])
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tiny_ort), str(model)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["flavorkit"] == str(code / "core" / "flavorkit" / "__init__.py")
    return model


def test_the_old_model_ships_the_old_layout(old_model: Path) -> None:
    shipped = old_model / "code" / "flavorkit"
    assert (shipped / "loading.py").is_file() and (shipped / "runtime.py").is_file()
    assert not (shipped / "runtime").exists()
    assert "from flavorkit.loading import load_packaged" in (shipped / "mlflow_model.py").read_text()


def test_an_old_model_loads_and_answers_like_a_new_one(old_model: Path, tiny_model_dir: Path) -> None:
    old = mlflow.pyfunc.load_model(str(old_model))
    new = mlflow.pyfunc.load_model(str(tiny_model_dir))
    # The installed package answered the old file's imports: its loaded model is today's class.
    assert type(old.unwrap_python_model().loaded).__module__ == "flavorkit.runtime.loaded"
    old_answer: list[dict[str, Any]] = old.predict(REQUEST)
    new_answer: list[dict[str, Any]] = new.predict(REQUEST)
    assert old_answer[0]["choices"][0]["message"] == new_answer[0]["choices"][0]["message"]
    assert old_answer[0]["usage"] == new_answer[0]["usage"]


def test_an_old_model_still_refuses_bad_input_with_mlflows_error(old_model: Path) -> None:
    from mlflow.exceptions import MlflowException

    old = mlflow.pyfunc.load_model(str(old_model))
    with pytest.raises(MlflowException) as exc:
        old.predict({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": -1})
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "max_tokens" in exc.value.message


def test_an_old_model_streams(old_model: Path) -> None:
    old = mlflow.pyfunc.load_model(str(old_model))
    chunks = list(old.predict_stream(REQUEST))
    answer = old.predict(REQUEST)[0]["choices"][0]["message"]["content"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == answer


def test_params_sent_to_an_old_model_are_refused_not_dropped(old_model: Path) -> None:
    from mlflow.exceptions import MlflowException

    old = mlflow.pyfunc.load_model(str(old_model))
    assert old.metadata.get_params_schema() is None, "packaged before flavorkit declared params"
    with pytest.raises(MlflowException) as exc:
        old.predict(REQUEST, params={"max_tokens": 2})
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "'params.max_tokens'" in exc.value.message and "package it again" in exc.value.message
