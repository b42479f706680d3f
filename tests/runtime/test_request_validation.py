"""Request validation and the stop-string matcher, tested on their own."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flavorkit.errors import InvalidRequest
from flavorkit.runtime.stopping import StopMatcher
from flavorkit.schema import parse_request, validate_generation_defaults

OK = [{"role": "user", "content": "hi"}]


def _nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("request_", "field", "fragment"),
    [
        ({"messages": []}, "messages", "at least 1 item"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", "required"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role", "'system', 'user', 'assistant'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "valid string"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].type",
            "content part type 'image_url' is not supported",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "hi",
                        "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}],
                    }
                ]
            },
            "messages[0].tool_calls",
            "only an assistant message may carry tool_calls, not a 'user' one",
        ),
        ({"messages": "hello"}, "messages", "valid list"),
        ({}, "messages", "required"),
        ({"messages": OK, "max_tokens": 0}, "max_tokens", "greater than 0"),
        ({"messages": OK, "max_tokens": -3}, "max_tokens", "greater than 0"),
        ({"messages": OK, "max_tokens": 1.5}, "max_tokens", "integer"),
        ({"messages": OK, "max_tokens": "5"}, "max_tokens", "number"),
        ({"messages": OK, "max_tokens": True}, "max_tokens", "number"),
        ({"messages": OK, "temperature": -0.1}, "temperature", "greater than or equal to 0"),
        ({"messages": OK, "temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"messages": OK, "temperature": "hot"}, "temperature", "number"),
        ({"messages": OK, "top_p": 0}, "top_p", "greater than 0"),
        ({"messages": OK, "top_p": 1.01}, "top_p", "less than or equal to 1"),
        ({"messages": OK, "n": 0}, "n", "greater than or equal to 1"),
        ({"messages": OK, "n": 17}, "n", "less than or equal to 16"),
        ({"messages": OK, "stop": 5}, "stop", "string or a list of strings"),
        ({"messages": OK, "stop": ["ok", 5]}, "stop[1]", "valid string"),
        ({"messages": OK, "stop": [""]}, "stop[0]", "at least 1 character"),
        ({"messages": OK, "stop": ["a", "b", "c", "d", "e"]}, "stop", "5 stop strings"),
        ({"messages": OK, "stream": "yes"}, "stream", "true or false"),
        ({"messages": OK, "seed": -1}, "seed", "greater than or equal to 0"),
        ({"messages": OK, "seed": 2**31}, "seed", "less than or equal to 2147483647"),
        ({"messages": OK, "frequency_penalty": 0.5}, "frequency_penalty", "not supported by this model's backend"),
        ({"messages": OK, "best_of": 2}, "best_of", "unknown field"),
        # Lone surrogates are not Unicode text: no tokenizer can encode them.
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content", "lone surrogate U+D800"),
        ({"messages": [*OK, {"role": "user", "content": "\udfff"}]}, "messages[1].content", "position 0"),
        ({"messages": [{"role": "user", "content": "hi", "name": "x\udc80"}]}, "messages[0].name", "lone surrogate"),
        ({"messages": OK, "stop": "\ud83d"}, "stop", "lone surrogate"),
        ({"messages": OK, "stop": ["ok", "\ud83d"]}, "stop[1]", "lone surrogate"),
        # Nesting far beyond anything valid is refused before any recursive walk can overflow.
        ({"messages": [{"role": "user", "content": _nested(5000)}]}, "messages[0].content", "nested more than"),
        ({"messages": OK, "stop": _nested(100)}, "stop", "nested more than"),
        ({"messages": _nested(3000)}, "messages", "nested more than"),
    ],
)
def test_invalid_chat_requests_name_the_field(request_: dict, field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(request_, "llm/v1/chat")
    assert exc.value.field == field
    assert fragment in str(exc.value), str(exc.value)
    assert f"'{field}'" in str(exc.value)


def test_errors_show_the_allowed_values() -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "top_p": 2}, "llm/v1/chat")
    assert exc.value.allowed == "a number greater than 0 and at most 1"
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "foo": 1}, "llm/v1/chat")
    assert "max_tokens" in str(exc.value.allowed) and "messages" in str(exc.value.allowed)


def test_valid_requests_normalise_numpy_and_missing_cells() -> None:
    req = parse_request(
        {
            "messages": np.array([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]),
            "max_tokens": np.int64(7),
            "temperature": np.nan,
            "top_p": np.float64(0.5),
            "stop": np.array(["x", "y"]),
            "stream": np.bool_(True),
        },
        "llm/v1/chat",
    )
    assert [m.role for m in req.messages] == ["system", "user"]
    assert req.max_tokens == 7 and req.temperature is None and req.top_p == 0.5
    assert req.stop_strings() == ("x", "y") and req.stream is True


def test_a_dataframe_row_with_integral_floats_is_accepted() -> None:
    # MLflow turns a batch where only some rows set max_tokens into a float column with NaN.
    frame = pd.DataFrame([{"messages": OK, "max_tokens": 3}, {"messages": OK}])
    rows = frame.to_dict(orient="records")
    assert parse_request(rows[0], "llm/v1/chat").max_tokens == 3
    assert parse_request(rows[1], "llm/v1/chat").max_tokens is None


def test_integers_are_accepted_wherever_floats_are() -> None:
    req = parse_request({"messages": OK, "temperature": 2, "top_p": 1}, "llm/v1/chat")
    assert req.temperature == 2.0 and req.top_p == 1.0
    req = parse_request({"messages": OK, "temperature": np.int64(1), "top_p": np.int32(1)}, "llm/v1/chat")
    assert req.temperature == 1.0 and req.top_p == 1.0


def test_valid_text_with_surrogate_pairs_and_moderate_nesting_is_fine() -> None:
    # A properly paired astral character is valid; only lone surrogates are refused.
    req = parse_request({"messages": [{"role": "user", "content": "\U0001f642 caf\u00e9"}]}, "llm/v1/chat")
    assert req.messages[0].content == "\U0001f642 caf\u00e9"
    # Nesting below the limit is judged by the ordinary type rules.
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": [{"role": "user", "content": _nested(20)}]}, "llm/v1/chat")
    assert exc.value.field == "messages[0].content[0]" and "must be an object, got list" in str(exc.value)


def test_a_lone_surrogate_in_a_key_or_a_text_prompt_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"prompt": "hi\ud800"}, "text-generation")
    assert exc.value.field == "prompt" and "lone surrogate" in str(exc.value)
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "x\ud800": 1}, "llm/v1/chat")
    assert "lone surrogate" in str(exc.value)
    str(exc.value).encode("utf-8")  # the message itself is valid text


def test_errors_of_several_rows_list_each_up_to_a_limit() -> None:
    one = InvalidRequest("inputs[0].n", "bad", allowed="1 to 16")
    assert InvalidRequest.for_rows([one]) is one and one.errors == [one]
    rows = [InvalidRequest(f"inputs[{i}].top_p", f"bad {i}") for i in range(1, 13)]
    err = InvalidRequest.for_rows([one, *rows])
    assert (err.field, err.detail, err.allowed) == ("inputs[0].n", "bad", "1 to 16")
    assert err.errors == [one, *rows]
    text = str(err)
    assert text.startswith(
        "invalid request: 13 bad rows: field 'inputs[0].n': bad (allowed: 1 to 16); field 'inputs[1]"
    )
    assert "'inputs[9].top_p'" in text and "'inputs[10].top_p'" not in text
    assert text.endswith("; and 3 more")


def test_stop_accepts_a_plain_string() -> None:
    assert parse_request({"messages": OK, "stop": "END"}, "llm/v1/chat").stop_strings() == ("END",)


def test_text_generation_requests() -> None:
    assert parse_request("hello", "text-generation").prompt == "hello"
    assert parse_request({"prompt": "hi", "max_tokens": 2}, "text-generation").max_tokens == 2
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"prompt": 5}, "text-generation")
    assert exc.value.field == "prompt"
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"prompt": "hi", "n": 2}, "text-generation")
    assert exc.value.field == "n" and "one string per prompt" in str(exc.value)
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK}, "text-generation")
    assert exc.value.field in {"prompt", "messages"}


def test_generation_defaults_use_the_same_rules_with_a_prefix() -> None:
    assert validate_generation_defaults({"temperature": 0, "max_tokens": 16}) == {"temperature": 0.0, "max_tokens": 16}
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults({"temperature": -1})
    assert exc.value.field == "generation.temperature"
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults({"maxtokens": 5})
    assert exc.value.field == "generation.maxtokens" and "max_tokens" in str(exc.value.allowed)
    with pytest.raises(InvalidRequest) as exc:
        validate_generation_defaults(["temperature"])  # type: ignore[arg-type]
    assert exc.value.field == "generation"


# -- stop strings --------------------------------------------------------------------------------


def _run(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    tail, hit = matcher.flush()
    return "".join(out) + tail, hit


def test_stop_straddling_increments_is_cut_and_never_emitted() -> None:
    matcher = StopMatcher(["<END>"])
    emitted = []
    for piece in ["Hello wor", "ld <E", "N", "D> tail"]:
        text, hit = matcher.feed(piece)
        emitted.append(text)
        assert "<" not in text or hit, "a possible stop prefix must be held back"
    assert "".join(emitted) == "Hello world "
    assert hit


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    matcher = StopMatcher(["\n\n"])
    assert matcher.feed("a\n") == ("a", False)
    assert matcher.feed("b") == ("\nb", False)
    assert matcher.feed("\n") == ("", False)
    assert matcher.flush() == ("\n", False)


def test_earliest_of_several_stops_wins() -> None:
    assert _run(StopMatcher(["cd", "b"]), ["abcd"]) == ("a", True)
    assert _run(StopMatcher(["bcd", "cx"]), ["ab", "c", "x"]) == ("ab", True)


@pytest.mark.parametrize("pieces", [["abcd"], ["ab", "c", "d"], ["a", "b", "c", "d"], ["abc", "d"]])
def test_an_earlier_stop_that_is_still_completing_wins_over_a_later_complete_one(pieces: list[str]) -> None:
    # "bc" is complete at "abc", but "abcd" starts earlier and may still complete.
    assert _run(StopMatcher(["abcd", "bc"]), pieces) == ("", True)


def test_a_complete_stop_held_behind_a_partial_one_is_settled_at_the_end() -> None:
    # The sequence ends after "abc": "abcd" never completed, so "bc" is the earliest stop.
    assert _run(StopMatcher(["abcd", "bc"]), ["ab", "c"]) == ("a", True)


@given(
    text=st.text(alphabet="abc\n", max_size=40),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=5), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_streaming_cut_equals_cutting_the_whole_text(text: str, stops: list[str], cuts: list[int]) -> None:
    """Whatever the chunking, the output is the text up to the earliest stop string, never past it."""
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    found = [i for i in (text.find(s) for s in stops) if i != -1]
    expected = text[: min(found)] if found else text
    out, hit = _run(StopMatcher(stops), pieces)
    assert out == expected
    assert hit == bool(found)
    assert not any(s in out for s in stops)


def test_depth_counts_containers_not_numpy_scalars() -> None:
    # stop sits one level down; 31 lists put the leaf at depth 32, the limit: a scalar there is fine.
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "stop": _nested(31, np.float64(1.0))}, "llm/v1/chat")
    assert exc.value.field.startswith("stop[0]") and "nested" not in str(exc.value)
    # numpy object arrays (as DataFrame cells hold lists) count as containers.
    deep: object = "x"
    for _ in range(40):
        deep = np.array([deep, "pad"], dtype=object)
    with pytest.raises(InvalidRequest) as exc:
        parse_request({"messages": OK, "stop": deep}, "llm/v1/chat")
    assert exc.value.field == "stop" and "nested more than 32 levels" in str(exc.value)
