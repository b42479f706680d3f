"""``flavorkit serve`` end to end: a real uvicorn server on loopback, the official ``openai`` client, curl."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_fixtures import metric, running

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

import flavorkit  # noqa: E402
from flavorkit.serve import create_app, default_model_name  # noqa: E402

NAME = "tiny-chat"


@pytest.fixture(scope="module")
def app(tiny_model_dir: Path) -> Any:
    return create_app(str(tiny_model_dir))


@pytest.fixture(scope="module")
def base(app: Any) -> Iterator[str]:
    with running(app) as url:
        yield url


@pytest.fixture()
def client(base: str) -> Any:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def _http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, hdrs, raw = _http("POST", url, data, {"Content-Type": "application/json", **(headers or {})})
    return status, hdrs, json.loads(raw)


def _messages(text: str = "Hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- the happy path with the openai client ------------------------------------------------------------


def test_models_lists_the_served_model(client: Any) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].owned_by == "flavorkit"
    assert client.models.retrieve(NAME).id == NAME


def test_chat_completion_has_openai_shape(client: Any) -> None:
    r = client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=7, user="u1")
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == NAME
    assert len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_answer_joined_equals_non_streamed(client: Any) -> None:
    settings: dict[str, Any] = {"model": NAME, "messages": _messages("Tell me about batching."), "max_tokens": 40}
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage(client: Any) -> None:
    chunks = list(client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=3, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_n_stop_seed_and_max_completion_tokens(client: Any) -> None:
    r = client.chat.completions.create(
        model=NAME, messages=_messages(), n=3, temperature=0.9, seed=7, max_completion_tokens=6, stop=["\n"]
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens <= 18
    again = client.chat.completions.create(
        model=NAME, messages=_messages(), n=3, temperature=0.9, seed=7, max_completion_tokens=6, stop=["\n"]
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    stream = list(client.chat.completions.create(model=NAME, messages=_messages(), n=2, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in stream} == {0, 1}


def test_async_client_concurrent_requests_each_get_their_own_answer(base: str, client: Any) -> None:
    prompts = [f"Question {i}: {'why ' * i}?" for i in range(8)]
    alone = [
        client.chat.completions.create(model=NAME, messages=_messages(p), max_tokens=5 + i).choices[0].message.content
        for i, p in enumerate(prompts)
    ]

    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

        async def one(i: int, p: str) -> str:
            if i % 2:
                stream = await aclient.chat.completions.create(
                    model=NAME, messages=_messages(p), max_tokens=5 + i, stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream])
            r = await aclient.chat.completions.create(model=NAME, messages=_messages(p), max_tokens=5 + i)
            return str(r.choices[0].message.content)

        try:
            return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        finally:
            await aclient.close()

    assert asyncio.run(main()) == alone


def test_curl_streams_server_sent_events(base: str) -> None:
    body = json.dumps({"model": NAME, "messages": _messages(), "max_tokens": 4, "stream": True})
    out = subprocess.run(
        ["curl", "-sSN", f"{base}/v1/chat/completions", "-H", "Content-Type: application/json", "-d", body],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line for line in out.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# -- bad input: exact status and error fields, and the server keeps answering ---------------------


def _error(status: int, body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


BAD_REQUESTS = [
    ({"messages": _messages(), "best_of": 1}, 400, "best_of", "unknown_field"),
    ({"messages": _messages(), "top_logprobs": 1}, 400, "top_logprobs", "invalid_value"),
    ({"messages": _messages(), "modalities": ["audio"]}, 400, "modalities", "unsupported_parameter"),
    ({"messages": _messages(), "tool_choice": "required"}, 400, "tool_choice", "invalid_value"),
    ({"messages": _messages(), "temperature": 3}, 400, "temperature", "invalid_value"),
    ({"messages": _messages(), "top_p": "high"}, 400, "top_p", "invalid_value"),
    ({"messages": _messages(), "n": 0}, 400, "n", "invalid_value"),
    ({"messages": _messages(), "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    ({"messages": _messages(), "seed": -1}, 400, "seed", "invalid_value"),
    ({"messages": []}, 400, "messages", "invalid_value"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content", "invalid_value"),
    ({"max_tokens": 3}, 400, "messages", "invalid_value"),
    ({"messages": _messages(), "max_tokens": 100_000}, 400, "max_tokens", "invalid_value"),
    ({"messages": _messages(), "max_completion_tokens": 0}, 400, "max_completion_tokens", "invalid_value"),
    (
        {"messages": _messages(), "max_tokens": 3, "max_completion_tokens": 4},
        400,
        "max_completion_tokens",
        "invalid_value",
    ),
    ({"messages": _messages(), "stream": "yes"}, 400, "stream", "invalid_value"),
    ({"messages": _messages(), "stream_options": {"include_usage": True}}, 400, "stream_options", "invalid_value"),
    (
        {"messages": _messages(), "stream": True, "stream_options": {"x": 1}},
        400,
        "stream_options.x",
        "unknown_field",
    ),
    ({"messages": _messages(), "user": 5}, 400, "user", "invalid_value"),
    ({"messages": _messages(), "model": "gpt-4o"}, 404, "model", "model_not_found"),
    ([1, 2], 400, None, "invalid_body"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"), BAD_REQUESTS, ids=[str(b[2]) for b in BAD_REQUESTS])
def test_bad_chat_request_gets_its_status_and_param(
    base: str, body: Any, status: int, param: str | None, code: str
) -> None:
    got, _, answer = _post(f"{base}/v1/chat/completions", body)
    assert got == status
    err = _error(got, answer)
    assert (err["param"], err["code"]) == (param, code)
    assert err["type"] == "invalid_request_error"
    if param:
        assert param.split(".")[0].split("[")[0] in err["message"]


def test_openai_client_raises_the_matching_error_classes(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=_messages(), extra_body={"best_of": 2})
    assert bad.value.param == "best_of" and bad.value.code == "unknown_field"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=_messages())
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as wrong_route:
        client.completions.create(model=NAME, prompt="Hi")
    assert wrong_route.value.code == "unsupported_endpoint"


def test_malformed_json_and_unknown_routes(base: str) -> None:
    status, _, body = _post(f"{base}/v1/chat/completions", b'{"messages": [')
    assert status == 400 and _error(status, body)["code"] == "invalid_json"
    status, _, body = _post(f"{base}/v1/chat/completions", b"\xff\xfe")
    assert status == 400 and _error(status, body)["code"] == "invalid_json"
    status, _, body = _post(f"{base}/v1/chat/completions", b"[" * 100_000)
    assert status == 400 and _error(status, body)["code"] == "invalid_json"
    status, _, raw = _http("GET", f"{base}/v1/nothing")
    assert status == 404 and _error(status, json.loads(raw))["code"] == "not_found"
    status, _, raw = _http("GET", f"{base}/v1/chat/completions")
    assert status == 405 and _error(status, json.loads(raw))["code"] == "method_not_allowed"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413(base: str, tmp_path: Path, chunked: bool) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"messages": _messages("x" * (5 * 1024 * 1024))}))
    cmd = ["curl", "-sS", f"{base}/v1/chat/completions", "-H", "Content-Type: application/json"]
    if chunked:
        cmd += ["-H", "Transfer-Encoding: chunked"]
    cmd += ["--data-binary", f"@{big}", "-w", "\n%{http_code}"]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    body, status = out.rsplit("\n", 1)
    assert status == "413"
    assert _error(413, json.loads(body))["code"] == "request_too_large"


def test_the_server_still_answers_after_bad_input(client: Any, base: str) -> None:
    for body, *_ in BAD_REQUESTS:
        _post(f"{base}/v1/chat/completions", body)
    r = client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=2)
    assert r.usage.completion_tokens <= 2


# -- MLflow's scoring routes ----------------------------------------------------------------------


def test_mlflow_routes(base: str) -> None:
    assert _http("GET", f"{base}/ping")[0] == 200
    assert _http("GET", f"{base}/health")[0] == 200
    import mlflow

    status, _, body = _http("GET", f"{base}/version")
    assert status == 200
    assert json.loads(body) == {
        "flavorkit": flavorkit.__version__,
        "mlflow": mlflow.__version__,
        "backend": "onnx-cpu",
        "capabilities": [
            "batch_invariant",
            "batching",
            "continuous_batching",
            "guided_decoding",
            "sampling",
            "seeded_sampling",
            "streaming",
        ],
        "batch_invariant": True,  # batching='exact', the default: the server says so
    }


@pytest.mark.parametrize(
    ("body", "wrapped"),
    [
        ({"messages": _messages(), "max_tokens": 3}, False),
        ({"dataframe_records": [{"messages": _messages(), "max_tokens": 3}]}, True),
        (
            {
                "dataframe_split": {
                    "columns": ["messages", "max_tokens"],
                    "data": [[_messages(), 3], [_messages("x"), 2]],
                }
            },
            True,
        ),
        ({"inputs": [{"messages": _messages(), "max_tokens": 3}]}, True),
        ({"inputs": {"messages": _messages(), "max_tokens": 3}}, True),
    ],
    ids=["unified", "dataframe_records", "dataframe_split", "inputs-records", "inputs-dict"],
)
def test_invocations_accepts_every_mlflow_body_format(base: str, body: Any, wrapped: bool) -> None:
    status, _, answer = _post(f"{base}/invocations", body)
    assert status == 200, answer
    predictions = answer["predictions"] if wrapped else answer
    assert isinstance(predictions, list) and predictions
    assert all(p["object"] == "chat.completion" and p["usage"]["completion_tokens"] <= 3 for p in predictions)


def test_invocations_parses_instances_exactly_as_mlflow(base: str) -> None:
    # MLflow's scoring server turns `instances` records into columns, which a chat signature refuses;
    # flavorkit runs MLflow's own parser, so it answers the same 400 (as `mlflow models serve` does).
    status, _, answer = _post(f"{base}/invocations", {"instances": [{"messages": _messages(), "max_tokens": 3}]})
    assert status == 400
    assert answer["error_class"] == "SCHEMA_ENFORCEMENT_FAILED"


def test_invocations_errors_keep_mlflow_shape(base: str) -> None:
    status, _, answer = _post(f"{base}/invocations", {"messages": _messages(), "top_p": 7})
    assert status == 400
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE" and "top_p" in answer["message"]
    status, _, answer = _post(f"{base}/invocations", b"{not json")
    assert status == 400 and answer["error_code"] == "BAD_REQUEST"


# -- OpenAI's default request forms (issue 18): the same rules as pyfunc ------------------------------

_IGNORED: dict[str, Any] = {
    "store": False,
    "metadata": {"session": "abc"},
    "service_tier": "auto",
    "user": "user-1",
    "parallel_tool_calls": True,
    "prediction": {"type": "content", "content": "a guess"},
    "modalities": ["text"],
}
_NEUTRAL: dict[str, Any] = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "tools": [],
    "logprobs": False,
    "top_logprobs": 0,
    "tool_choice": "none",
    "response_format": {"type": "text"},
}
_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _system_answer(client: Any) -> str:
    system = [{"role": "system", "content": "Be brief."}, *_messages("Hello")]
    return str(client.chat.completions.create(model=NAME, messages=system, max_tokens=4).choices[0].message.content)


def test_developer_role_and_text_parts_are_read_as_a_system_string(client: Any) -> None:
    messages: Any = [
        {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    ]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=4)
    assert r.choices[0].message.content == _system_answer(client)


@pytest.mark.parametrize(("name", "value"), [*_IGNORED.items(), *_NEUTRAL.items()])
def test_each_ignored_or_neutral_field_is_accepted(client: Any, name: str, value: Any) -> None:
    r = client.chat.completions.create(model=NAME, messages=_messages("Hello"), max_tokens=4, extra_body={name: value})
    plain = client.chat.completions.create(model=NAME, messages=_messages("Hello"), max_tokens=4)
    assert r.choices[0].message.content == plain.choices[0].message.content


def test_the_openai_clients_typed_arguments_are_accepted(client: Any) -> None:
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "developer", "content": "Be brief."}, *_messages("Hello")],
        max_tokens=4,
        store=False,
        metadata={"k": "v"},
        user="u",
        presence_penalty=0,
        frequency_penalty=0,
        logit_bias={},
        logprobs=False,
        tool_choice="none",
        response_format={"type": "text"},
        modalities=["text"],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert "".join(c.choices[0].delta.content or "" for c in r if c.choices) == _system_answer(client)


def test_an_image_part_is_a_400_naming_the_part(client: Any) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, image]
    messages: Any = [*_messages("x"), {"role": "user", "content": parts}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=NAME, messages=messages)
    assert bad.value.status_code == 400
    assert (bad.value.param, bad.value.code) == ("messages[1].content[2].type", "invalid_value")
    assert bad.value.body["message"] == (  # type: ignore[index]
        "invalid request: field 'messages[1].content[2].type': content part type 'image_url' is not supported: "
        "this model reads text only (allowed: 'text')"
    )


def test_an_unsupported_field_gets_a_400_naming_it_and_the_backend(base: str, client: Any) -> None:
    body = {"messages": _messages(), "modalities": ["text", "audio"], "logprobs": True, "tools": [_TOOL]}
    status, _, answer = _post(f"{base}/v1/chat/completions", body)
    assert status == 400
    assert _error(status, answer) == {
        "message": "invalid request: field 'modalities': 'modalities' is not supported by backend 'onnx-cpu' "
        "(allowed: modalities: ['text'] or absent)",
        "type": "invalid_request_error",
        "param": "modalities",
        "code": "unsupported_parameter",
    }


def test_logprobs_with_the_openai_client_whole_and_streamed(client: Any) -> None:
    whole = client.chat.completions.create(
        model=NAME, messages=_messages(), max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = whole.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == whole.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob  # greedy
    stream = client.chat.completions.create(
        model=NAME, messages=_messages(), max_tokens=5, temperature=0, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [e for chunk in stream for c in chunk.choices if c.logprobs for e in c.logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


def test_unknown_fields_are_named_all_at_once(base: str) -> None:
    status, _, answer = _post(f"{base}/v1/chat/completions", {"messages": _messages(), "best_of": 2, "echo": True})
    err = _error(status, answer)
    assert (status, err["param"], err["code"]) == (400, "best_of", "unknown_field")
    assert err["message"].startswith("unsupported fields 'best_of', 'echo'; supported fields: messages, ")


def test_garbage_in_an_ignored_field_is_a_400(base: str) -> None:
    status, _, answer = _post(f"{base}/v1/chat/completions", {"messages": _messages(), "metadata": {"a": 1}})
    err = _error(status, answer)
    assert (status, err["param"], err["code"]) == (400, "metadata.a", "invalid_value")
    assert err["message"] == (
        "invalid request: field 'metadata.a': Input should be a valid string; got 1 "
        "(allowed: an object whose values are strings)"
    )


def test_invocations_follow_the_same_rules(base: str) -> None:
    request_ = {"messages": [{"role": "developer", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2}
    status, _, answer = _post(f"{base}/invocations", {**request_, **_IGNORED, **_NEUTRAL})
    assert status == 200, answer
    status, _, answer = _post(f"{base}/invocations", {**request_, "tools": [_TOOL], "top_logprobs": 3})
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert (
        "invalid request: field 'top_logprobs': needs logprobs: true "
        "(allowed: an integer from 0 to 20, with logprobs: true)"
    ) in answer["message"]


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_latency(client: Any, base: str) -> None:
    before = _http("GET", f"{base}/metrics")[2].decode()
    r = client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=5)
    _post(f"{base}/v1/chat/completions", {"messages": _messages(), "temperature": 9})
    after = _http("GET", f"{base}/metrics")[2].decode()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("flavorkit_requests_total", route="/v1/chat/completions", status="200") == 1
    assert delta("flavorkit_requests_total", route="/v1/chat/completions", status="400") == 1
    assert delta("flavorkit_prompt_tokens_total") == r.usage.prompt_tokens
    assert delta("flavorkit_completion_tokens_total") == r.usage.completion_tokens
    assert delta("flavorkit_time_to_first_token_seconds_count") == 1
    assert delta("flavorkit_batch_size_count") == 1
    assert "flavorkit_inter_token_latency_seconds_bucket" in after
    assert metric(after, "flavorkit_queue_depth") == 0
    assert metric(after, "flavorkit_active_requests") == 0


class _SlowWrites:
    """ASGI wrapper: every response body message reaches the server ``delay`` seconds late.

    A token produced by the worker is then written to the client at least ``delay`` later, so a
    time to first token taken where the token is produced stays below it, and one taken where the
    answer is written does not. Lifespan events stay here: the wrapped app's scheduler is shared.
    """

    def __init__(self, app: Any, delay: float) -> None:
        self.app, self.delay = app, delay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        async def slow_send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                await asyncio.sleep(self.delay)
            await send(message)

        await self.app(scope, receive, slow_send)


def test_time_to_first_token_is_observed_when_the_answer_is_written(app: Any) -> None:
    delay = 0.25
    with running(_SlowWrites(app, delay)) as slow:
        client = openai.OpenAI(base_url=f"{slow}/v1", api_key="unused", max_retries=0)

        def ttft() -> tuple[float, float]:
            text = _http("GET", f"{slow}/metrics")[2].decode()
            return (
                metric(text, "flavorkit_time_to_first_token_seconds_count"),
                metric(text, "flavorkit_time_to_first_token_seconds_sum"),
            )

        count, total = ttft()
        chunks = list(client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=4, stream=True))
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        streamed = ttft()
        client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=4)
        whole = ttft()
    # once per request; a stream's first token follows its (delayed) opening chunk, and is delayed itself
    assert streamed[0] - count == 1 and streamed[1] - total >= 2 * delay
    assert whole[0] - streamed[0] == 1 and whole[1] - streamed[1] >= delay


def test_default_model_name_from_the_uri() -> None:
    assert default_model_name("models:/smollm2-chat@champion") == "smollm2-chat"
    assert default_model_name("models:/smollm2-chat/3") == "smollm2-chat"
    assert default_model_name("runs:/abc123/model") == "model"
    assert default_model_name("/srv/models/tiny-chat/") == "tiny-chat"
    assert default_model_name("file:///srv/models/tiny") == "tiny"


def test_a_stream_refused_by_the_model_is_a_plain_400(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=NAME, messages=_messages(), max_tokens=100_000, stream=True)
    assert err.value.param == "max_tokens"
    assert "context" in err.value.message


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_FIELDS = ["messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop"]
_FIELDS += ["seed", "stream", "stream_options", "user", "top_k", "tools", "logprobs", "tool_choice", "response_format"]
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", 3]), "content": st.text(max_size=30) | _JSON}
)
_VALUES = {
    "messages": st.lists(_MESSAGE, max_size=3) | _JSON,
    "max_tokens": st.integers(-5, 300) | _JSON,
    "n": st.integers(-1, 20) | _JSON,
    "temperature": st.floats(-1, 3) | _JSON,
    "stream": st.booleans() | _JSON,
    "model": st.sampled_from([NAME, "other"]) | _JSON,
}


@st.composite
def _bodies(draw: st.DrawFn) -> Any:
    keys = draw(st.lists(st.sampled_from(_FIELDS), unique=True, max_size=6))
    body = {k: draw(_VALUES.get(k, _JSON)) for k in keys}
    if draw(st.booleans()):
        body.setdefault("max_tokens", 4)
    return body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_bodies())
def test_no_body_gets_a_5xx(base: str, body: Any) -> None:
    status, _, raw = _http(
        "POST", f"{base}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    assert status in (200, 400, 404), (status, raw[:500])
    if status != 200:
        err = json.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
