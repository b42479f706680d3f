"""The registry flow against a real ``mlflow server`` over HTTP (issue: scale-out, item 2).

The server runs on loopback with a sqlite backend store and proxied artifact storage
(``--artifacts-destination``), the way a team's tracking server is set up. Everything goes through
HTTP: packaging with ``registered_model_name``, an alias, ``models:/NAME@ALIAS`` in MLflow and in
``flavorkit serve``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import flavorkit
from helpers import chat, content
from serve_fixtures import free_port, running
from tracking_fixtures import mlflow_server

pytestmark = pytest.mark.slow

NAME = "tiny-chat-http"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on loopback: sqlite backend store, artifacts proxied to a local folder."""
    with mlflow_server(tmp_path_factory.mktemp("tracking-server")) as url:
        yield url


@pytest.fixture
def remote(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at the server for one test (the suite's default is a private sqlite store)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    yield tracking_server


@pytest.fixture
def registered(remote: str, tiny_ort: Path) -> str:
    """The tiny onnx-cpu model packaged into the server's registry, with the alias ``champion``."""
    mlflow.set_experiment("flavorkit-http")
    info = flavorkit.package(
        model=str(tiny_ort),
        backend="onnx-cpu",
        registered_model_name=NAME,
        alias="champion",
        generation={"temperature": 0.0},
    )
    return str(info.registered_model_version)


def test_package_register_alias_and_load_over_http(registered: str, remote: str) -> None:
    client = MlflowClient()
    assert client.get_model_version_by_alias(NAME, "champion").version == registered
    run_id = client.get_model_version(NAME, registered).run_id
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts are proxied"
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    answer = model.predict(chat("Hi", max_tokens=6))[0]
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] <= 6
    assert model.predict(chat("Hi", max_tokens=6))[0]["choices"] == answer["choices"], "greedy default packaged"


def test_flavorkit_serve_loads_an_alias_from_the_server(registered: str) -> None:
    openai = pytest.importorskip("openai")
    from flavorkit.serve import create_app

    expected = content(mlflow.pyfunc.load_model(f"models:/{NAME}/{registered}").predict(chat("Hi", max_tokens=6))[0])
    app = create_app(f"models:/{NAME}@champion")
    with running(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == [NAME], "the served name is the registered name"
        reply = client.chat.completions.create(model=NAME, messages=chat("Hi")["messages"], max_tokens=6)
        assert reply.choices[0].message.content == expected
        streamed = client.chat.completions.create(
            model=NAME, messages=chat("Hi")["messages"], max_tokens=6, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_an_unknown_alias_fails_fast_naming_it(registered: str) -> None:
    from flavorkit.serve import create_app

    started = time.monotonic()
    with pytest.raises(MlflowException) as err:
        create_app(f"models:/{NAME}@nope")
    assert "nope" in str(err.value)
    assert time.monotonic() - started < 30
    proc = subprocess.run(
        [sys.executable, "-m", "flavorkit.cli", "serve", f"models:/{NAME}@nope", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ},
    )
    assert proc.returncode == 2, proc.stderr
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr
