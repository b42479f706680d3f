"""The response models of flavorkit.responses: the per-token fast path equals the validated model, dialects."""

from __future__ import annotations

import itertools
import json
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from flavorkit.responses import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    Dialect,
    TextChoice,
    TextCompletion,
    TextOffsets,
    Usage,
    chat_chunk,
    chat_completion,
    text_chunk,
    text_completion,
    text_logprobs,
    usage_chunk,
)

USAGE = Usage.of(4, 6)


def _same(built: dict[str, Any], model: dict[str, Any]) -> None:
    """Equal, and with the keys in the same order at every level (the JSON text is the same)."""
    assert json.dumps(built) == json.dumps(model)


ROLES: tuple[Literal["assistant"] | None, ...] = (None, "assistant")


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_chunk_is_what_the_validated_model_writes(dialect: Dialect, include_usage: bool) -> None:
    for role, content, finish, usage in itertools.product(ROLES, (None, "", "tok"), (None, "stop"), (None, USAGE)):
        built = chat_chunk(
            "chatcmpl-1",
            7,
            "m",
            2,
            role=role,
            content=content,
            finish_reason=finish,
            usage=usage,
            include_usage=include_usage,
            dialect=dialect,
        )
        model = ChatCompletionChunk(
            id="chatcmpl-1",
            created=7,
            model="m",
            choices=[ChatChunkChoice(index=2, delta=ChatDelta(role=role, content=content), finish_reason=finish)],
            usage=usage,
        ).wire(dialect, null=("usage",) if include_usage else ())
        _same(built, model)


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_text_chunk_is_what_the_validated_model_writes(dialect: Dialect, include_usage: bool) -> None:
    for text, finish in itertools.product(("", "tok"), (None, "length")):
        built = text_chunk("cmpl-1", 7, "m", 1, text, finish, include_usage=include_usage, dialect=dialect)
        model = TextCompletion(
            id="cmpl-1", created=7, model="m", choices=[TextChoice(index=1, text=text, finish_reason=finish)]
        ).wire(dialect, null=("usage",) if include_usage else ())
        _same(built, model)


def test_the_chunk_layout_is_not_shared_between_chunks() -> None:
    first = chat_chunk("a", 1, "m", 0, content="x", include_usage=True)
    first["choices"][0]["delta"]["content"] = "changed"
    first["id"] = "changed"
    assert chat_chunk("b", 1, "m", 0, content="y", include_usage=True)["choices"][0]["delta"] == {"content": "y"}
    assert chat_chunk("b", 1, "m", 0)["id"] == "b"


def test_the_openai_dialect_sends_openai_s_null_fields_and_the_pyfunc_dialect_leaves_them_out() -> None:
    openai = chat_completion("c", 1, "m", [("ab", "stop")], USAGE)
    assert openai == {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ab", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
        "system_fingerprint": None,
    }
    pyfunc = chat_completion("c", 1, "m", [("ab", "stop")], USAGE, dialect=Dialect.PYFUNC)
    assert pyfunc == {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
    }
    # finish_reason is not an OpenAI-only field: a chunk sends it as null in both dialects.
    for dialect in Dialect:
        assert chat_chunk("c", 1, "m", 0, content="a", dialect=dialect)["choices"][0]["finish_reason"] is None


def test_text_completions_and_usage_chunks() -> None:
    whole = text_completion("cmpl-1", 1, "m", [("a", "stop"), ("b", "length")], USAGE)
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert whole["choices"][1] == {"index": 1, "text": "b", "logprobs": None, "finish_reason": "length"}
    assert whole["object"] == "text_completion" and whole["usage"]["total_tokens"] == 10
    for obj in ("chat.completion.chunk", "text_completion"):
        chunk = usage_chunk("x", 1, "m", obj, USAGE)
        assert chunk["object"] == obj and chunk["choices"] == [] and chunk["usage"] == USAGE.model_dump()
        assert chunk["system_fingerprint"] is None
    with pytest.raises(ValueError, match=r"no streamed shape 'chat\.completion'"):
        usage_chunk("x", 1, "m", "chat.completion", USAGE)


def test_usage_adds_up_and_the_models_refuse_what_openai_does_not_send() -> None:
    assert Usage.total([Usage.of(1, 2), Usage.of(3, 4)]) == Usage.of(4, 6)
    assert Usage.of(4, 6).total_tokens == 10
    with pytest.raises(ValidationError):
        ChatDelta(role="user")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ChatDelta(content="a", extra=1)  # type: ignore[call-arg]


def _entry(data: bytes) -> dict[str, Any]:
    """A chat-style logprobs entry as the engine builds it: the token's text, with U+FFFD for a cut character."""
    return {"token": data.decode("utf-8", "replace"), "logprob": -0.5, "bytes": list(data)}


def test_text_offsets_count_characters_of_the_text_not_of_the_token_strings() -> None:
    # "xé a": "é" (c3 a9) comes in two tokens, each shown as U+FFFD; the text has 4 characters
    entries = [_entry(b"x"), _entry(b"\xc3"), _entry(b"\xa9 "), _entry(b"a")]
    assert [e["token"] for e in entries] == ["x", "\ufffd", "\ufffd ", "a"]
    assert text_logprobs(entries).text_offset == [0, 1, 1, 3], "a token inside a character starts where it does"
    # a stream carries the count on from chunk to chunk, a cut character included
    offsets = TextOffsets()
    streamed = [text_logprobs(entries[:2], offsets).text_offset, text_logprobs(entries[2:], offsets).text_offset]
    assert streamed == [[0, 1], [1, 3]]
    assert offsets.chars == len("xé a")


def test_text_offsets_fall_back_to_the_token_text_without_bytes() -> None:
    entries = [{"token": "ab", "logprob": -1.0}, {"token": "é", "logprob": -1.0}, {"token": "c", "logprob": -1.0}]
    assert text_logprobs(entries).text_offset == [0, 2, 3]
