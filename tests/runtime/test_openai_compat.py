"""OpenAI request forms that need no grammar (issue 18): the core's rules, and the same through pyfunc.

The HTTP side of the same rules is in tests/serve/test_openai_server.py and test_serve_completions.py.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from flavorkit.errors import InvalidRequest
from flavorkit.schema import (
    CHAT_COMPAT_FIELDS,
    GUIDED_FIELDS,
    IGNORED_FIELDS,
    NEUTRAL_VALUES,
    TEXT_COMPAT_FIELDS,
    ChatRequest,
    TextRequest,
    UnsupportedFields,
    parse_request,
)
from flavorkit.signatures import CHAT, TEXT, standard_signature
from helpers import chat

OK = [{"role": "user", "content": "hi"}]

#: Each field a client may send that changes nothing for a local model, with a typical value.
IGNORED = {
    "store": False,
    "metadata": {"session": "abc", "team": "x"},
    "service_tier": "auto",
    "user": "user-1",
    "parallel_tool_calls": True,
    "prediction": {"type": "content", "content": "a guess"},
    "modalities": ["text"],
}
#: Each not-yet-supported field at the neutral value clients send by default.
NEUTRAL = {
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
    "tools": [],
    "logprobs": False,
    "top_logprobs": 0,
    "tool_choice": "none",
    "response_format": {"type": "text"},
}
#: The same fields at a value that asks for something (only a backend with guided decoding honours some).
NON_NEUTRAL = {
    "presence_penalty": 0.5,
    "frequency_penalty": -1,
    "logit_bias": {"50256": -100},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "logprobs": True,
    "top_logprobs": 2,
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "modalities": ["text", "audio"],
}


def _error(request_: Any, task: str = CHAT, backend: str | None = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(request_, task, backend)
    return exc.value


def test_the_field_lists_agree() -> None:
    assert set(IGNORED) | set(NEUTRAL) | set(NON_NEUTRAL) == set(CHAT_COMPAT_FIELDS)
    assert set(CHAT_COMPAT_FIELDS) == set(IGNORED_FIELDS) | set(NEUTRAL_VALUES)
    assert set(TEXT_COMPAT_FIELDS) == {"user", "presence_penalty", "frequency_penalty", "logit_bias"}
    # The signatures list every field the core accepts, so MLflow neither drops nor rejects them.
    for task, model in ((CHAT, ChatRequest), (TEXT, TextRequest)):
        signature = standard_signature(task)
        assert signature is not None
        assert set(signature.inputs.input_names()) == set(model.model_fields) - ({"n"} if task == TEXT else set())


def test_the_developer_role_is_read_as_system() -> None:
    req = parse_request({"messages": [{"role": "developer", "content": "Be brief."}, *OK]}, CHAT)
    assert isinstance(req, ChatRequest)
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "hi")]


def test_text_parts_are_joined_without_a_separator() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}, {"type": "text", "text": ""}]
    req = parse_request({"messages": [{"role": "user", "content": parts}]}, CHAT)
    assert isinstance(req, ChatRequest) and req.messages[0].content == "Hello, world"


@pytest.mark.parametrize(
    ("content", "field", "message", "allowed"),
    [
        (
            [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "image_url", "image_url": {}}],
            "messages[1].content[2].type",
            "content part type 'image_url' is not supported: this model reads text only",
            "'text'",
        ),
        (
            [{"type": "input_audio", "input_audio": {}}],
            "messages[1].content[0].type",
            "content part type 'input_audio' is not supported: this model reads text only",
            "'text'",
        ),
        (
            [{"text": "a"}],
            "messages[1].content[0].type",
            "content part type NoneType is not supported: this model reads text only",
            "'text'",
        ),
        (["a"], "messages[1].content[0]", "must be an object, got str", "{'type': 'text', 'text': ...}"),
        ([{"type": "text"}], "messages[1].content[0].text", "must be a string, missing", "a string"),
        ([{"type": "text", "text": 3}], "messages[1].content[0].text", "must be a string, got int", "a string"),
        (
            [{"type": "text", "text": "a", "cache_control": {}}],
            "messages[1].content[0].cache_control",
            "unknown field",
            "type, text",
        ),
        (
            [],
            "messages[1].content",
            "is an empty list",
            "a string or a non-empty list of {'type': 'text', 'text': ...} parts",
        ),
    ],
)
def test_a_bad_content_part_is_named(content: Any, field: str, message: str, allowed: str) -> None:
    err = _error({"messages": [*OK, {"role": "user", "content": content}]})
    assert (err.field, err.detail, err.allowed) == (field, message, allowed)


@pytest.mark.parametrize(("name", "value"), [*IGNORED.items(), *NEUTRAL.items()])
def test_ignored_and_neutral_fields_are_accepted_and_change_no_setting(name: str, value: Any) -> None:
    req = parse_request({"messages": OK, "max_tokens": 3, name: value}, CHAT)
    assert req.model_dump(exclude_none=True, exclude={"messages"}).keys() == {"max_tokens", name}


def test_all_of_them_at_once_and_the_text_task() -> None:
    parse_request({"messages": OK, **IGNORED, **NEUTRAL}, CHAT)
    text = {k: v for k, v in {**IGNORED, **NEUTRAL}.items() if k in TEXT_COMPAT_FIELDS}
    parse_request({"prompt": "hi", **text}, TEXT)
    assert _error({"prompt": "hi", "tools": []}, TEXT).field == "tools"


@pytest.mark.parametrize(
    ("name", "value", "field", "fragment"),
    [
        ("metadata", {"a": 1}, "metadata.a", "valid string"),
        ("metadata", ["a"], "metadata", "valid dictionary"),
        ("store", "yes", "store", "true or false"),
        ("service_tier", 1, "service_tier", "valid string"),
        ("user", 5, "user", "valid string"),
        ("parallel_tool_calls", "no", "parallel_tool_calls", "true or false"),
        ("prediction", {"type": "guess"}, "prediction.type", "'content'"),
        ("modalities", ["video"], "modalities[0]", "'text' or 'audio'"),
        ("presence_penalty", 3, "presence_penalty", "less than or equal to 2"),
        ("logit_bias", {"1": "x"}, "logit_bias.1", "must be a number"),
        ("tools", {}, "tools", "valid list"),
        ("response_format", {"type": "xml"}, "response_format.type", "'json_schema'"),
        ("logprobs", 0, "logprobs", "true or false"),
        ("top_logprobs", 21, "top_logprobs", "less than or equal to 20"),
    ],
)
def test_garbage_in_an_accepted_field_is_named(name: str, value: Any, field: str, fragment: str) -> None:
    err = _error({"messages": OK, name: value})
    assert err.field == field and fragment in err.detail, err
    assert not isinstance(err, UnsupportedFields)


@pytest.mark.parametrize(("name", "value"), NON_NEUTRAL.items())
def test_a_non_neutral_value_is_refused_by_a_backend_without_guided_decoding(name: str, value: Any) -> None:
    err = _error({"messages": OK, name: value}, backend="scripted")
    assert isinstance(err, UnsupportedFields)
    assert (err.field, err.fields) == (name, [name])
    assert err.detail == f"{name!r} is not supported by backend 'scripted'"
    assert err.allowed == f"{name}: {NEUTRAL_VALUES[name]} or absent"


@pytest.mark.parametrize(("name", "value"), NON_NEUTRAL.items())
def test_guided_decoding_honours_tools_formats_penalties_bias_and_logprobs_but_not_audio(name: str, value: Any) -> None:
    request_ = {"messages": OK, name: value}
    if name == "tool_choice":  # a tool choice needs tools
        request_["tools"] = NON_NEUTRAL["tools"]
    if name == "top_logprobs":  # alternatives need logprobs
        request_["logprobs"] = True
    if name in GUIDED_FIELDS:
        req = parse_request(request_, CHAT, "onnx-cpu", guided=True)
        assert getattr(req, name) is not None
        return
    with pytest.raises(UnsupportedFields) as exc:
        parse_request(request_, CHAT, "onnx-cpu", guided=True)
    assert exc.value.fields == [name]
    assert exc.value.detail == f"{name!r} is not supported by backend 'onnx-cpu'"


def test_every_unsupported_field_is_named_at_once() -> None:
    err = _error({"messages": OK, "tools": NON_NEUTRAL["tools"], "temperature": 0, "logprobs": True})
    assert isinstance(err, UnsupportedFields) and err.fields == ["tools", "logprobs"]
    assert str(err) == (
        "invalid request: field 'tools': 'tools', 'logprobs' are not supported by this model's backend "
        "(allowed: tools: [] or absent; logprobs: false or absent)"
    )


def test_every_unknown_field_is_named_at_once() -> None:
    err = _error({"messages": OK, "best_of": 2, "max_tokens": 2, "echo": True, "suffix": "x"})
    assert (err.field, err.detail) == ("best_of", "unknown field (also unknown: 'echo', 'suffix')")


# -- the same through the packaged pyfunc model ------------------------------------------------------


def _pyfunc_error(tiny_pyfunc: Any, request_: Any) -> str:
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.predict(request_)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    return str(exc.value.message)


def test_pyfunc_accepts_the_developer_role_list_content_and_every_ignored_or_neutral_field(tiny_pyfunc: Any) -> None:
    plain = chat("Hello", max_tokens=3)
    plain["messages"].insert(0, {"role": "system", "content": "Be brief."})
    want = tiny_pyfunc.predict(plain)[0]["choices"]
    request_ = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        ],
        "max_tokens": 3,
        **IGNORED,
        **NEUTRAL,
    }
    # A dict, a list of rows (one of which sets nothing) and a DataFrame all reach the same validation.
    for form in (request_, [request_, plain], pd.DataFrame([request_, plain])):
        assert [r["choices"] for r in tiny_pyfunc.predict(form)] == [want] * (1 if form is request_ else 2)
    chunks = list(tiny_pyfunc.predict_stream(request_))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want[0]["message"]["content"]


def test_pyfunc_refuses_an_image_part_and_unsupported_fields_as_the_core_does(tiny_pyfunc: Any) -> None:
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}
    assert "'messages[0].content[0].type': content part type 'image_url' is not supported" in _pyfunc_error(
        tiny_pyfunc, image
    )
    audio = chat("hi", modalities=["text", "audio"], logprobs=True)
    message = _pyfunc_error(tiny_pyfunc, audio)
    assert message == (
        "invalid request: field 'modalities': 'modalities' is not supported by backend 'onnx-cpu' "
        "(allowed: modalities: ['text'] or absent)"
    )
    assert _pyfunc_error(tiny_pyfunc, chat("hi", top_logprobs=2)) == (
        "invalid request: field 'top_logprobs': needs logprobs: true "
        "(allowed: an integer from 0 to 20, with logprobs: true)"
    )
    garbage = _pyfunc_error(tiny_pyfunc, chat("hi", metadata={"a": 1}))
    assert garbage.startswith("invalid request: field 'metadata.a': Input should be a valid string")


def test_pyfunc_names_every_unknown_field_at_once(tiny_pyfunc: Any) -> None:
    message = _pyfunc_error(tiny_pyfunc, chat("hi", max_tokens=2, best_of=2, echo=True))
    # MLflow's notice lists the dropped names in no fixed order.
    assert any(
        f"field '{one}': unknown field (also unknown: '{other}')" in message
        for one, other in (("best_of", "echo"), ("echo", "best_of"))
    ), message


def test_a_model_with_a_signature_from_before_ignores_dropped_ignored_fields_only(tiny_model_dir: Any) -> None:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema

    model = mlflow.pyfunc.load_model(str(tiny_model_dir))
    signature = standard_signature(CHAT)
    assert signature is not None
    before = [c for c in signature.inputs.inputs if c.name not in CHAT_COMPAT_FIELDS]
    model.metadata.signature = ModelSignature(inputs=Schema(before), outputs=signature.outputs)
    answer = model.predict(chat("Hello", max_tokens=2, store=False, metadata={"a": "b"}, user="u"))
    assert answer[0]["usage"]["completion_tokens"] <= 2
    message = _pyfunc_error(model, chat("hi", max_tokens=2, tools=[], store=False))
    assert message == (
        "invalid request: field 'tools': this model's signature, written by an older flavorkit, does not list "
        "'tools', so MLflow dropped the value before it could be checked; package the model again to send it "
        "(allowed: a request without it)"
    )
    message = _pyfunc_error(model, chat("hi", max_tokens=2, best_of=2, tools=[]))
    assert "field 'best_of': unknown field" in message
