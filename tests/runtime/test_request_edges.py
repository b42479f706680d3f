"""Request edges: a chat template that refuses a conversation, pandas' NA markers, and backend
artifact folders holding byte-code caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

import flavorkit
from flavorkit.errors import InvalidRequest

#: ChatML that, like Mistral's or Gemma's templates, refuses two user turns in a row.
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.index0 > 0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TWO_USERS = {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def strict_template_pyfunc(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    source = Path(shutil.copytree(tiny_hf, tmp_path_factory.mktemp("strict") / "ckpt"))
    config_file = source / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = STRICT_TEMPLATE
    config_file.write_text(json.dumps(config))
    (source / "chat_template.jinja").unlink(missing_ok=True)
    path = tmp_path_factory.mktemp("strict-model") / "model"
    flavorkit.package(model=str(source), backend="transformers", path=path)
    return mlflow.pyfunc.load_model(str(path))


def test_a_chat_template_that_refuses_the_conversation_is_an_invalid_request(strict_template_pyfunc: Any) -> None:
    runtime = strict_template_pyfunc.unwrap_python_model().loaded
    with pytest.raises(InvalidRequest) as exc:
        runtime.predict(TWO_USERS)
    assert exc.value.field == "messages"
    assert exc.value.detail == (
        "the model's chat template refuses these messages: "
        "Conversation roles must alternate user/assistant/user/assistant/..."
    )
    with pytest.raises(MlflowException) as mlflow_exc:
        strict_template_pyfunc.predict(TWO_USERS)
    assert mlflow_exc.value.error_code == "INVALID_PARAMETER_VALUE" and "'messages'" in mlflow_exc.value.message
    alternating = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert strict_template_pyfunc.predict(alternating)[0]["usage"]["completion_tokens"] >= 1


def test_pandas_na_cells_mean_not_given(tiny_pyfunc: Any) -> None:
    rows = pd.DataFrame(
        {
            "messages": [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "Hello"}]],
            "max_tokens": pd.array([3, pd.NA], dtype="Int64"),
            "temperature": [0.0, 0.0],
        }
    )
    runtime = tiny_pyfunc.unwrap_python_model().loaded
    answers = runtime.predict(rows)
    assert answers[0]["usage"]["completion_tokens"] <= 3
    default = runtime.defaults["max_tokens"]
    assert 1 <= answers[1]["usage"]["completion_tokens"] <= default


def test_an_artifact_folder_with_byte_code_caches_packages_as_it_is(tiny_ort: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(tiny_ort, tmp_path / "ort"))
    cache = source / "__pycache__"
    cache.mkdir()
    (cache / "helper.cpython-311.pyc").write_bytes(b"\x00" * 16)
    info = flavorkit.package(model=str(source), backend="onnx-cpu", path=tmp_path / "model")
    packaged = list((tmp_path / "model" / "artifacts").rglob("helper.cpython-311.pyc"))
    assert len(packaged) == 1
    assert mlflow.pyfunc.load_model(info.model_uri).predict({**TWO_USERS, "messages": TWO_USERS["messages"][:1]})
