"""Request parsing details the chat contract promises: numpy values from DataFrames, flags, messages."""

from __future__ import annotations

import numpy as np
import pytest

from flavorkit.errors import InvalidRequest
from flavorkit.schema import ChatRequest, parse_request

OK = [{"role": "user", "content": "hi"}]


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
