"""``flavorkit serve`` on SmolLM2-135M-Instruct: a real answer, cancellation mid-answer, greedy answers under load.

onnx-cpu int4 throughout; the load test runs on transformers too.
"""

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


def _prompts() -> list[list[dict[str, str]]]:
    """32 conversations: short questions, and requests of 60 to 120 prompt tokens."""
    topics = ["bread", "rivers", "trains", "owls", "glass", "maps", "tea", "bees"]
    out = []
    for i in range(32):
        topic = topics[i % len(topics)]
        if i % 2:
            text = f"Tell me one fact about {topic}."
        else:
            text = f"Here are my notes on {topic}. " + f"The {topic} matter to people in many ways. " * (6 + i % 5)
            text += "Summarise them in one sentence."
        out.append([{"role": "user", "content": text}])
    return out


@pytest.fixture(scope="module")
def busy(model_dir: Path) -> Iterator[str]:
    """The same model behind a server with the default limits (no 1 s timeout), for a load test."""
    with running(create_app(str(model_dir))) as url:
        yield url


def test_32_concurrent_greedy_clients_get_their_single_request_answers(busy: str) -> None:
    """Issue 21: under load, with streams cancelled mid-way, every greedy answer equals the prompt alone."""
    _32_clients_answer_as_alone(busy, NAME)


@pytest.fixture(scope="module")
def hf_busy(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Iterator[str]:
    """SmolLM2 packaged with the transformers backend (fp32, batching='exact', the default), served."""
    import flavorkit

    path = tmp_path_factory.mktemp("serve-smollm2-hf") / "smollm2-hf"
    flavorkit.package(model=str(smollm2_hf), backend="transformers", path=path, generation={"temperature": 0.0})
    with running(create_app(str(path))) as url:
        yield url


def test_32_concurrent_greedy_clients_on_transformers_get_their_single_request_answers(hf_busy: str) -> None:
    """Issue 21 on the transformers backend: its exact mode replays near-ties alone, so the same holds."""
    _32_clients_answer_as_alone(hf_busy, "smollm2-hf")


def _32_clients_answer_as_alone(base: str, name: str) -> None:
    """32 greedy clients, half with 60+ prompt tokens, and 4 streams cancelled mid-way: each answer as alone."""
    import asyncio

    prompts = _prompts()
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    prompt_tokens = []
    alone = []
    for messages in prompts:
        answer = client.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
        alone.append(answer.choices[0].message.content)
        prompt_tokens.append(answer.usage.prompt_tokens)
    assert sum(n >= 60 for n in prompt_tokens) == 16, prompt_tokens

    async def answer(aclient: Any, messages: list[dict[str, str]]) -> str:
        reply = await aclient.chat.completions.create(model=name, messages=messages, max_tokens=24, temperature=0)
        return str(reply.choices[0].message.content)

    async def cancelled(aclient: Any, messages: list[dict[str, str]]) -> None:
        stream = await aclient.chat.completions.create(
            model=name, messages=messages, max_tokens=200, temperature=0, stream=True
        )
        seen = 0
        async for _chunk in stream:
            seen += 1
            if seen == 4:
                break
        await stream.close()  # the server sees the disconnect and drops the row mid-batch

    async def load() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=600)
        try:
            leavers = [asyncio.create_task(cancelled(aclient, STORY)) for _ in range(4)]
            answers = await asyncio.gather(*(answer(aclient, m) for m in prompts))
            await asyncio.gather(*leavers)
            return list(answers)
        finally:
            await aclient.close()

    under_load = asyncio.run(load())
    differ = [i for i, (a, b) in enumerate(zip(alone, under_load, strict=True)) if a != b]
    assert differ == [], f"{len(differ)} of 32 answers changed under load: {differ}"
