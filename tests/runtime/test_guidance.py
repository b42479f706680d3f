"""Guided decoding in the core (issue 18): grammars, schema checks, the logits processor and reading tool calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from flavorkit.errors import InvalidRequest
from flavorkit.runtime.choices import Choice
from flavorkit.runtime.guidance import (
    MAX_SCHEMA_BYTES,
    Grammar,
    Guidance,
    SamplingAdjustments,
    build_grammar,
    check_schema,
    closed,
    guidance_tokenizer_from_file,
    parse_calls,
)
from flavorkit.runtime.stopping import StopMatcher
from flavorkit.runtime.tool_prompts import generic_messages, native_messages
from flavorkit.schema import ChatRequest, parse_request
from flavorkit.signatures import CHAT
from flavorkit.types import GenerationRequest
from helpers import chat

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
        "address": {"anyOf": [{"type": "null"}, {"type": "object", "properties": {"city": {"type": "string"}}}]},
    },
    "required": ["name", "age", "role"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def tokenizer(tiny_ort: Path) -> Any:

    config = json.loads((tiny_ort / "genai_config.json").read_text())["model"]
    eos = config["eos_token_id"]
    return guidance_tokenizer_from_file(
        str(tiny_ort / "tokenizer.json"), eos[0] if isinstance(eos, list) else eos, n_vocab=config["vocab_size"]
    )


# -- grammars ----------------------------------------------------------------------------------------


def test_no_grammar_without_a_format_or_tools() -> None:
    assert build_grammar(None, None, None) is None
    assert build_grammar({"type": "text"}, [], "none") is None
    assert build_grammar(None, [WEATHER], "none") is None  # "none": the model may not call


def test_each_request_form_gets_its_kind_and_tools() -> None:
    schema = build_grammar({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}, None, None)
    assert schema is not None and (schema.kind, schema.schema) == ("json", PERSON)
    assert '"whitespace_flexible":false' in schema.lark
    required = build_grammar(None, [WEATHER, TIME], "required")
    assert required is not None and (required.kind, required.tool_names) == ("tools", ("get_weather", "get_time"))
    named = build_grammar(None, [WEATHER, TIME], {"type": "function", "function": {"name": "get_time"}})
    assert named is not None and (named.kind, named.tool_names) == ("tools", ("get_time",))
    auto = build_grammar(None, [WEATHER], None)
    assert auto is not None and auto.kind == "auto" and "TEXT" in auto.lark
    both = build_grammar({"type": "json_object"}, [WEATHER], "auto")
    assert both is not None and both.kind == "auto" and "answer" in both.lark and "TEXT" not in both.lark
    one = build_grammar(None, [WEATHER], "required", parallel_tool_calls=False)
    assert one is not None and "calls: call\n" in one.lark and "calls: call+" in required.lark


def test_objects_are_closed_to_keys_they_do_not_list_and_nothing_else_changes() -> None:
    schema = {
        "type": "object",
        "properties": {"properties": {"type": "object", "properties": {"a": {}}}, "free": {"type": "object"}},
        "$defs": {"d": {"properties": {"x": {}}, "additionalProperties": True}},
        "enum": [{"properties": {}}],
    }
    out = closed(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["properties"]["additionalProperties"] is False  # a property named "properties"
    assert "additionalProperties" not in out["properties"]["free"]  # no listed properties: left open
    assert out["$defs"]["d"]["additionalProperties"] is True  # the caller's word stands
    assert out["enum"] == [{"properties": {}}]  # values are not schemas
    assert "additionalProperties" not in schema  # the request's own schema is not changed


# -- checking schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "where", "fragment"),
    [
        ({"type": "object", "properties": {"x": {"type": "strin"}}}, " at /properties/x", "strin"),
        ({"type": "array", "items": {"type": "string", "contains": {"const": 1}}}, " at /items", "contains"),
        ({"type": "array", "contains": {"const": 1}}, "", "contains"),
        ({"type": "string", "pattern": "(?<=a)b"}, "", "look-around"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, " at /properties/a", "missing"),
    ],
)
def test_a_schema_llguidance_cannot_compile_is_named_with_its_path(schema: Any, where: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        check_schema(schema, "response_format.json_schema.schema")
    assert exc.value.field == "response_format.json_schema.schema"
    assert exc.value.detail.startswith(f"the schema cannot be used for guided decoding{where}: ")
    assert fragment in exc.value.detail


def test_a_schema_over_the_size_limit_is_refused_before_compiling() -> None:
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(MAX_SCHEMA_BYTES // 20)}}
    with pytest.raises(InvalidRequest) as exc:
        check_schema(big, "tools[0].function.parameters")
    assert exc.value.field == "tools[0].function.parameters"
    assert exc.value.allowed == f"at most {MAX_SCHEMA_BYTES} bytes"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "code", "function": {"name": "f"}}]}, "tools[0].type"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER] * 129}, "tools"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
            "response_format.json_schema.name",
        ),
        ({"logit_bias": {"the": 1}}, "logit_bias.the"),
    ],
)
def test_inconsistent_tools_and_formats_are_named(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(chat("hi", **extra), CHAT, "onnx-cpu", guided=True)
    assert exc.value.field == field


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


@pytest.mark.parametrize(
    ("messages", "field", "fragment"),
    [
        ([{"role": "tool", "content": "18 C"}], "messages[0].tool_call_id", "is missing"),
        (
            [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"}],
            "messages[1].tool_call_id",
            "'call_9' answers no tool call of an earlier assistant message",
        ),
        ([{"role": "user", "content": None}], "messages[0].content", "is required"),
        ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "messages[0].tool_calls", "only an assistant"),
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
            "is not a JSON object",
        ),
        ([{"role": "user", "content": "x", "tool_call_id": "call_1"}], "messages[0].tool_call_id", "only a 'tool'"),
    ],
)
def test_a_bad_tool_conversation_is_named(messages: Any, field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": messages}, CHAT, "onnx-cpu", guided=True)
    assert exc.value.field == field
    assert fragment in exc.value.detail


# -- the logits processor ----------------------------------------------------------------------------


def test_the_guide_masks_what_the_grammar_forbids_and_follows_the_tokens(tokenizer: Any) -> None:
    grammar = build_grammar({"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}, None, None)
    assert grammar is not None
    guide = Guidance(lambda: tokenizer).guide(grammar, None)
    width = tokenizer.vocab_size + 7  # logits wider than the vocabulary: the extra columns are masked
    text_ids: list[int] = []
    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = rng.normal(size=width).astype(np.float32)
        guide.process(logits)
        assert np.isneginf(logits[tokenizer.vocab_size :]).all()
        token = int(np.argmax(logits))
        guide.accept(token)
        if token == tokenizer.eos_token:
            break
        text_ids.append(token)
    else:
        pytest.fail("the grammar never let the answer end")
    assert not guide.failed
    answer = json.loads(tokenizer.decode_str(text_ids))
    jsonschema.validate(answer, PERSON)


def test_the_compiled_grammar_is_reused_and_each_choice_gets_its_own_copy(tokenizer: Any) -> None:
    calls = []
    guidance = Guidance(lambda: calls.append(1) or tokenizer)
    grammar = build_grammar({"type": "json_object"}, None, None)
    assert grammar is not None
    first, second = guidance.matcher(grammar), guidance.matcher(grammar)
    assert calls == [1] and first is not second
    assert first.consume_tokens(tokenizer.tokenize_str("{"))
    assert second.consume_tokens(tokenizer.tokenize_str("{"))  # the copy was not advanced by the first


def test_bias_and_penalties_follow_openai_s_definitions(tokenizer: Any) -> None:
    guide = Guidance(lambda: tokenizer).guide(
        None, SamplingAdjustments({5: 10.0, 7: -100.0}, presence=0.5, frequency=0.25)
    )
    logits = np.zeros(12, dtype=np.float32)
    guide.process(logits)
    assert logits[5] == 10.0 and logits[7] == -100.0 and logits[3] == 0.0
    for token in (3, 3, 4):
        guide.accept(token)
    logits = np.zeros(12, dtype=np.float32)
    guide.process(logits)
    # token 3: presence 0.5 + frequency 0.25 x 2; token 4: 0.5 + 0.25
    assert (logits[3], logits[4], logits[5]) == (-1.0, -0.75, 10.0)
    assert not SamplingAdjustments({}, 0.0, 0.0).active


def test_a_grammar_without_a_way_on_ends_the_answer(tokenizer: Any) -> None:
    guide = Guidance(lambda: tokenizer).guide(Grammar('start: "{}"\n', "json"), None)
    guide.accept(tokenizer.tokenize_str("x")[0])  # a token the grammar forbids: a backend that ignored the mask
    assert guide.failed
    logits = np.zeros(tokenizer.vocab_size, dtype=np.float32)
    guide.process(logits)
    assert int(np.argmax(logits)) == tokenizer.eos_token and np.isneginf(np.delete(logits, tokenizer.eos_token)).all()


# -- reading calls back ------------------------------------------------------------------------------


def test_calls_are_read_in_the_hermes_and_the_bare_json_form() -> None:
    names = ("get_weather", "get_time")
    text = (
        '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call>'
    )
    assert parse_calls(text, names) == ("", [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")])
    assert parse_calls('{"name": "get_time", "arguments": {}}', names) == ("", [("get_time", "{}")])
    # Not a call: an unknown name, JSON that is an answer, a block cut short.
    for text in ('{"name": "rm", "arguments": {}}', '{"city": "Paris"}', '<tool_call>\n{"name":"get_ti'):
        assert parse_calls(text, names) == (text, [])


def _choice(tools: tuple[str, ...], calls_only: bool = False) -> Choice:
    request = GenerationRequest(prompt_ids=[1], max_tokens=100)
    return Choice(row=0, index=0, request=request, matcher=StopMatcher(()), tools=tools, calls_only=calls_only)


def test_plain_text_streams_and_a_call_is_held_until_the_answer_ends() -> None:
    text = _choice(("get_weather",))
    assert text.advance(" ", 1, None, "b") == ("", None)  # whitespace alone decides nothing
    assert text.advance("Sunny", 1, None, "b") == (" Sunny", None)
    assert text.advance(" today", 1, "stop", "b") == (" today", "stop")
    assert (text.calls, text.finish) == ([], "stop")
    call = _choice(("get_weather",))
    pieces = ["<tool", '_call>\n{"name":"get_weather",', '"arguments":{"city":"Rome"}}\n</tool_call>']
    assert [call.advance(p, 1, None, "b") for p in pieces] == [("", None)] * 3
    assert call.advance("", 0, "stop", "b") == ("", "tool_calls")
    assert call.finish == "tool_calls" and [c[1:] for c in call.calls] == [("get_weather", '{"city": "Rome"}')]
    assert call.calls[0][0].startswith("call_") and len(call.calls[0][0]) == 29
    assert call.take_calls() == call.calls and call.take_calls() == []


def test_a_required_call_cut_by_max_tokens_stays_text_with_finish_length() -> None:
    choice = _choice(("get_weather",), calls_only=True)
    assert choice.advance('<tool_call>\n{"name":"get_weather","argu', 3, "length", "b") == (
        '<tool_call>\n{"name":"get_weather","argu',
        "length",
    )
    assert choice.calls == []


# -- prompts -----------------------------------------------------------------------------------------


def _conversation() -> ChatRequest:
    req = parse_request(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "21 C"},
            ],
            "tools": [WEATHER],
        },
        CHAT,
        guided=True,
    )
    assert isinstance(req, ChatRequest)
    return req


def test_the_generic_form_lists_the_tools_and_writes_calls_and_results_as_text() -> None:
    req = _conversation()
    out = generic_messages(req.messages, req.tools or [])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\nYou can call functions.")
    assert json.dumps(WEATHER["function"]) in out[0]["content"]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert out[2]["content"] == f"{call}\n{call}"
    assert out[3]["content"] == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n21 C\n</tool_response>"


def test_the_native_form_keeps_calls_as_objects_and_results_with_their_id() -> None:
    out = native_messages(_conversation().messages)
    assert out[2]["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
    }
    assert out[2]["content"] == "" and out[3] == {"role": "tool", "content": "18 C", "tool_call_id": "call_1"}


# -- through the packaged model (tiny random weights: the grammar alone makes answers valid) ------


SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
    {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "n": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
        },
    },
]


def _format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_json_schema_answers_validate_for_n_choices_and_mixed_grammars_in_one_batch(tiny_pyfunc: Any) -> None:
    rows = [
        chat("Answer.", max_tokens=80, n=2, temperature=0.9, seed=s, response_format=_format(x))
        for s, x in enumerate(SCHEMAS)
    ]
    rows.append(chat("Free text.", max_tokens=8))
    answers = tiny_pyfunc.predict(rows)
    checked = 0
    for schema, answer in zip(SCHEMAS, answers, strict=False):
        for choice in answer["choices"]:
            if choice["finish_reason"] == "stop":
                jsonschema.validate(json.loads(choice["message"]["content"]), schema)
                checked += 1
    assert checked >= 3, answers
    streamed = list(
        tiny_pyfunc.predict_stream(chat("Answer.", max_tokens=80, temperature=0, response_format=_format(PERSON)))
    )
    whole = tiny_pyfunc.predict(chat("Answer.", max_tokens=80, temperature=0, response_format=_format(PERSON)))[0]
    joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in streamed)
    assert joined == whole["choices"][0]["message"]["content"]


#: Two short tools: the tiny model's context is 256 tokens, and the generic form lists them in the prompt.
SHORT = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
        },
    },
    {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def long_tiny() -> Any:
    """The tiny model with a 1024-token context, loaded directly (its byte-level vocabulary makes prompts long)."""
    from flavorkit.backend.registry import get_backend
    from flavorkit.runtime.loaded import LoadedModel
    from flavorkit.testing.models import tiny_checkpoint
    from flavorkit_onnxgenai.convert import convert_checkpoint

    backend = get_backend("onnx-cpu")
    folder = convert_checkpoint(tiny_checkpoint(context_length=1024), precision="fp32")
    model = LoadedModel(backend, backend.load({"model": str(folder)}, {}))
    yield model
    model.close()


def test_a_required_or_named_tool_choice_always_gives_a_valid_call(long_tiny: Any) -> None:
    assert not long_tiny.renders_tools()  # the tiny template has no tools: the generic form
    finished = 0
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        for seed in range(3):
            request_ = chat("Go.", max_tokens=60, temperature=1, seed=seed, tools=SHORT, tool_choice=choice)
            first = long_tiny.predict(request_)[0]["choices"][0]
            if first["finish_reason"] == "length":
                continue
            finished += 1
            assert first["finish_reason"] == "tool_calls", first
            assert first["message"]["content"] is None
            for call in first["message"]["tool_calls"]:
                tool = {t["function"]["name"]: t for t in SHORT}[call["function"]["name"]]
                jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
                assert isinstance(choice, str) or call["function"]["name"] == "f"
    assert finished >= 2


def test_streamed_calls_join_to_the_whole_answer(long_tiny: Any) -> None:
    request_ = chat("Go.", max_tokens=80, temperature=0, tools=SHORT, tool_choice="required", parallel_tool_calls=False)
    whole = long_tiny.predict(request_)[0]["choices"][0]
    chunks = list(long_tiny.predict_stream(request_))
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    assert [c["function"] for c in calls] == [c["function"] for c in whole["message"]["tool_calls"]]
    assert [c["index"] for c in calls] == list(range(len(calls)))
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "tool_calls"


def test_log_probabilities_are_those_of_the_processed_distribution(tokenizer: Any) -> None:
    guide = Guidance(lambda: tokenizer).guide(None, SamplingAdjustments({7: 5.0}), logprobs=2)
    logits = np.zeros(tokenizer.vocab_size + 3, dtype=np.float32)  # wider than the vocabulary
    logits[9] = 3.0
    guide.process(logits)
    guide.accept(9)
    (entry,) = guide.logprobs
    row = np.zeros(tokenizer.vocab_size)
    row[7], row[9] = 5.0, 3.0  # the bias is part of the distribution the token was picked from
    logsum = np.log(np.exp(row).sum())
    assert entry["token"] == tokenizer.decode_str([9]) and entry["bytes"] == list(tokenizer.decode_bytes([9]))
    assert entry["logprob"] == pytest.approx(3.0 - logsum)
    assert [(t["token"], t["logprob"]) for t in entry["top_logprobs"]] == [
        (tokenizer.decode_str([7]), pytest.approx(5.0 - logsum)),
        (tokenizer.decode_str([9]), pytest.approx(3.0 - logsum)),
    ]
    guide.process(np.zeros(tokenizer.vocab_size, dtype=np.float32))
    guide.accept(tokenizer.eos_token)  # the end of sequence is no content: no entry
    assert len(guide.logprobs) == 1
