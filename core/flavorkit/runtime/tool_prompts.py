"""How a conversation with tools reaches a backend's ``encode``: the model's own template, or the generic form.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A chat template that renders ``tools`` (Qwen's, Llama 3.1's, Hermes fine-tunes') gets them, and
the history as Hugging Face's templates expect it: assistant ``tool_calls`` with the arguments as
an object, ``tool`` messages with their ``tool_call_id``. Many small models' templates (SmolLM2's,
Phi-3's) drop ``tools`` silently; they get the **generic form** instead, documented in the user
guide: the functions are listed in the system message (:data:`~flavorkit.runtime.guidance.GENERIC_TOOL_FORMAT`),
an earlier call is the assistant's text ``<tool_call>{...}</tool_call>``, and a result is a user
turn ``<tool_response>...</tool_response>``. Both forms read the answer the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flavorkit.runtime.guidance import CALL_CLOSE, CALL_OPEN, GENERIC_TOOL_FORMAT
from flavorkit.schema import ChatMessage, Tool

__all__ = ["PROBE_TOOLS", "generic_messages", "native_messages", "tool_dicts"]

#: The tool list that probes whether a template renders ``tools``: the prompt changes or it does not.
PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "flavorkit_probe",
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


def tool_dicts(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The request's tools as plain OpenAI dicts, unset fields left out."""
    return [tool.model_dump(exclude_none=True) for tool in tools]


def _plain(message: ChatMessage) -> dict[str, Any]:
    return {"role": message.role, "content": message.content or ""}


def native_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Messages for a template that renders tools: calls with object arguments, results with their id."""
    out: list[dict[str, Any]] = []
    for m in messages:
        item = _plain(m)
        if m.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)},
                }
                for call in m.tool_calls
            ]
        if m.role == "tool":
            item["tool_call_id"] = m.tool_call_id
        out.append(item)
    return out


def _call_text(name: str, arguments: str) -> str:
    body = json.dumps({"name": name, "arguments": json.loads(arguments)}, ensure_ascii=False)
    return CALL_OPEN + body + CALL_CLOSE


def generic_messages(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Messages in the generic form: the functions in the system message, calls and results as text.

    Consecutive tool results become one user turn, so templates that want user and assistant
    turns to alternate accept the conversation.
    """
    out: list[dict[str, Any]] = []
    if tools:
        listing = "\n".join(
            json.dumps(tool.function.model_dump(exclude_none=True, exclude={"strict"}), ensure_ascii=False)
            for tool in tools
        )
        described = GENERIC_TOOL_FORMAT.format(tools=listing)
        if messages and messages[0].role == "system":
            out.append({"role": "system", "content": f"{messages[0].content}\n\n{described}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": described})
    for m in messages:
        if m.role == "tool":
            result = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1]["content"].startswith("<tool_response>"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result})
            continue
        item = _plain(m)
        if m.tool_calls:
            calls = "\n".join(_call_text(c.function.name, c.function.arguments) for c in m.tool_calls)
            item["content"] = f"{item['content']}\n{calls}" if item["content"] else calls
        out.append(item)
    return out
