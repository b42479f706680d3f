"""A packaged model behind MLflow's scoring server, and in a virtualenv built from its requirements alone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_fixtures import server_process

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: Any) -> tuple[int, Any]:
    return _post_text(url, json.dumps(body))


def _post_text(url: str, text: str) -> tuple[int, Any]:
    """POST a JSON document given as text (json.dumps cannot write very deep nesting)."""
    req = urllib.request.Request(url, data=text.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, {"message": raw.decode(errors="replace")}


def _deep_chat(depth: int) -> str:
    """A chat request whose content is a string nested in ``depth`` lists, as JSON text."""
    return '{"messages": [{"role": "user", "content": ' + "[" * depth + '"x"' + "]" * depth + "}]}"


def _assert_bad_request(status: int, body: Any, *fields: str) -> None:
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE", body
    for field in fields:
        assert f"'{field}'" in body["message"], body["message"]
    assert "stack_trace" not in body, "a request error is not an internal error"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    """``mlflow models serve`` on the tiny packaged model, bound to loopback only."""
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        *(str(BIN / "mlflow"), "models", "serve", "-m", str(tiny_model_dir)),
        *("-h", "127.0.0.1", "-p", str(port), "--env-manager", "local"),
    ]
    base = f"http://127.0.0.1:{port}"
    with server_process(cmd, f"{base}/ping", timeout=90, env=env):
        yield base


def test_invocations_answers_a_chat_request(server: str) -> None:
    status, body = _post(f"{server}/invocations", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5})
    assert status == 200
    assert isinstance(body, list) and len(body) == 1
    assert body[0]["object"] == "chat.completion"
    assert body[0]["usage"]["completion_tokens"] <= 5


def test_invocations_dataframe_records_batch(server: str, tiny_pyfunc: Any) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3},
        {"messages": [{"role": "user", "content": "x"}]},
    ]
    status, body = _post(f"{server}/invocations", {"dataframe_records": rows})
    assert status == 200
    predictions = body["predictions"]
    assert [p["object"] for p in predictions] == ["chat.completion", "chat.completion"]
    assert predictions[0]["usage"]["completion_tokens"] <= 3
    local = tiny_pyfunc.predict(rows)
    assert [p["choices"][0]["message"] for p in predictions] == [r["choices"][0]["message"] for r in local]
    assert [p["usage"] for p in predictions] == [r["usage"] for r in local]


def test_invalid_request_is_a_400_naming_the_field_and_the_server_keeps_serving(server: str) -> None:
    status, body = _post(f"{server}/invocations", {"messages": [{"role": "user", "content": "hi"}], "top_p": 7})
    assert status == 400
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "top_p" in body["message"]
    assert "stack_trace" not in body, "a request error is not an internal error"
    status, _ = _post(f"{server}/invocations", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200


def test_integer_temperature_and_top_p_are_accepted(server: str) -> None:
    request_ = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 2, "top_p": 1}
    request_["top_k"] = 1
    status, body = _post(f"{server}/invocations", request_)
    assert status == 200, body
    status, body = _post(f"{server}/invocations", {"dataframe_records": [request_, {**request_, "temperature": 0}]})
    assert status == 200, body
    assert len(body["predictions"]) == 2


def test_a_lone_surrogate_is_a_400_naming_the_field(server: str) -> None:
    # json.dumps writes the lone surrogate as the escape \ud800, which JSON parsers accept.
    request_ = {"messages": [{"role": "user", "content": "a\ud800b"}]}
    _assert_bad_request(*_post(f"{server}/invocations", request_), "messages[0].content")
    _assert_bad_request(*_post(f"{server}/invocations", {"dataframe_records": [request_]}), "messages[0].content")


def test_deep_nesting_is_a_400_naming_the_field(server: str) -> None:
    _assert_bad_request(*_post_text(f"{server}/invocations", _deep_chat(500)), "messages[0].content")
    status, _ = _post(f"{server}/invocations", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200


@pytest.mark.xfail(
    strict=True,
    reason="MLflow's scoring server parses the body with json.loads before the model runs and does not catch "
    "its RecursionError (about 1000 levels on CPython), so it answers 500; see docs/architecture.md section 4",
)
def test_nesting_beyond_the_json_parser_limit_is_a_400(server: str) -> None:
    _assert_bad_request(*_post_text(f"{server}/invocations", _deep_chat(3000)), "messages[0].content")


def test_an_unknown_top_level_field_is_a_400_naming_it(server: str) -> None:
    request_ = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "best_of": 2}
    _assert_bad_request(*_post(f"{server}/invocations", request_), "best_of")
    _assert_bad_request(*_post(f"{server}/invocations", {"dataframe_records": [request_]}), "best_of")
    status, _ = _post(f"{server}/invocations", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200


def test_every_bad_row_of_a_batch_is_named(server: str) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "ok"}], "max_tokens": 2},
        {"messages": [{"role": "user", "content": "ok"}], "top_p": 3.0},
        {"messages": [{"role": "user", "content": "ok"}], "max_tokens": 2},
        {"messages": [{"role": "user", "content": "ok"}], "n": 0},
    ]
    _assert_bad_request(*_post(f"{server}/invocations", {"dataframe_records": rows}), "inputs[1].top_p", "inputs[3].n")


@pytest.mark.slow
def test_loads_and_predicts_in_a_fresh_virtualenv_from_its_requirements_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "-r", str(tiny_model_dir / "requirements.txt")],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    script = f"""
import json, mlflow
m = mlflow.pyfunc.load_model({str(tiny_model_dir)!r})
out = m.predict({{"messages": [{{"role": "user", "content": "Hello"}}], "max_tokens": 4}})
import flavorkit
print(json.dumps({{"flavorkit": flavorkit.__file__, "out": out}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    proc = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["flavorkit"].startswith(str(tiny_model_dir / "code")), "flavorkit came from the model itself"
    assert result["out"][0]["usage"]["completion_tokens"] <= 4
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    assert "torch" not in freeze and "transformers" not in freeze


def test_params_are_generation_settings_and_unknown_ones_are_refused(server: str) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},  # a row's own field wins
    ]
    status, body = _post(f"{server}/invocations", {"dataframe_records": rows, "params": {"max_tokens": 2}})
    assert status == 200, body
    assert [p["usage"]["completion_tokens"] for p in body["predictions"]] == [2, 4]
    status, body = _post(
        f"{server}/invocations", {"inputs": {"messages": [{"role": "user", "content": "Hi"}]}, "params": {"n": 2}}
    )
    assert status == 200, body
    assert len(body["predictions"][0]["choices"]) == 2
    for params, field in (({"max_token": 2}, "params.max_token"), ({"temperature": 9.0}, "params.temperature")):
        _assert_bad_request(*_post(f"{server}/invocations", {"dataframe_records": rows, "params": params}), field)
