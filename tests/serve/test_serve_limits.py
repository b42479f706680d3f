"""``flavorkit serve`` limits and the text-generation route: API keys, a full queue, /v1/completions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_fixtures import hold_worker, running

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402

KEY = "sk-test-0123456789"
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path) -> Iterator[tuple[Any, str]]:
    app = create_app(str(tiny_model_dir), api_key=KEY, max_queue=1, served_model_name="guarded")
    with running(app) as url:
        yield app, url


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_api_key_is_required_on_the_api_routes(guarded: tuple[Any, str]) -> None:
    _, url = guarded
    status, headers, body = _get(f"{url}/v1/models")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "missing_api_key"
    status, _, body = _get(f"{url}/v1/models", {"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    status, _, body = _get(f"{url}/v1/models", {"Authorization": f"Basic {KEY}"})
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as err:
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert err.value.code == "invalid_api_key"
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["guarded"]
    assert client.chat.completions.create(model="guarded", messages=MESSAGES, max_tokens=2).usage.completion_tokens
    req = urllib.request.Request(f"{url}/invocations", data=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=30)
    assert http.value.code == 401 and http.value.headers["www-authenticate"] == "Bearer"
    # /invocations answers in MLflow's error shape, as its clients parse it
    assert json.loads(http.value.read()) == {
        "error_code": "UNAUTHENTICATED",
        "message": "no API key given; send it as 'Authorization: Bearer <key>'",
    }
    # health checks and metrics stay open for load balancers and Prometheus
    assert _get(f"{url}/ping")[0] == 200
    assert _get(f"{url}/metrics")[0] == 200


def test_several_keys_from_a_key_file_and_the_flag(tiny_model_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nalpha\n\n  beta  \n", encoding="utf-8")
    app = create_app(str(tiny_model_dir), api_key="gamma", api_key_file=str(keys))
    with running(app) as url:
        for key in ("alpha", "beta", "gamma"):
            assert _get(f"{url}/v1/models", {"Authorization": f"Bearer {key}"})[0] == 200, key
        for wrong in ("# team keys", "alph", "alpha beta", ""):
            assert _get(f"{url}/v1/models", {"Authorization": f"Bearer {wrong}"})[0] == 401, wrong
        req = urllib.request.Request(
            f"{url}/invocations", data=b"{}", headers={"Content-Type": "application/json", "Authorization": "Bearer x"}
        )
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(req, timeout=30)
        assert json.loads(http.value.read()) == {"error_code": "UNAUTHENTICATED", "message": "incorrect API key"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [("# only a comment\n\n", "holds no key"), ("one two\n", "has a key with a space in it")],
)
def test_a_key_file_without_usable_keys_is_refused_before_loading(
    tiny_model_dir: Path, tmp_path: Path, content: str, problem: str
) -> None:
    from flavorkit.errors import SettingsError

    keys = tmp_path / "keys.txt"
    keys.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError) as exc:
        create_app(str(tiny_model_dir), api_key_file=str(keys))
    assert exc.value.name == "api_key_file" and problem in str(exc.value)


def test_api_key_from_the_environment(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAVORKIT_API_KEY", KEY)
    app = create_app(str(tiny_model_dir))
    with running(app) as url:
        assert _get(f"{url}/v1/models")[0] == 401
        assert _get(f"{url}/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200


def test_a_full_queue_is_a_429_with_retry_after(guarded: tuple[Any, str]) -> None:
    app, url = guarded
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    gate = hold_worker(app.server.scheduler)
    import asyncio

    async def main() -> Any:
        waiting = asyncio.ensure_future(
            aclient.chat.completions.create(model="guarded", messages=MESSAGES, max_tokens=3)
        )
        while app.server.metrics.queue_depth._value.get() < 1:  # the one queue slot is taken
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as err:
            await asyncio.to_thread(client.chat.completions.create, model="guarded", messages=MESSAGES, max_tokens=3)
        assert err.value.code == "queue_full"
        assert err.value.response.headers["retry-after"] == "1"
        gate.set()
        return await waiting

    try:
        waited = asyncio.run(main())
    finally:
        gate.set()
    assert waited.usage.completion_tokens <= 3, "the queued request was served once the worker was free"
    assert client.chat.completions.create(model="guarded", messages=MESSAGES, max_tokens=2).usage.completion_tokens


# -- text-generation models: /v1/completions --------------------------------------------------------


@pytest.fixture(scope="module")
def text_url(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Iterator[str]:
    import flavorkit

    path = tmp_path_factory.mktemp("serve-text") / "tiny-text"
    flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=path, task="text-generation", generation={"temperature": 0.0}
    )
    with running(create_app(str(path))) as url:
        yield url


def test_completions_streamed_equals_non_streamed(text_url: str) -> None:
    client = openai.OpenAI(base_url=f"{text_url}/v1", api_key="x", max_retries=0)
    whole = client.completions.create(model="tiny-text", prompt="Once upon a time", max_tokens=20)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 20
    chunks = list(
        client.completions.create(
            model="tiny-text",
            prompt="Once upon a time",
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert chunks[-1].usage == whole.usage


def test_completions_bad_input_and_the_chat_route(text_url: str) -> None:
    client = openai.OpenAI(base_url=f"{text_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-text", prompt="Hi", n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-text", prompt=[[1, 2]])  # token arrays
    assert err.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-text", prompt="Hi", echo=True)
    assert err.value.param == "echo" and err.value.code == "unknown_field"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="tiny-text", messages=MESSAGES)
    assert missing.value.code == "unsupported_endpoint"
    assert client.completions.create(model="tiny-text", prompt="Hi", max_tokens=2).usage.completion_tokens <= 2


# -- model URIs ---------------------------------------------------------------------------------------


def test_serves_a_registered_model_by_alias(tiny_ort: Path) -> None:
    from mlflow import MlflowClient

    import flavorkit

    info = flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", registered_model_name="tiny-reg", generation={"temperature": 0.0}
    )
    MlflowClient().set_registered_model_alias("tiny-reg", "champion", str(info.registered_model_version))
    app = create_app("models:/tiny-reg@champion")
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-reg"]
        r = client.chat.completions.create(model="tiny-reg", messages=MESSAGES, max_tokens=3)
        assert r.model == "tiny-reg" and r.usage.completion_tokens <= 3


def test_a_model_flavorkit_did_not_package_is_refused(tmp_path: Path) -> None:
    import mlflow

    from flavorkit.cli import main
    from flavorkit.serve.errors import NotAFlavorkitModel

    code = tmp_path / "echo_model.py"
    code.write_text(
        "import mlflow\n"
        "from mlflow.pyfunc import PythonModel\n\n"
        "class Echo(PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        return model_input\n\n"
        "mlflow.models.set_model(Echo())\n"
    )
    path = tmp_path / "echo"
    mlflow.pyfunc.save_model(str(path), python_model=str(code))
    with pytest.raises(NotAFlavorkitModel, match="not one packaged by flavorkit"):
        create_app(str(path))
    assert main(["serve", str(path), "--port", "1"]) == 2  # a clean error, before binding any port


def test_api_key_and_route_labels_hold_when_mounted_inside_another_app(tiny_model_dir: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    inner = create_app(str(tiny_model_dir), api_key=KEY, served_model_name="mounted")
    host = Starlette(routes=[Mount("/llm", app=inner)])
    with running(host) as url:
        status, _, body = _get(f"{url}/llm/v1/models")
        assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
        client = openai.OpenAI(base_url=f"{url}/llm/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["mounted"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/llm/v1", api_key="wrong", max_retries=0).chat.completions.create(
                model="mounted", messages=MESSAGES, max_tokens=2
            )
        metrics = _get(f"{url}/llm/metrics")[2].decode()
        assert 'route="/v1/models",status="401"' in metrics and 'route="/v1/models",status="200"' in metrics
    inner.server.scheduler.shutdown(5)  # the host app does not forward lifespan events to a mount


def test_each_server_leaves_the_shared_backend_as_it_found_it(tiny_model_dir: Path) -> None:
    first = create_app(str(tiny_model_dir))
    pm = first.server.model.backend.pm  # backends are cached: every model of this backend shares it

    def guards() -> list[str]:
        return sorted(name for name, _ in pm.list_name_plugin() if name.startswith("flavorkit-serve-job-guard-"))

    before = len(guards())
    second = create_app(str(tiny_model_dir))
    assert second.server.model.backend.pm is pm
    assert len(guards()) == before + 1
    # A batch of the second server runs through the first one's guard untouched.
    with running(second) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model=second.server.served_name, messages=MESSAGES, max_tokens=2)
        assert answer.usage is not None and answer.usage.completion_tokens >= 1
    assert len(guards()) == before, "a stopped server unregisters its guard"
    first.server.scheduler.shutdown(5)
    assert len(guards()) == before - 1


def test_the_cli_names_a_model_it_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flavorkit.cli import main

    missing = tmp_path / "no-model-here"
    assert main(["serve", str(missing), "--port", "1"]) == 2
    err = capsys.readouterr().err
    hint = "no such folder (give a model folder or an MLflow model URI: runs:/..., models:/...)"
    assert err == f"flavorkit serve: cannot load {missing}: {hint}\n"


def test_threads_set_the_models_cpu_threads_while_it_loads_only(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc
    import os

    monkeypatch.delenv("FLAVORKIT_THREADS", raising=False)

    def threads_added(**values: Any) -> int:
        before = len(os.listdir("/proc/self/task"))
        app = create_app(str(tiny_model_dir), **values)
        added = len(os.listdir("/proc/self/task")) - before  # the worker thread, ONNX Runtime's pool
        app.server.scheduler.shutdown(5)
        app.server.model.close()
        del app
        gc.collect()
        return added

    assert threads_added(threads=4) - threads_added(threads=1) == 3
    assert "FLAVORKIT_THREADS" not in os.environ  # set for the load only
    monkeypatch.setenv("FLAVORKIT_THREADS", "1")
    assert threads_added(threads=3) - threads_added() == 2  # the flag over the variable
    assert os.environ["FLAVORKIT_THREADS"] == "1"


def test_the_server_warms_up_before_the_first_client(tiny_model_dir: Path) -> None:
    app = create_app(str(tiny_model_dir))
    try:
        # onnx-cpu's batch-invariance probe ran at start-up, not in the first client's batch
        assert app.server.model.handle.invariant is not None
    finally:
        app.server.scheduler.shutdown(5)
        app.server.model.close()


def test_version_says_whether_greedy_answers_depend_on_the_load(tiny_ort: Path, tmp_path: Path) -> None:
    import flavorkit

    path = tmp_path / "auto"
    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=path, options={"batching": "auto"})
    with running(create_app(str(path))) as url:
        status, _, body = _get(f"{url}/version")
    assert status == 200
    info = json.loads(body)
    assert info["backend"] == "onnx-cpu"
    assert info["batch_invariant"] is False  # 'auto' batches greedy rows whatever the kernels do
    assert "batch_invariant" not in info["capabilities"] and "batching" in info["capabilities"]
