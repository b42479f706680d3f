"""Request parsing details the chat contract promises: numpy values from DataFrames, flags, messages."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from flavorkit.errors import InvalidRequest
from flavorkit.schema import ChatRequest, parse_request, validate_generation_defaults, validate_options

OK = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store (0.3 s a test)."""


def test_numpy_flags_and_numbers_from_a_dataframe_are_plain_python() -> None:
    req = parse_request({"messages": OK, "stream": np.bool_(True), "max_tokens": np.int64(5)}, "llm/v1/chat")
    assert isinstance(req, ChatRequest)
    assert req.stream is True and type(req.stream) is bool
    assert req.max_tokens == 5 and type(req.max_tokens) is int
    assert parse_request({"messages": OK, "stream": False}, "llm/v1/chat").stream is False


@pytest.mark.parametrize("value", ["yes", 1, np.int64(1), 0.0])
def test_a_flag_must_be_a_boolean(value: object) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "stream": value}, "llm/v1/chat")
    assert exc.value.field == "stream"
    assert exc.value.allowed == "true or false"
    assert exc.value.detail.startswith("must be true or false, got ")


def test_the_name_field_of_a_message_is_kept_and_must_be_a_string() -> None:
    req = parse_request({"messages": [{"role": "user", "content": "hi", "name": "alice"}]}, "llm/v1/chat")
    assert isinstance(req, ChatRequest)
    assert req.messages[0].name == "alice"
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": [{"role": "user", "content": "hi", "name": 7}]}, "llm/v1/chat")
    assert exc.value.field == "messages[0].name"


def test_a_matcher_without_stops_passes_text_through() -> None:
    from flavorkit.runtime.stopping import StopMatcher

    for stops in ([], [""]):
        matcher = StopMatcher(stops)
        assert matcher.matched is False
        assert matcher.feed("abc") == ("abc", False)
        assert matcher.flush() == ("", False)


def test_a_matcher_ignores_everything_after_a_match() -> None:
    from flavorkit.runtime.stopping import StopMatcher

    matcher = StopMatcher(["END"])
    assert matcher.feed("abEN") == ("ab", False)
    assert matcher.matched is False
    assert matcher.feed("Dmore") == ("", True)
    assert matcher.matched is True
    assert matcher.feed("even more") == ("", True)
    assert matcher.flush() == ("", True)


def test_flush_settles_a_held_tail_that_completes_a_stop_or_not() -> None:
    from flavorkit.runtime.stopping import StopMatcher

    matcher = StopMatcher(["xyz", "y"])
    assert matcher.feed("axy") == ("a", False)  # "xy" could still become "xyz"; "y" starts later
    assert matcher.flush() == ("x", True)  # the stream ended: "y" is the earliest complete stop
    assert matcher.matched is True
    held = StopMatcher(["xyz"])
    assert held.feed("axy") == ("a", False)
    assert held.flush() == ("xy", False)
    assert held.matched is False
    assert held.flush() == ("", False), "flush empties the buffer"


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = Field(3, ge=1)
    tags: dict[str, str] = Field(default_factory=dict)


def test_backend_options_are_validated_with_the_backend_schema() -> None:
    assert validate_options("b", _Opts, {}) == {"level": 3, "tags": {}}
    assert validate_options("b", _Opts, {"level": 5, "tags": {"x": "y"}}) == {"level": 5, "tags": {"x": "y"}}
    with pytest.raises(InvalidRequest) as exc:
        validate_options("b", _Opts, {"levle": 5})
    assert str(exc.value) == (
        "invalid request: field 'options.levle': unknown option for backend 'b' (allowed: level, tags)"
    )
    with pytest.raises(InvalidRequest) as exc:
        validate_options("b", _Opts, {"level": 0})
    assert str(exc.value) == "invalid request: field 'options.level': Input should be greater than or equal to 1"
    with pytest.raises(InvalidRequest) as exc:
        validate_options("b", _Opts, {"tags": {"x": 1}})
    assert exc.value.field == "options.tags.x"
    with pytest.raises(InvalidRequest) as exc:
        validate_options("b", _Opts, ["level"])  # type: ignore[arg-type]
    assert str(exc.value) == "invalid request: field 'options': must be a dict, got list"


def test_a_backend_without_options_refuses_any() -> None:
    assert validate_options("plain", None, {}) == {}
    with pytest.raises(InvalidRequest) as exc:
        validate_options("plain", None, {"speed": 1, "other": 2})
    assert str(exc.value) == "invalid request: field 'options.speed': backend 'plain' takes no options (allowed: none)"


def test_generation_defaults_are_checked_like_requests() -> None:
    assert validate_generation_defaults(None) == {}
    assert validate_generation_defaults({"temperature": 0, "stop": "x", "seed": None}) == {
        "temperature": 0.0,
        "stop": "x",
    }
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults(["temperature"])  # type: ignore[arg-type]
    assert str(exc.value) == "invalid request: field 'generation': must be a dict, got list"
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults({"stop": ["a", "b", "c", "d", "e"]})
    assert exc.value.field == "generation.stop"


def test_own_validators_show_the_input() -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "stop": 5}, "llm/v1/chat")
    assert (exc.value.field, exc.value.detail) == ("stop", "must be a string or a list of strings, got int")
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "max_tokens": 1.5}, "llm/v1/chat")
    assert (exc.value.field, exc.value.detail) == ("max_tokens", "must be an integer, got 1.5")
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "temperature": "hot"}, "llm/v1/chat")
    assert (exc.value.field, exc.value.detail) == ("temperature", "must be a number, got str 'hot'")


MESSAGES = [
    (
        {},
        "llm/v1/chat",
        "field 'messages': is required (allowed: a non-empty list of {'role': ..., 'content': ...} objects)",
    ),
    (
        {"messages": OK, "best_of": 2, "echo": False},
        "llm/v1/chat",
        "field 'best_of': unknown field (also unknown: 'echo') (allowed: max_tokens, temperature, top_p, top_k, n, "
        "stop, seed, user, presence_penalty, frequency_penalty, logit_bias, store, metadata, service_tier, "
        "parallel_tool_calls, prediction, modalities, tools, tool_choice, response_format, logprobs, top_logprobs, "
        "messages, stream)",
    ),
    (
        {"messages": [{"role": "user", "content": "hi", "tool": 1}]},
        "llm/v1/chat",
        "field 'messages[0].tool': unknown field (allowed: role, content, name, tool_calls, tool_call_id, refusal)",
    ),
    (
        {"messages": OK, "temperature": 5, "top_p": 7},
        "llm/v1/chat",
        "field 'temperature': Input should be less than or equal to 2; got 5 (and 1 more problem(s)) "
        "(allowed: a number from 0 to 2)",
    ),
    (
        {"messages": OK, "temperature": 5},
        "llm/v1/chat",
        "field 'temperature': Input should be less than or equal to 2; got 5 (allowed: a number from 0 to 2)",
    ),
    (
        {"messages": OK, "stop": ["", ""]},
        "llm/v1/chat",
        "field 'stop[0]': String should have at least 1 character; got '' "
        "(allowed: a non-empty string or a list of at most 4 non-empty strings)",
    ),
    (
        {"prompt": "x", "n": 2},
        "text-generation",
        "field 'n': Input should be 1; got 2 (allowed: 1 (text-generation returns one string per prompt))",
    ),
    (
        {"messages": "x" * 100},
        "llm/v1/chat",
        "field 'messages': Input should be a valid list; got str "
        "(allowed: a non-empty list of {'role': ..., 'content': ...} objects)",
    ),
    (
        {"messages": [{"role": "user"}]},
        "llm/v1/chat",
        "field 'messages[0].content': is required "
        "(allowed: a string or a non-empty list of {'type': 'text', 'text': ...} parts)",
    ),
    ({"prompt": 5}, "text-generation", "field 'prompt': Input should be a valid string; got 5 (allowed: a string)"),
    (["hi"], "llm/v1/chat", "field 'request': each input must be an object with 'messages', got list"),
    (3, "text-generation", "field 'request': each input must be an object with 'prompt', got int"),
]


@pytest.mark.parametrize(("row", "task", "message"), MESSAGES, ids=[str(i) for i in range(len(MESSAGES))])
def test_the_whole_error_message(row: object, task: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(row, task)
    assert str(exc.value) == f"invalid request: {message}"


def test_four_stop_strings_are_allowed_and_five_are_not() -> None:
    four = ["a", "b", "c", "d"]
    req = parse_request({"messages": OK, "stop": four}, "llm/v1/chat")
    assert req.stop_strings() == ("a", "b", "c", "d")
    assert validate_generation_defaults({"stop": four}) == {"stop": four}
    allowed = "a non-empty string or a list of at most 4 non-empty strings"
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "stop": [*four, "e"]}, "llm/v1/chat")
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == ("stop", "5 stop strings given", allowed)
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults({"stop": [*four, "e"]})
    assert (exc.value.field, exc.value.detail, exc.value.allowed) == (
        "generation.stop",
        "too many stop strings",
        allowed,
    )
