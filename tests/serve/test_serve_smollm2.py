"""``flavorkit serve`` on SmolLM2-135M-Instruct (onnx-cpu int4): a real answer, and cancellation mid-answer."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import raw_onnx_greedy
from serve_fixtures import metric, running

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "smollm2-chat"
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_ort: Path) -> Path:
    import flavorkit

    path = tmp_path_factory.mktemp("serve-smollm2") / NAME
    flavorkit.package(model=str(smollm2_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    return path


@pytest.fixture(scope="module")
def app(model_dir: Path) -> Any:
    return create_app(str(model_dir), request_timeout=1.0)


@pytest.fixture(scope="module")
def base(app: Any) -> Iterator[str]:
    with running(app) as url:
        yield url


def _metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def _spent(before: str, after: str) -> float:
    return metric(after, "flavorkit_completion_tokens_total") - metric(before, "flavorkit_completion_tokens_total")


def _settle(base: str, reason: str, before: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        now = _metrics(base)
        cancelled = metric(now, "flavorkit_cancelled_requests_total", reason=reason) - metric(
            before, "flavorkit_cancelled_requests_total", reason=reason
        )
        if cancelled == 1 and metric(now, "flavorkit_active_requests") == 0:
            return now
        assert time.monotonic() < deadline, f"no {reason} cancellation recorded"
        time.sleep(0.05)


def test_the_openai_client_gets_a_real_answer(base: str, smollm2_ort: Path) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    question = [{"role": "user", "content": "What is the capital of Spain?"}]
    whole = client.chat.completions.create(model=NAME, messages=question, max_tokens=32)
    # The model's own greedy answer on this machine, from onnxruntime-genai without flavorkit.
    raw, ended = raw_onnx_greedy(smollm2_ort, question, 32)
    assert whole.choices[0].message.content == raw
    assert whole.choices[0].finish_reason == ("stop" if ended else "length")
    stream = client.chat.completions.create(model=NAME, messages=question, max_tokens=32, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole.choices[0].message.content


def test_a_stream_disconnected_mid_answer_stops_within_a_few_tokens(base: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
    before = _metrics(base)
    stream = client.chat.completions.create(model=NAME, messages=STORY, max_tokens=150, stream=True)
    pieces = 0
    for chunk in stream:
        pieces += bool(chunk.choices[0].delta.content)
        if pieces == 5:
            break
    stream.close()
    after = _settle(base, "disconnect", before)
    assert _spent(before, after) < 50, "generation stopped a few tokens after the client left"


def test_request_timeout_stops_a_running_generation(base: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
    before = _metrics(base)
    t0 = time.perf_counter()
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=NAME, messages=STORY, max_tokens=1000)
    assert err.value.status_code == 504
    assert time.perf_counter() - t0 < 10
    after = _settle(base, "timeout", before)
    assert 0 < _spent(before, after) < 1000


def test_invocations_timeout_stops_the_running_predict(base: str) -> None:
    import json

    before = _metrics(base)
    t0 = time.perf_counter()
    req = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps({"messages": STORY, "max_tokens": 1000}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    assert err.value.code == 504
    assert time.perf_counter() - t0 < 10
    after = _settle(base, "timeout", before)
    spent = _spent(before, after)  # MLflow's predict is counted through the job guard
    assert 0 < spent < 1000
    time.sleep(0.5)
    assert _spent(before, _metrics(base)) == spent, "nothing is generated for the abandoned request"
