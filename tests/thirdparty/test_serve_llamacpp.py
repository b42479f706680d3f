"""``flavorkit serve`` in front of a third-party backend: the llama.cpp example plugin on SmolLM2's GGUF.

Nothing in the server knows the backend: it is found through its entry point, like the packaging.
The official ``openai`` client talks to a real uvicorn server on loopback.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import require_example_backend
from serve_fixtures import metric, running

require_example_backend()

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "smollm2-llamacpp"
QUESTION = [{"role": "user", "content": "What is the capital of Spain?"}]
FRENCH = [{"role": "user", "content": "What is the capital of France?"}]  # SmolLM2 answers with accents
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import flavorkit
    from flavorkit.demo.smollm2 import gguf_path

    path = tmp_path_factory.mktemp("serve-llamacpp") / NAME
    flavorkit.package(
        model=str(gguf_path()),
        backend="llama-cpp",
        path=path,
        options={"n_ctx": 512},
        generation={"temperature": 0.0},
    )
    return path


@pytest.fixture(scope="module")
def base(model_dir: Path) -> Iterator[str]:
    with running(create_app(str(model_dir))) as url:
        yield url


@pytest.fixture()
def client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=120)


def _metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def test_models_route_names_the_packaged_model(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]


def test_streamed_answer_joined_equals_the_non_streamed_one(client: Any, model_dir: Path) -> None:
    import mlflow

    whole = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=32)
    answer = whole.choices[0].message.content or ""
    assert "Spain" in answer or "España" in answer, answer  # the Q4_1 model's own (wrong) answer; on topic
    predicted = mlflow.pyfunc.load_model(str(model_dir)).predict({"messages": QUESTION, "max_tokens": 32})
    assert predicted[0]["choices"][0]["message"]["content"] == answer, "the server answers as MLflow's predict"
    assert whole.usage.completion_tokens <= 32
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=NAME, messages=QUESTION, max_tokens=32, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage == whole.usage


def test_streamed_non_ascii_text_joins_to_the_same_answer(client: Any) -> None:
    whole = client.chat.completions.create(model=NAME, messages=FRENCH, max_tokens=40).choices[0].message.content
    assert whole and any(ord(ch) > 127 for ch in whole), whole
    stream = client.chat.completions.create(model=NAME, messages=FRENCH, max_tokens=40, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == whole


def test_concurrent_clients_get_the_answers_they_get_alone(base: str, client: Any) -> None:
    questions = [
        [{"role": "user", "content": q}]
        for q in ("What is the capital of Italy?", "Name a fruit.", "What is 2 + 2?", "Say hello.")
    ]
    alone = [
        client.chat.completions.create(model=NAME, messages=m, max_tokens=16).choices[0].message.content
        for m in questions
    ]

    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=120)

        async def one(i: int, m: list[dict[str, str]]) -> str:
            if i % 2:
                stream = await aclient.chat.completions.create(model=NAME, messages=m, max_tokens=16, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])
            r = await aclient.chat.completions.create(model=NAME, messages=m, max_tokens=16)
            return str(r.choices[0].message.content)

        return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(questions))))

    assert asyncio.run(main()) == alone


def test_a_disconnected_stream_stops_the_backend(base: str, client: Any) -> None:
    before = _metrics(base)
    stream = client.chat.completions.create(model=NAME, messages=STORY, max_tokens=400, stream=True)
    pieces = 0
    for chunk in stream:
        pieces += bool(chunk.choices and chunk.choices[0].delta.content)
        if pieces == 3:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while True:
        now = _metrics(base)
        cancelled = metric(now, "flavorkit_cancelled_requests_total", reason="disconnect") - metric(
            before, "flavorkit_cancelled_requests_total", reason="disconnect"
        )
        if cancelled == 1 and metric(now, "flavorkit_active_requests") == 0:
            break
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    spent = metric(now, "flavorkit_completion_tokens_total") - metric(before, "flavorkit_completion_tokens_total")
    assert spent < 100, f"generation went on after the client left ({spent} tokens)"
