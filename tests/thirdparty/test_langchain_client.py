"""LangChain's ``ChatOpenAI`` against ``flavorkit serve`` on SmolLM2: structured output (every method) and tools."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from serve_fixtures import running

langchain_openai = pytest.importorskip("langchain_openai")
pytest.importorskip("prometheus_client")

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from flavorkit.serve import create_app  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "smollm2-chat"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, smollm2_ort: Path) -> Iterator[str]:
    """``flavorkit serve`` on SmolLM2-135M-Instruct (onnx-cpu int4, greedy): the OpenAI base URL."""
    import flavorkit

    path = tmp_path_factory.mktemp("langchain-client") / NAME
    flavorkit.package(model=str(smollm2_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    with running(create_app(str(path))) as url:
        yield f"{url}/v1"


@pytest.fixture()
def chat(base_url: str) -> Any:
    return langchain_openai.ChatOpenAI(
        base_url=base_url, api_key="x", model=NAME, temperature=0, max_tokens=60, max_retries=0, timeout=120
    )


# -- with_structured_output -------------------------------------------------------------------------


class Capital(BaseModel):
    """The capital city of a country."""

    capital: str = Field(description="the capital city")


class Sentiment(BaseModel):
    """The sentiment of a text."""

    sentiment: Literal["positive", "negative", "neutral"]


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int


CAPITAL = ("What is the capital of France?", Capital(capital="Paris"))
SENTIMENT = ("Classify the sentiment of: 'I love this movie, it is wonderful!'", Sentiment(sentiment="positive"))
PERSON = ("Alice is 30 years old. Extract her name and age.", Person(name="Alice", age=30))

#: (method, question, expected): SmolLM2's greedy answers that are right. ``json_mode`` only asks for
#: some JSON object (the keys come from the prompt), so its questions ask for JSON.
STRUCTURED: list[tuple[str, str, BaseModel]] = [
    ("json_schema", *CAPITAL),
    ("json_schema", *SENTIMENT),
    ("json_schema", *PERSON),
    ("function_calling", *CAPITAL),
    ("function_calling", *SENTIMENT),
    ("json_mode", SENTIMENT[0] + " Answer in JSON.", SENTIMENT[1]),
    ("json_mode", PERSON[0] + " Answer in JSON.", PERSON[1]),
]


@pytest.mark.parametrize(
    ("method", "question", "expected"),
    STRUCTURED,
    ids=[f"{m}-{type(e).__name__}" for m, _, e in STRUCTURED],
)
def test_with_structured_output(chat: Any, method: str, question: str, expected: BaseModel) -> None:
    structured = chat.with_structured_output(type(expected), method=method, include_raw=True)
    result = structured.invoke(question)
    assert result["parsing_error"] is None
    assert result["parsed"] == expected
    raw: AIMessage = result["raw"]
    if method == "function_calling":
        assert raw.response_metadata["finish_reason"] == "tool_calls"
        assert [c["name"] for c in raw.tool_calls] == [type(expected).__name__]
    else:
        assert raw.response_metadata["finish_reason"] == "stop"
        assert raw.tool_calls == []
    # The plain form (no raw message) and a stream end in the same object.
    plain = chat.with_structured_output(type(expected), method=method)
    assert plain.invoke(question) == expected
    assert list(plain.stream(question))[-1] == expected


def test_with_structured_output_async(chat: Any) -> None:
    question, expected = CAPITAL
    structured = chat.with_structured_output(Capital, method="json_schema")
    assert asyncio.run(structured.ainvoke(question)) == expected


def test_with_structured_output_of_a_json_schema_dict(chat: Any) -> None:
    question, _ = PERSON
    schema = Person.model_json_schema()
    assert chat.with_structured_output(schema, method="json_schema").invoke(question) == {"name": "Alice", "age": 30}


# -- bind_tools and an agent loop -------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "15 degrees and cloudy" if city == "London" else "unknown"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


TOOLS = {"get_weather": get_weather, "add": add}


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
@pytest.mark.parametrize("tool_choice", ["any", "required", "get_weather"])
def test_bind_tools_forced_call(chat: Any, tool_choice: str, strict: bool) -> None:
    """``any``/``required`` and a tool's name force a call; ``strict`` only adds ``additionalProperties: false``."""
    bound = chat.bind_tools(list(TOOLS.values()), tool_choice=tool_choice, strict=strict)
    answer = bound.invoke("What is the weather in London?")
    assert answer.response_metadata["finish_reason"] == "tool_calls"
    assert answer.content == ""
    assert [(c["name"], c["args"]) for c in answer.tool_calls] == [("get_weather", {"city": "London"})]
    assert answer.tool_calls[0]["id"].startswith("call_")
    # Streamed, the call arrives whole and LangChain joins the chunks to the same call.
    joined: Any = None
    for chunk in bound.stream("What is the weather in London?"):
        joined = chunk if joined is None else joined + chunk
    assert [(c["name"], c["args"]) for c in joined.tool_calls] == [("get_weather", {"city": "London"})]


def test_bind_tools_auto_lets_the_model_answer_in_text(chat: Any) -> None:
    answer = chat.bind_tools(list(TOOLS.values())).invoke("What is 3 plus 4?")
    assert answer.response_metadata["finish_reason"] == "stop"
    assert answer.tool_calls == []
    assert answer.content == "3 + 4 = 7"


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
def test_agent_loop(chat: Any, strict: bool) -> None:
    """The model calls a tool, the tool's result goes back as a ToolMessage, and the model answers from it."""
    bound = chat.bind_tools(list(TOOLS.values()), tool_choice="any", strict=strict)
    messages: list[BaseMessage] = [HumanMessage("What is the weather in London?")]
    call = bound.invoke(messages)
    assert isinstance(call, AIMessage) and call.tool_calls
    messages.append(call)
    for tool_call in call.tool_calls:
        messages.append(TOOLS[tool_call["name"]].invoke(tool_call))  # a ToolMessage with the call's id
    assert isinstance(messages[-1], ToolMessage)
    assert messages[-1].tool_call_id == call.tool_calls[0]["id"]
    assert messages[-1].content == "15 degrees and cloudy"
    # The answer: SmolLM2 (greedy) quotes the tool result it was given.
    answer = chat.invoke(messages)
    assert answer.tool_calls == []
    assert answer.response_metadata["finish_reason"] == "stop"
    assert "15 degrees and cloudy" in answer.content
    # With the tools still bound and "none", the model may not call again: it answers in text.
    final = chat.bind_tools(list(TOOLS.values()), tool_choice="none").invoke(messages)
    assert final.tool_calls == []
    assert final.content
