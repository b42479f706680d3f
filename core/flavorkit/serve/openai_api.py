"""OpenAI's request fields mapped to flavorkit requests, and flavorkit results shaped as OpenAI objects.

Validation of the generation settings themselves (ranges, message roles, stop strings) is the
core's (:func:`flavorkit.schema.parse_request`), so the server and the pyfunc model reject the same
inputs with the same messages. This module adds what only the HTTP API has: ``model``, ``user``,
``stream``, ``stream_options``, ``max_completion_tokens`` and the refusal of unknown fields.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flavorkit.errors import InvalidRequest
from flavorkit.runtime import PreparedRequest
from flavorkit.schema import parse_request
from flavorkit.serve.errors import APIError, from_invalid_request
from flavorkit.signatures import CHAT

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "ParsedRequest",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "parse_chat",
    "parse_completion",
    "usage_chunk",
]

#: Generation settings passed on to the core as they are (``top_k`` is a flavorkit extension).
_SETTINGS = ("max_tokens", "temperature", "top_p", "n", "stop", "seed", "top_k")
_HTTP_ONLY = ("model", "max_completion_tokens", "stream", "stream_options", "user")
CHAT_FIELDS = ("messages", *_SETTINGS, *_HTTP_ONLY)
COMPLETION_FIELDS = ("prompt", *_SETTINGS, *_HTTP_ONLY)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated HTTP request: the core request plus the HTTP-only options."""

    raw: dict[str, Any]
    stream: bool
    include_usage: bool


def _bad(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _parse(body: Any, prompt_field: str, fields: tuple[str, ...], task: str, served_name: str) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise _bad(None, f"the request body must be a JSON object, got {type(body).__name__}", "invalid_body")
    unknown = [k for k in body if k not in fields]
    if unknown:
        raise _bad(
            unknown[0],
            f"unsupported field {unknown[0]!r}; supported fields: {', '.join(fields)}",
            "unknown_field",
        )
    body = {k: v for k, v in body.items() if v is not None}  # OpenAI treats null as "not given"
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise _bad("model", f"'model' must be a string, got {type(model).__name__}")
        if model != served_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {served_name!r}",
                param="model",
                code="model_not_found",
            )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", f"'user' must be a string, got {type(user).__name__}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"'stream' must be true or false, got {stream!r}")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _bad("stream_options", "'stream_options' is only allowed when 'stream' is true")
        if not isinstance(options, Mapping):
            raise _bad("stream_options", "'stream_options' must be an object like {\"include_usage\": true}")
        extra = [k for k in options if k != "include_usage"]
        if extra:
            message = f"unsupported field {extra[0]!r} in stream_options; supported: include_usage"
            raise _bad(f"stream_options.{extra[0]}", message, "unknown_field")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _bad("stream_options.include_usage", f"must be true or false, got {include_usage!r}")
    raw: dict[str, Any] = {k: body[k] for k in (prompt_field, *_SETTINGS) if k in body}
    if "max_completion_tokens" in body:
        mct = body["max_completion_tokens"]
        if "max_tokens" in raw and raw["max_tokens"] != mct:
            raise _bad(
                "max_completion_tokens",
                f"'max_completion_tokens' ({mct!r}) and 'max_tokens' ({raw['max_tokens']!r}) disagree; give one",
            )
        raw["max_tokens"] = mct
    try:
        parse_request(raw, task)
    except InvalidRequest as exc:
        if exc.field == "max_tokens" and "max_completion_tokens" in body:
            raise from_invalid_request(InvalidRequest("max_completion_tokens", exc.detail, exc.allowed)) from None
        raise from_invalid_request(exc) from None
    return ParsedRequest(raw=raw, stream=stream, include_usage=include_usage)


def parse_chat(body: Any, served_name: str) -> ParsedRequest:
    """Validate a ``/v1/chat/completions`` body; raise :class:`APIError` (400/404) naming the param."""
    if isinstance(body, Mapping) and "messages" not in body:
        raise _bad("messages", "'messages' is required: a non-empty list of {'role': ..., 'content': ...}")
    return _parse(body, "messages", CHAT_FIELDS, CHAT, served_name)


def parse_completion(body: Any, served_name: str) -> ParsedRequest:
    """Validate a ``/v1/completions`` body (text-generation models); raise :class:`APIError`."""
    if isinstance(body, Mapping):
        if "prompt" not in body:
            raise _bad("prompt", "'prompt' is required: a string")
        if not isinstance(body["prompt"], str):
            raise _bad("prompt", "'prompt' must be a string (lists of prompts and token arrays are not supported)")
    return _parse(body, "prompt", COMPLETION_FIELDS, "text-generation", served_name)


# -- responses ------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A fresh response id, ``chatcmpl-...`` or ``cmpl-...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, for ``created``."""
    return int(time.time())


def chat_completion(rid: str, created: int, model: str, p: PreparedRequest) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(zip(p.texts(), p.finish_reasons(), strict=True))
        ],
        "usage": p.usage(),
        "system_fingerprint": None,
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: dict[str, Any],
    finish: str | None,
    include_usage: bool,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` with one choice."""
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(rid: str, created: int, model: str, obj: str, p: PreparedRequest) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [],
        "usage": p.usage(),
    }


def completion(rid: str, created: int, model: str, p: PreparedRequest) -> dict[str, Any]:
    """A ``text_completion`` object."""
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(zip(p.texts(), p.finish_reasons(), strict=True))
        ],
        "usage": p.usage(),
        "system_fingerprint": None,
    }


def completion_chunk(
    rid: str, created: int, model: str, index: int, text: str, finish: str | None, include_usage: bool
) -> dict[str, Any]:
    """A streamed ``text_completion`` chunk with one choice."""
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk
