"""Small request/response helpers shared by the test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flavorkit.registry import get_backend
from flavorkit.runtime import LoadedModel

#: Prompts of different lengths and scripts, for batch and streaming tests.
PROMPTS = [
    "Hi",
    "Summarise: packaging a model means writing down everything needed to run it again.",
    "Unicode: café, Zürich, 日本 🙂",
    "Tell me about batching and streaming in two short sentences, please.",
    "7",
]


def chat(text: str, **settings: Any) -> dict[str, Any]:
    """A one-message chat request with optional generation settings."""
    return {"messages": [{"role": "user", "content": text}], **settings}


def content(response: dict[str, Any], i: int = 0) -> str:
    """The text of choice ``i`` of a chat completion."""
    return str(response["choices"][i]["message"]["content"])


def joined(chunks: list[dict[str, Any]]) -> str:
    """The text of a list of chat.completion.chunk dicts, concatenated."""
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def load_engine(backend: str, folder: Path, **options: Any) -> LoadedModel:
    """A backend handle wrapped in the core contract, as a packaged model would be (minus MLflow)."""
    be = get_backend(backend)
    handle = be.load({"model": str(folder)}, be.validate_options(options))
    return LoadedModel(be, handle, defaults={"temperature": 0.0})
