"""Small request/response helpers shared by the test modules."""

from __future__ import annotations

from typing import Any


def chat(text: str, **settings: Any) -> dict[str, Any]:
    """A one-message chat request with optional generation settings."""
    return {"messages": [{"role": "user", "content": text}], **settings}


def content(response: dict[str, Any], i: int = 0) -> str:
    """The text of choice ``i`` of a chat completion."""
    return str(response["choices"][i]["message"]["content"])


def joined(chunks: list[dict[str, Any]]) -> str:
    """The text of a list of chat.completion.chunk dicts, concatenated."""
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
