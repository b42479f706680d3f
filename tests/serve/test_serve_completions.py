"""``/v1/completions`` with a list of prompts, and the OpenAI request fields of both generation routes.

A real uvicorn server on loopback, the official ``openai`` client (sync, async, streaming) and
plain HTTP where the raw event stream matters.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import raw_onnx_greedy_text
from serve_fixtures import hold_worker, metric, running

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402

TEXT = "tiny-text"
CHAT = "tiny-chat"
PROMPTS = ["Once upon a time", "The cat sat on", "Batching is", "A B C D E F G"]
TOO_LONG = "word " * 100  # about 300 tokens: the tiny model's context is 256


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Path:
    import flavorkit

    path = tmp_path_factory.mktemp("serve-completions") / TEXT
    flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=path, task="text-generation", generation={"temperature": 0.0}
    )
    return path


@pytest.fixture(scope="module")
def text_app(text_model: Path) -> Any:
    return create_app(str(text_model))


@pytest.fixture(scope="module")
def text_url(text_app: Any) -> Iterator[str]:
    with running(text_app) as url:
        yield url


@pytest.fixture(scope="module")
def small(text_model: Path) -> Iterator[tuple[Any, str]]:
    """The same model behind a server with batches of 2 and a queue of 3."""
    app = create_app(str(text_model), max_batch=2, max_queue=3)
    with running(app) as url:
        yield app, url


@pytest.fixture()
def client(text_url: str) -> Any:
    return openai.OpenAI(base_url=f"{text_url}/v1", api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def chat_url(tiny_model_dir: Path) -> Iterator[str]:
    with running(create_app(str(tiny_model_dir))) as url:
        yield url


@pytest.fixture()
def chat(chat_url: str) -> Any:
    return openai.OpenAI(base_url=f"{chat_url}/v1", api_key="x", max_retries=0)


def _post(url: str, body: Any) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def _alone(client: Any, prompts: list[str], **settings: Any) -> list[Any]:
    return [client.completions.create(model=TEXT, prompt=p, **settings) for p in prompts]


# -- a list of prompts ----------------------------------------------------------------------------------


def test_completions_continue_the_prompt_as_raw_text(client: Any, tiny_ort: Path) -> None:
    """No chat template (spec 4): a hand-written chat prompt is continued as is, as OpenAI's completions do."""
    chatml = "<|im_start|>system\nYou are a stand-up comedian.<|im_end|>\n<|im_start|>user\nTell me a joke<|im_end|>\n"
    for prompt in (PROMPTS[0], chatml + "<|im_start|>assistant\n"):
        expected, _ = raw_onnx_greedy_text(tiny_ort, prompt, 12)
        r = client.completions.create(model=TEXT, prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == expected
        streamed = client.completions.create(model=TEXT, prompt=prompt, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_list_prompt_answers_each_prompt_as_if_alone(client: Any) -> None:
    alone = _alone(client, PROMPTS, max_tokens=12)
    r = client.completions.create(model=TEXT, prompt=PROMPTS, max_tokens=12)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [a.choices[0].text for a in alone]
    assert [c.finish_reason for c in r.choices] == [a.choices[0].finish_reason for a in alone]
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert getattr(r.usage, field) == sum(getattr(a.usage, field) for a in alone)


def test_list_prompt_streams_interleaved_chunks_with_their_indexes(client: Any, text_url: str) -> None:
    whole = client.completions.create(model=TEXT, prompt=PROMPTS, max_tokens=10)
    chunks = list(
        client.completions.create(
            model=TEXT, prompt=PROMPTS, max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({c.id for c in chunks}) == 1
    texts = {i: "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(4)}
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    finishes = [
        (c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert sorted(finishes) == [(c.index, c.finish_reason) for c in whole.choices]
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1, 2, 3}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    # the raw stream ends with exactly one [DONE], after the last chunk
    status, raw = _post(f"{text_url}/v1/completions", {"prompt": PROMPTS, "max_tokens": 5, "stream": True})
    assert status == 200
    lines = [line for line in raw.decode().split("\n\n") if line]
    assert lines.count("data: [DONE]") == 1 and lines[-1] == "data: [DONE]"


def test_async_client_list_prompts_beside_single_prompts(client: Any, text_url: str) -> None:
    alone = [a.choices[0].text for a in _alone(client, PROMPTS, max_tokens=8)]

    async def main() -> tuple[list[str], list[str], list[str]]:
        aclient = openai.AsyncOpenAI(base_url=f"{text_url}/v1", api_key="x", max_retries=0)

        async def streamed() -> list[str]:
            stream = await aclient.completions.create(model=TEXT, prompt=PROMPTS[::-1], max_tokens=8, stream=True)
            parts = ["", "", "", ""]
            async for c in stream:
                parts[c.choices[0].index] += c.choices[0].text
            return parts

        async def listed() -> list[str]:
            r = await aclient.completions.create(model=TEXT, prompt=PROMPTS, max_tokens=8)
            return [c.text for c in r.choices]

        async def single(p: str) -> str:
            r = await aclient.completions.create(model=TEXT, prompt=p, max_tokens=8)
            return str(r.choices[0].text)

        got = await asyncio.gather(listed(), streamed(), *(single(p) for p in PROMPTS))
        return got[0], got[1], list(got[2:])  # type: ignore[arg-type]

    listed, streamed, singles = asyncio.run(main())
    assert listed == alone
    assert streamed == alone[::-1]
    assert singles == alone


def test_the_prompts_of_one_request_share_a_batch(text_app: Any, text_url: str, client: Any) -> None:
    before = _metrics(text_url)
    gate = hold_worker(text_app.server.scheduler)  # the prompts queue together behind a job

    async def main() -> Any:
        aclient = openai.AsyncOpenAI(base_url=f"{text_url}/v1", api_key="x", max_retries=0)
        waiting = asyncio.ensure_future(aclient.completions.create(model=TEXT, prompt=PROMPTS, max_tokens=3))
        while text_app.server.metrics.queue_depth._value.get() < len(PROMPTS):
            await asyncio.sleep(0.01)
        gate.set()
        return await waiting

    try:
        r = asyncio.run(main())
    finally:
        gate.set()
    assert len(r.choices) == 4
    after = _metrics(text_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("flavorkit_batch_size_count") == 1, "four prompts, one generate call"
    assert delta("flavorkit_batch_size_sum") == 4


def test_one_prompt_too_long_fails_the_whole_request_and_cancels_the_rest(client: Any, text_url: str) -> None:
    before = _metrics(text_url)
    prompts = [PROMPTS[0], PROMPTS[1], TOO_LONG, PROMPTS[2]]
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT, prompt=prompts, max_tokens=200)
    assert err.value.status_code == 400 and err.value.param == "prompt[2]"
    assert "context is 256 tokens" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:  # a stream is refused before its first byte
        client.completions.create(model=TEXT, prompt=prompts, max_tokens=200, stream=True)
    assert err.value.param == "prompt[2]"
    # a prompt that fits but leaves no room for max_tokens names the setting, and which prompt
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT, prompt=[PROMPTS[0], "word " * 60], max_tokens=100)
    assert err.value.param == "max_tokens" and "prompt[1]" in err.value.message
    after = _metrics(text_url)
    cancelled = metric(after, "flavorkit_cancelled_requests_total", reason="error") - metric(
        before, "flavorkit_cancelled_requests_total", reason="error"
    )
    assert cancelled >= 3, "the admitted prompts of the failed requests were cancelled"
    assert client.completions.create(model=TEXT, prompt=PROMPTS, max_tokens=2).usage.completion_tokens <= 8


def test_prompts_spread_over_several_batches(small: tuple[Any, str], client: Any) -> None:
    _, url = small
    by2 = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    alone = [a.choices[0].text for a in _alone(client, PROMPTS[:3], max_tokens=10)]
    assert [c.text for c in by2.completions.create(model=TEXT, prompt=PROMPTS[:3], max_tokens=10).choices] == alone
    parts = ["", "", ""]
    for c in by2.completions.create(model=TEXT, prompt=PROMPTS[:3], max_tokens=10, stream=True):
        parts[c.choices[0].index] += c.choices[0].text
    assert parts == alone
    # the third prompt runs in the second batch: the stream still fails whole, before its first byte
    with pytest.raises(openai.BadRequestError) as err:
        by2.completions.create(model=TEXT, prompt=[PROMPTS[0], PROMPTS[1], TOO_LONG], max_tokens=50, stream=True)
    assert err.value.param == "prompt[2]"


def test_a_list_that_does_not_fit_the_queue_leaves_nothing_queued(small: tuple[Any, str]) -> None:
    app, url = small
    depth = app.server.metrics.queue_depth._value
    gate = hold_worker(app.server.scheduler)

    async def main() -> Any:
        aclient = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        waiting = asyncio.ensure_future(aclient.completions.create(model=TEXT, prompt=PROMPTS[0], max_tokens=3))
        while depth.get() < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as err:  # 2 of the 3 prompts fit, so none is queued
            await aclient.completions.create(model=TEXT, prompt=PROMPTS[:3], max_tokens=3)
        assert err.value.code == "queue_full" and err.value.response.headers["retry-after"] == "1"
        assert depth.get() == 1
        gate.set()
        return await waiting

    try:
        waited = asyncio.run(main())
    finally:
        gate.set()
    assert waited.usage.completion_tokens <= 3


@pytest.mark.parametrize(
    ("prompt", "param", "code"),
    [
        ([], "prompt", "invalid_value"),
        ("", "prompt", "invalid_value"),
        (["a", "b", "c", ""], "prompt[3]", "invalid_value"),
        (["a", None], "prompt[1]", "invalid_value"),
        (["a", {"text": "b"}], "prompt[1]", "invalid_value"),
        ([1, 2, 3], "prompt", "unsupported_value"),
        ([[1, 2], [3]], "prompt", "unsupported_value"),
        (["a", [1, 2]], "prompt", "unsupported_value"),
        (7, "prompt", "invalid_value"),
        ({"a": 1}, "prompt", "invalid_value"),
    ],
)
def test_bad_prompts_are_a_400_naming_the_element(text_url: str, prompt: Any, param: str, code: str) -> None:
    status, raw = _post(f"{text_url}/v1/completions", {"prompt": prompt, "max_tokens": 2})
    assert status == 400
    error = json.loads(raw)["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    if code == "unsupported_value":
        assert "a non-empty string or a non-empty list of non-empty strings" in error["message"]


def test_missing_prompt_and_too_many_prompts(text_app: Any, text_url: str) -> None:
    status, raw = _post(f"{text_url}/v1/completions", {"max_tokens": 2})
    assert status == 400 and json.loads(raw)["error"]["param"] == "prompt"
    many = ["a"] * (text_app.server.scheduler.max_queue + 1)
    status, raw = _post(f"{text_url}/v1/completions", {"prompt": many, "max_tokens": 2})
    error = json.loads(raw)["error"]
    assert status == 400 and error["param"] == "prompt"
    assert f"at most {text_app.server.scheduler.max_queue}" in error["message"]


def test_settings_errors_in_a_list_request_name_the_setting(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT, prompt=PROMPTS, temperature=5)
    assert err.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT, prompt=PROMPTS, n=2)
    assert err.value.param == "n"


# -- the OpenAI fields of both routes ---------------------------------------------------------------------


def test_completions_stop_seed_user_and_max_completion_tokens(client: Any) -> None:
    base = client.completions.create(model=TEXT, prompt=PROMPTS[0], max_tokens=12).choices[0].text
    assert len(base) > 2
    stop = base[1:3]
    cut = client.completions.create(model=TEXT, prompt=PROMPTS[0], max_tokens=12, stop=stop, user="u-1")
    assert cut.choices[0].text == base[: base.index(stop)] and cut.choices[0].finish_reason == "stop"
    listed = client.completions.create(model=TEXT, prompt=[PROMPTS[0]] * 2, max_tokens=12, stop=[stop])
    assert [c.text for c in listed.choices] == [cut.choices[0].text] * 2
    sampled = [
        client.completions.create(model=TEXT, prompt=PROMPTS, temperature=1.0, seed=11, max_tokens=8) for _ in range(2)
    ]
    assert [c.text for c in sampled[0].choices] == [c.text for c in sampled[1].choices]
    r = client.completions.create(model=TEXT, prompt=PROMPTS, extra_body={"max_completion_tokens": 3})
    assert all(c.finish_reason == "length" for c in r.choices) and r.usage.completion_tokens == 12


def test_max_completion_tokens_is_named_in_errors_found_by_the_model(client: Any, chat: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=TEXT, prompt="word " * 60, extra_body={"max_completion_tokens": 100})
    assert err.value.param == "max_completion_tokens"
    long = [{"role": "user", "content": "word " * 60}]
    with pytest.raises(openai.BadRequestError) as err:
        chat.chat.completions.create(model=CHAT, messages=long, max_completion_tokens=100)
    assert err.value.param == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as err:
        chat.chat.completions.create(model=CHAT, messages=long, max_completion_tokens=100, stream=True)
    assert err.value.param == "max_completion_tokens"


def test_stream_options_fields(chat: Any, chat_url: str) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    chunks = list(
        chat.chat.completions.create(
            model=CHAT, messages=messages, max_tokens=3, stream=True, stream_options={"include_usage": False}
        )
    )
    assert all(c.usage is None and c.choices for c in chunks)
    status, raw = _post(
        f"{chat_url}/v1/chat/completions",
        {"messages": messages, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": None}},
    )
    assert status == 200 and raw.decode().rstrip().endswith("data: [DONE]")
    for options, param in (({"include_usage": "yes"}, "stream_options.include_usage"), ({"x": 1}, "stream_options.x")):
        status, raw = _post(
            f"{chat_url}/v1/chat/completions",
            {"messages": messages, "stream": True, "stream_options": options},
        )
        assert status == 400 and json.loads(raw)["error"]["param"] == param
    status, raw = _post(
        f"{chat_url}/v1/chat/completions", {"messages": messages, "stream_options": {"include_usage": True}}
    )
    assert status == 400 and json.loads(raw)["error"]["param"] == "stream_options"


def test_chat_stop_and_user(chat: Any) -> None:
    messages = [{"role": "user", "content": "Tell me a story."}]
    base = chat.chat.completions.create(model=CHAT, messages=messages, max_tokens=12).choices[0].message.content
    assert base and len(base) > 2
    stop = base[1:3]
    cut = chat.chat.completions.create(model=CHAT, messages=messages, max_tokens=12, stop=[stop, "zzzz"], user="u-2")
    assert cut.choices[0].message.content == base[: base.index(stop)] and cut.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as err:
        chat.chat.completions.create(model=CHAT, messages=messages, user=5)  # type: ignore[arg-type]
    assert err.value.param == "user"


def test_completions_apply_penalties_and_logit_bias(client: Any, text_url: str, tiny_ort: Path) -> None:
    from tokenizers import Tokenizer

    plain = client.completions.create(model=TEXT, prompt="Hello", max_tokens=4).choices[0].text
    neutral = client.completions.create(
        model=TEXT, prompt="Hello", max_tokens=4, presence_penalty=0, frequency_penalty=0, logit_bias={}, user="u"
    )
    assert neutral.choices[0].text == plain
    # A bias of +100 makes one token win every step: the answer is that token four times.
    token = 42
    forced = client.completions.create(model=TEXT, prompt="Hello", max_tokens=4, logit_bias={str(token): 100})
    assert forced.choices[0].text == Tokenizer.from_file(str(tiny_ort / "tokenizer.json")).decode([token] * 4)
    assert forced.usage is not None and forced.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=TEXT, prompt="x", logit_bias={"x": 5})
    assert (bad.value.status_code, bad.value.param) == (400, "logit_bias.x")
    status, raw = _post(f"{text_url}/v1/completions", {"prompt": "x", "tools": [], "store": False})
    err = json.loads(raw)["error"]
    assert (status, err["param"], err["code"]) == (400, "tools", "unknown_field")
    assert err["message"].startswith("unsupported fields 'tools', 'store'; supported fields: prompt, ")


def test_completions_logprobs_whole_streamed_and_per_prompt(client: Any) -> None:
    # A prompt whose greedy tokens are whole characters: a token holding part of a UTF-8 character has no
    # text of its own, so the tokens would not join to the answer ("Hello" continues that way, raw).
    whole = client.completions.create(model=TEXT, prompt=PROMPTS[1], max_tokens=5, temperature=0, logprobs=2)
    choice = whole.choices[0]
    lp = choice.logprobs
    assert whole.usage is not None and len(lp.tokens) == whole.usage.completion_tokens == 5
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert logprob <= 0
        assert top[token] == logprob  # the picked token is always listed
        assert len(top) <= 3  # two alternatives, plus the picked token when it is not one of them
        assert max(top.values()) == logprob  # greedy: the picked token is the likeliest
    plain = client.completions.create(model=TEXT, prompt=PROMPTS[1], max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == choice.text
    only_picked = client.completions.create(model=TEXT, prompt=PROMPTS[1], max_tokens=5, temperature=0, logprobs=0)
    assert only_picked.choices[0].logprobs.top_logprobs == [
        {t: v} for t, v in zip(lp.tokens, lp.token_logprobs, strict=True)
    ]

    chunks = list(
        client.completions.create(model=TEXT, prompt=PROMPTS[1], max_tokens=5, temperature=0, logprobs=2, stream=True)
    )
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [v for s in streamed for v in s.token_logprobs] == lp.token_logprobs
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset  # offsets run on across chunks

    listed = client.completions.create(
        model=TEXT, prompt=[PROMPTS[1], PROMPTS[0]], max_tokens=2, temperature=0, logprobs=1
    )
    assert listed.choices[0].logprobs.tokens == lp.tokens[:2]  # the first prompt's first two tokens
    assert all("".join(c.logprobs.tokens) == c.text for c in listed.choices)


@pytest.mark.parametrize("value", [6, -1, True, 1.5, "2"])
def test_completions_logprobs_out_of_range_is_a_400(text_url: str, value: Any) -> None:
    status, raw = _post(f"{text_url}/v1/completions", {"prompt": "x", "logprobs": value})
    err = json.loads(raw)["error"]
    assert (status, err["param"], err["code"]) == (400, "logprobs", "invalid_value")
    assert err["message"] == f"'logprobs' must be an integer from 0 to 5, got {value!r}"


def test_completions_logprobs_on_a_backend_without_guided_decoding_names_the_backend() -> None:
    from flavorkit.serve import openai_api as oa
    from flavorkit.serve.errors import APIError

    assert oa.parse_completion({"prompt": "x", "logprobs": None}, TEXT, backend="plain").text_logprobs is None
    assert oa.parse_completion({"prompt": "x", "logprobs": False}, TEXT, backend="plain").text_logprobs is None
    with pytest.raises(APIError) as exc:
        oa.parse_completion({"prompt": "x", "logprobs": 1}, TEXT, backend="plain", guided=False)
    assert (exc.value.status, exc.value.param) == (400, "logprobs")
    assert "'logprobs' is not supported by backend 'plain'" in str(exc.value)
    assert oa.parse_completion({"prompt": "x", "logprobs": 3}, TEXT, backend="onnx-cpu", guided=True).text_logprobs == 3
