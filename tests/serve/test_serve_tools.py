"""Structured output and tool calls through ``flavorkit serve``, with the official ``openai`` client on loopback."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from serve_fixtures import running

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("prometheus_client")

from flavorkit.serve import create_app  # noqa: E402

TINY = "tiny-chat"
SMOL = "smollm2-chat"
slow = pytest.mark.slow

# -- servers and clients ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir: Path) -> Iterator[str]:
    """``flavorkit serve`` on the tiny random model (onnx-cpu): answers are noise, the grammar makes them valid."""
    with running(create_app(str(tiny_model_dir))) as url:
        yield url


@pytest.fixture(scope="module")
def smol_base(tmp_path_factory: pytest.TempPathFactory, smollm2_ort: Path) -> Iterator[str]:
    """``flavorkit serve`` on SmolLM2-135M-Instruct (onnx-cpu int4, greedy)."""
    import flavorkit

    path = tmp_path_factory.mktemp("serve-tools") / SMOL
    flavorkit.package(model=str(smollm2_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    with running(create_app(str(path))) as url:
        yield url


@pytest.fixture()
def tiny(tiny_base: str) -> Any:
    return openai.OpenAI(base_url=f"{tiny_base}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture()
def smol(smol_base: str) -> Any:
    return openai.OpenAI(base_url=f"{smol_base}/v1", api_key="x", max_retries=0, timeout=120)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _json_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


# -- json_schema: every answer that stops validates -------------------------------------------------

#: Schemas of the kit's clause (nested objects, arrays, enums, anyOf, optional fields). Every string,
#: array and number is bounded, so an answer always fits in ``_SCHEMA_TOKENS`` and must stop.
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 8},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            }
        },
        "required": ["person"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 1, "maxItems": 3}
        },
        "required": ["tags"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3]}},
        "required": ["color", "size"],
        "additionalProperties": False,
    },
    "anyOf": {
        "type": "object",
        "properties": {
            "value": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 999},
                    {"type": "boolean"},
                    {"type": "null"},
                    {"type": "string", "maxLength": 4},
                ]
            }
        },
        "required": ["value"],
        "additionalProperties": False,
    },
    "optional": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 8},
            "note": {"type": "string", "maxLength": 8},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["title"],
        "additionalProperties": False,
    },
}
_SCHEMA_TOKENS = 150
_DESCRIBE = _user("Describe something as JSON.")


def _check_valid(content: str | None, schema: dict[str, Any]) -> Any:
    assert content is not None
    value = json.loads(content)
    jsonschema.validate(value, schema)
    return value


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_answers_validate_with_n_2(tiny: Any, name: str) -> None:
    schema = SCHEMAS[name]
    # Sampled (seeded), so that the two choices take different paths through the grammar.
    r = tiny.chat.completions.create(
        model=TINY,
        messages=_DESCRIBE,
        response_format=_json_schema(name, schema),
        max_tokens=_SCHEMA_TOKENS,
        n=2,
        temperature=1.0,
        seed=7,
    )
    assert [c.index for c in r.choices] == [0, 1]
    for choice in r.choices:
        assert choice.finish_reason == "stop"
        assert choice.message.tool_calls is None
        _check_valid(choice.message.content, schema)


def test_json_schema_rows_in_one_batch_each_follow_their_own(tiny: Any) -> None:
    """Concurrent requests (different grammars, one without any) share the server's batches."""

    def ask(name: str | None) -> Any:
        fmt = {} if name is None else {"response_format": _json_schema(name, SCHEMAS[name])}
        return tiny.chat.completions.create(
            model=TINY, messages=_DESCRIBE, max_tokens=_SCHEMA_TOKENS, n=2, temperature=1.0, seed=3, **fmt
        )

    names: list[str | None] = [*SCHEMAS, None, *SCHEMAS]
    with ThreadPoolExecutor(len(names)) as pool:
        answers = list(pool.map(ask, names))
    for name, r in zip(names, answers, strict=True):
        assert len(r.choices) == 2
        for choice in r.choices:
            if name is None:
                assert choice.message.content  # free text: no grammar leaked into this row
                continue
            assert choice.finish_reason == "stop"
            _check_valid(choice.message.content, SCHEMAS[name])


def _stream_choices(stream: Any) -> dict[int, dict[str, Any]]:
    """Per choice index: the joined content, the tool calls by their index, and every finish reason seen."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in stream:
        for c in chunk.choices:
            seen = out.setdefault(c.index, {"content": "", "calls": {}, "finish": []})
            seen["content"] += c.delta.content or ""
            for call in c.delta.tool_calls or []:
                slot = seen["calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.id or slot["id"]
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            if c.finish_reason is not None:
                seen["finish"].append(c.finish_reason)
    return out


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_streamed_with_n_2_equals_the_whole_answer(tiny: Any, name: str) -> None:
    schema = SCHEMAS[name]
    ask = {"model": TINY, "messages": _DESCRIBE, "response_format": _json_schema(name, schema), "n": 2}
    whole = tiny.chat.completions.create(max_tokens=_SCHEMA_TOKENS, temperature=0, **ask)
    streamed = _stream_choices(
        tiny.chat.completions.create(max_tokens=_SCHEMA_TOKENS, temperature=0, stream=True, **ask)
    )
    assert sorted(streamed) == [0, 1]
    for choice in whole.choices:
        got = streamed[choice.index]
        assert got["finish"] == [choice.finish_reason] == ["stop"]
        assert got["content"] == choice.message.content
        assert got["calls"] == {}
        _check_valid(got["content"], schema)


# -- the openai client's parse() with pydantic models (SmolLM2: meaningful answers) -----------------


class Capital(BaseModel):
    country: str
    capital: str


class Person(BaseModel):
    name: str
    age: int


class Sentiment(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]


PARSED: list[tuple[str, type[Any], Callable[[Any], bool]]] = [
    ("What is the capital of France?", Capital, lambda p: p.capital == "Paris"),
    ("Alice is 30 years old. Extract her name and age.", Person, lambda p: (p.name, p.age) == ("Alice", 30)),
    (
        "Classify the sentiment of: 'I love this movie, it is wonderful!'",
        Sentiment,
        lambda p: p.sentiment == "positive",
    ),
]


@slow
@pytest.mark.parametrize(("question", "model", "right"), PARSED, ids=[m.__name__ for _, m, _ in PARSED])
def test_parse_returns_the_pydantic_object(
    smol: Any, question: str, model: type[Any], right: Callable[[Any], bool]
) -> None:
    r = smol.chat.completions.parse(
        model=SMOL, messages=_user(question), response_format=model, max_tokens=40, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, model)
    assert right(choice.message.parsed), choice.message.content
    # The stream helper parses the joined stream to the same object.
    with smol.chat.completions.stream(
        model=SMOL, messages=_user(question), response_format=model, max_tokens=40, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.parsed == choice.message.parsed


@slow
def test_json_object_answers_are_a_json_object(smol: Any) -> None:
    question = _user("Give the capital of France as a JSON object with the key capital.")
    r = smol.chat.completions.create(
        model=SMOL, messages=question, response_format={"type": "json_object"}, max_tokens=40, temperature=0
    )
    assert r.choices[0].finish_reason == "stop"
    assert json.loads(r.choices[0].message.content) == {"capital": "Paris"}


def test_json_schema_cut_by_max_tokens_says_length(tiny: Any) -> None:
    r = tiny.chat.completions.create(
        model=TINY, messages=_DESCRIBE, response_format=_json_schema("nested", SCHEMAS["nested"]), max_tokens=3
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3
    with pytest.raises(ValueError):
        json.loads(r.choices[0].message.content)


# -- tools (SmolLM2; the generic form: its template ignores tools) ----------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
_PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
_NAMED_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def _calls(message: Any) -> list[tuple[str, Any]]:
    """``(name, arguments)`` of a message's tool calls, each checked: an OpenAI id, valid arguments."""
    out = []
    for call in message.tool_calls or []:
        assert call.type == "function"
        assert call.id.startswith("call_") and len(call.id) == len("call_") + 24
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, _PARAMS[call.function.name])
        out.append((call.function.name, arguments))
    return out


@slow
@pytest.mark.parametrize(
    ("question", "tool_choice", "expected"),
    [
        ("What is the weather in Paris?", "required", [("get_weather", {"city": "Paris"})]),
        ("What is the weather in Paris?", _NAMED_WEATHER, [("get_weather", {"city": "Paris"})]),
        # Named: the model must call get_weather even for a sum (the grammar allows nothing else).
        ("What is 3 plus 4?", _NAMED_WEATHER, [("get_weather", {"city": "New York"})]),
    ],
    ids=["required", "named", "named-off-topic"],
)
def test_forced_tool_calls(smol: Any, question: str, tool_choice: Any, expected: list[tuple[str, Any]]) -> None:
    r = smol.chat.completions.create(
        model=SMOL, messages=_user(question), tools=TOOLS, tool_choice=tool_choice, max_tokens=60, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert _calls(choice.message) == expected


@slow
def test_auto_lets_the_model_answer_in_text(smol: Any) -> None:
    r = smol.chat.completions.create(
        model=SMOL, messages=_user("What is 3 plus 4?"), tools=TOOLS, tool_choice="auto", max_tokens=40, temperature=0
    )
    choice = r.choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == ("stop", "3 + 4 = 7", None)
    # tools without tool_choice is "auto": the same answer.
    default = smol.chat.completions.create(
        model=SMOL, messages=_user("What is 3 plus 4?"), tools=TOOLS, max_tokens=40, temperature=0
    )
    assert default.choices[0].message.content == "3 + 4 = 7"


#: A conversation whose last turn is a tool result: SmolLM2 answers it (greedy) with another call.
LONDON: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in London?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "London"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "15 degrees and cloudy"},
]


@slow
def test_auto_reads_a_call_from_the_answer(smol: Any) -> None:
    r = smol.chat.completions.create(
        model=SMOL, messages=LONDON, tools=[WEATHER], tool_choice="auto", max_tokens=40, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert _calls(choice.message) == [("get_weather", {"city": "London"})]


@slow
def test_parse_gives_parsed_arguments_of_a_strict_pydantic_tool(smol: Any) -> None:
    class GetWeather(BaseModel):
        """Get the current weather in a city."""

        city: str

    tool = openai.pydantic_function_tool(GetWeather)
    assert tool["function"]["strict"] is True
    r = smol.chat.completions.parse(
        model=SMOL,
        messages=_user("What is the weather in Paris?"),
        tools=[tool],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "GetWeather"
    assert call.function.parsed_arguments == GetWeather(city="Paris")


@slow
@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "one-call"])
def test_parallel_tool_calls_false_gives_one_call(smol: Any, parallel: bool) -> None:
    r = smol.chat.completions.create(
        model=SMOL,
        messages=_user("What is the weather in Paris?"),
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=parallel,
        max_tokens=60,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    assert _calls(r.choices[0].message) == [("get_weather", {"city": "Paris"})]


@slow
@pytest.mark.parametrize(
    ("messages", "tool_choice", "n"),
    [
        (_user("What is the weather in Paris?"), "required", 1),
        (_user("What is 3 plus 4?"), _NAMED_WEATHER, 1),
        (LONDON, "auto", 1),
        (_user("What is the weather in Paris?"), "required", 2),
    ],
    ids=["required", "named", "auto", "required-n2"],
)
def test_streamed_tool_calls_equal_the_whole_answer(smol: Any, messages: Any, tool_choice: Any, n: int) -> None:
    ask = {"model": SMOL, "messages": messages, "tools": TOOLS, "tool_choice": tool_choice, "n": n}
    whole = smol.chat.completions.create(max_tokens=60, temperature=0, **ask)
    streamed = _stream_choices(smol.chat.completions.create(max_tokens=60, temperature=0, stream=True, **ask))
    assert sorted(streamed) == list(range(n))
    for choice in whole.choices:
        got = streamed[choice.index]
        assert got["finish"] == [choice.finish_reason] == ["tool_calls"]
        assert got["content"] == ""
        assert sorted(got["calls"]) == list(range(len(choice.message.tool_calls)))
        joined = [got["calls"][k] for k in sorted(got["calls"])]
        assert [(c["name"], c["arguments"]) for c in joined] == [
            (c.function.name, c.function.arguments) for c in choice.message.tool_calls
        ]
        assert all(c["id"].startswith("call_") for c in joined)


@slow
def test_the_stream_helper_joins_tool_calls(smol: Any) -> None:
    with smol.chat.completions.stream(
        model=SMOL,
        messages=_user("What is the weather in Paris?"),
        tools=TOOLS,
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert _calls(final.choices[0].message) == [("get_weather", {"city": "Paris"})]


@slow
def test_tool_call_history_round_trip(smol: Any) -> None:
    """The server's own call goes back as history with a tool result, and the model answers from it."""
    messages: list[dict[str, Any]] = _user("What is the weather in London?")
    first = smol.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=40, temperature=0
    )
    call = first.choices[0].message
    assert _calls(call) == [("get_weather", {"city": "London"})]
    messages.append(call.model_dump(exclude_none=True))
    assert messages[-1]["role"] == "assistant" and "content" not in messages[-1]
    messages.append({"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "15 degrees and cloudy"})
    answer = smol.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=40, temperature=0
    )
    choice = answer.choices[0]
    assert choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content
    # A later question is answered from the tool result in the history.
    messages += [
        {"role": "assistant", "content": "It is 15 degrees and cloudy in London."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    later = smol.chat.completions.create(
        model=SMOL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=40, temperature=0
    )
    assert later.choices[0].finish_reason == "stop"
    assert "15 degrees and cloudy" in later.choices[0].message.content


# -- bad input: a 400 naming the field, and the server keeps answering ------------------------------

_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
_ASKED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}
_BIG = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(700)}}
_BIG_BYTES = len(json.dumps(_BIG, separators=(",", ":")))

#: (request fields, param, the message, or the fragments of it that come from llguidance)
BAD: list[tuple[str, dict[str, Any], str, str | list[str]]] = [
    (
        "invalid-keyword-value",
        {"response_format": _json_schema("s", {"type": "object", "properties": {"x": {"type": "strin"}}})},
        "response_format.json_schema.schema",
        [
            "invalid request: field 'response_format.json_schema.schema': the schema cannot be used for guided"
            " decoding at /properties/x: ",
            "strin",
        ],
    ),
    (
        "unsupported-keyword",
        {
            "response_format": _json_schema(
                "s",
                {
                    "type": "object",
                    "properties": {
                        "a": {"type": "object", "properties": {"b": {"type": "array", "contains": {"type": "integer"}}}}
                    },
                },
            )
        },
        "response_format.json_schema.schema",
        [
            "invalid request: field 'response_format.json_schema.schema': the schema cannot be used for guided"
            " decoding at /properties/a/properties/b: ",
            "contains",
        ],
    ),
    (
        "tool-parameters-invalid",
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "minProperties": "a"}}}
            ]
        },
        "tools[0].function.parameters",
        ["invalid request: field 'tools[0].function.parameters': the schema cannot be used for guided decoding"],
    ),
    (
        "tool-without-name",
        {"tools": [_TOOL, {"type": "function", "function": {"description": "nameless"}}]},
        "tools[1].function.name",
        "invalid request: field 'tools[1].function.name': is required (allowed: 1 to 64 of a-z, A-Z, 0-9, _ and -)",
    ),
    (
        "duplicate-tool-names",
        {"tools": [_TOOL, _TOOL]},
        "tools[1].function.name",
        "invalid request: field 'tools[1].function.name': 'f' is declared twice",
    ),
    (
        "tool-choice-unknown-tool",
        {"tools": [_TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice.function.name",
        "invalid request: field 'tool_choice.function.name': 'g' is not among the tools (allowed: 'f')",
    ),
    (
        "tool-choice-without-tools",
        {"tool_choice": "required"},
        "tool_choice",
        "invalid request: field 'tool_choice': 'required' needs tools, and none are given"
        " (allowed: 'none', or give tools)",
    ),
    (
        "named-tool-choice-without-tools",
        {"tool_choice": {"type": "function", "function": {"name": "g"}}},
        "tool_choice",
        "invalid request: field 'tool_choice': a named function ('g') needs tools, and none are given"
        " (allowed: 'none', or give tools)",
    ),
    (
        "tool-message-without-id",
        {"messages": [*_user("Hi"), _ASKED, {"role": "tool", "content": "42"}], "tools": [_TOOL]},
        "messages[2].tool_call_id",
        "invalid request: field 'messages[2].tool_call_id': is missing"
        " (allowed: the id of a tool call made by an earlier assistant message)",
    ),
    (
        "tool-message-unknown-id",
        {"messages": [*_user("Hi"), _ASKED, {"role": "tool", "content": "42", "tool_call_id": "call_2"}]},
        "messages[2].tool_call_id",
        "invalid request: field 'messages[2].tool_call_id': 'call_2' answers no tool call of an earlier assistant"
        " message (allowed: the id of a tool call made by an earlier assistant message)",
    ),
    (
        "tool-call-arguments-not-an-object",
        {
            "messages": [
                *_user("Hi"),
                {**_ASKED, "tool_calls": [{**_ASKED["tool_calls"][0], "function": {"name": "f", "arguments": "[1]"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "invalid request: field 'messages[1].tool_calls[0].function.arguments': is not a JSON object"
        " (allowed: a JSON object as a string)",
    ),
    (
        "schema-over-64-KiB",
        {"response_format": _json_schema("s", _BIG)},
        "response_format.json_schema.schema",
        f"invalid request: field 'response_format.json_schema.schema': the schema is {_BIG_BYTES} bytes of JSON"
        " (allowed: at most 65536 bytes)",
    ),
    (
        "tool-parameters-over-64-KiB",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": _BIG}}]},
        "tools[0].function.parameters",
        f"invalid request: field 'tools[0].function.parameters': the schema is {_BIG_BYTES} bytes of JSON"
        " (allowed: at most 65536 bytes)",
    ),
    (
        "json-schema-missing",
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        "invalid request: field 'response_format.json_schema': is missing (allowed: {'name': ..., 'schema': {...}})",
    ),
]


@pytest.mark.parametrize(("fields", "param", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_400_naming_the_field(
    tiny: Any, fields: dict[str, Any], param: str, message: str | list[str]
) -> None:
    body = {"model": TINY, "messages": _user("Hi"), "max_tokens": 4, **copy.deepcopy(fields)}
    with pytest.raises(openai.BadRequestError) as bad:
        tiny.chat.completions.create(**body)
    err = bad.value
    assert (err.status_code, err.param, err.code, err.type) == (400, param, "invalid_value", "invalid_request_error")
    assert set(err.body) == {"message", "type", "param", "code"}
    if isinstance(message, str):
        assert err.body["message"] == message
    else:
        assert err.body["message"].startswith(message[0])
        assert all(part in err.body["message"] for part in message[1:])
    # The server still answers a good request.
    ok = tiny.chat.completions.create(
        model=TINY, messages=_DESCRIBE, response_format=_json_schema("enum", SCHEMAS["enum"]), max_tokens=_SCHEMA_TOKENS
    )
    assert ok.choices[0].finish_reason == "stop"
    _check_valid(ok.choices[0].message.content, SCHEMAS["enum"])
