"""OpenAI's request fields mapped to flavorkit requests, and flavorkit results shaped as OpenAI objects.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

Validation of the generation settings themselves (ranges, message roles, stop strings) is the
core's (:func:`flavorkit.schema.parse_request`), so the server and the pyfunc model reject the same
inputs with the same messages. This module adds what only the HTTP API has: ``model``, ``user``,
``stream``, ``stream_options``, ``max_completion_tokens``, the refusal of unknown fields (all named
at once), and ``/v1/completions``' list of prompts (one core request per prompt, so they share
batches). OpenAI's compatibility fields (``store``, ``tools: []``, ``logprobs: false``, ...) go to the
core with the settings, which ignores them or accepts only their neutral values, as for pyfunc.

The response objects are built by :mod:`flavorkit.responses` in its OpenAI dialect, by the same
builders that shape the pyfunc model's answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flavorkit import responses
from flavorkit.errors import InvalidRequest
from flavorkit.responses import Usage, new_id, now
from flavorkit.runtime.choices import PreparedRequest
from flavorkit.schema import (
    CHAT_COMPAT_FIELDS,
    TEXT_COMPAT_FIELDS,
    ChatMessage,
    ChatRequest,
    TextRequest,
    UnsupportedFields,
    parse_request,
)
from flavorkit.serve.errors import APIError, from_invalid_request
from flavorkit.signatures import CHAT

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "ChatCompletionRequest",
    "CompletionRequest",
    "ModelCard",
    "ModelList",
    "ParsedRequest",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "model_card",
    "model_list",
    "new_id",
    "now",
    "parse_chat",
    "parse_completion",
    "prompt_error",
    "usage",
    "usage_chunk",
]

#: Generation settings passed on to the core as they are (``top_k`` is a flavorkit extension).
_SETTINGS = ("max_tokens", "temperature", "top_p", "n", "stop", "seed", "top_k")
_HTTP_ONLY = ("model", "max_completion_tokens", "stream", "stream_options")
CHAT_FIELDS = ("messages", *_SETTINGS, *_HTTP_ONLY, *CHAT_COMPAT_FIELDS)
#: ``/v1/completions``' legacy ``logprobs``: an integer, the alternatives to list per token.
MAX_TEXT_LOGPROBS = 5
COMPLETION_FIELDS = ("prompt", *_SETTINGS, *_HTTP_ONLY, "logprobs", *TEXT_COMPAT_FIELDS)


# -- the request bodies, described for the OpenAPI document -----------------------------------------
#
# The bodies are checked by hand below (HTTP-only fields, then the core's ``parse_request``), so
# these models only describe them: the core's request models plus the HTTP-only fields. A test
# checks that their fields are exactly CHAT_FIELDS and COMPLETION_FIELDS.

_PositiveInt = Annotated[int, Field(gt=0)]
_Text = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    """``stream_options``: with ``include_usage``, a last chunk carries the usage (streams only)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = None


class TextPart(BaseModel):
    """One part of a list ``content``: text (the parts are joined; other part types are refused)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class RequestMessage(ChatMessage):
    """A chat turn as the HTTP API takes it: ``content`` is a string or a non-empty list of text parts."""

    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = None  # type: ignore[assignment]


class ChatCompletionRequest(ChatRequest):
    """The body of ``POST /v1/chat/completions``: the core's chat request plus the HTTP-only fields.

    ``null`` is taken as "not given" for every field but ``messages``.
    """

    messages: Annotated[list[RequestMessage], Field(min_length=1)]  # type: ignore[assignment]
    model: str | None = None
    max_completion_tokens: _PositiveInt | None = None
    stream_options: StreamOptions | None = None


class CompletionRequest(TextRequest):
    """The body of ``POST /v1/completions``: a prompt or a list of prompts, and the HTTP-only fields.

    ``logprobs`` is the legacy integer (alternatives listed per token); ``null`` is "not given".
    """

    prompt: _Text | Annotated[list[_Text], Field(min_length=1)]  # type: ignore[assignment]
    model: str | None = None
    max_completion_tokens: _PositiveInt | None = None
    stream_options: StreamOptions | None = None
    logprobs: Literal[False] | Annotated[int, Field(ge=0, le=MAX_TEXT_LOGPROBS)] | None = None


class ModelCard(BaseModel):
    """An entry of ``GET /v1/models``: the served model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """The answer of ``GET /v1/models``: the one model this server serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_card(name: str, created: int) -> dict[str, Any]:
    """The ``model`` object of the served model (``owned_by`` is ``flavorkit``)."""
    return ModelCard(id=name, created=created, owned_by="flavorkit").model_dump()


def model_list(name: str, created: int) -> dict[str, Any]:
    """The ``list`` object of ``GET /v1/models``."""
    return ModelList(data=[ModelCard(id=name, created=created, owned_by="flavorkit")]).model_dump()


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A validated HTTP request: its core requests (one per prompt) plus the HTTP-only options.

    ``raws`` holds one core request for a chat body or a single ``prompt`` string, and one per
    element when ``prompt`` is a list (``listed``); choice ``j`` of prompt ``i`` is then answered
    as index ``i * n + j``, as OpenAI numbers them.
    """

    raws: tuple[dict[str, Any], ...]
    stream: bool
    include_usage: bool
    listed: bool = False
    tokens_field: str = "max_tokens"  # what the client called the token limit, for errors found later
    #: ``/v1/completions``' ``logprobs``: how many alternatives to list per token (None: no logprobs).
    text_logprobs: int | None = None

    @property
    def raw(self) -> dict[str, Any]:
        """The first (for chat and a single prompt, the only) core request."""
        return self.raws[0]


def prompt_error(exc: InvalidRequest, i: int) -> InvalidRequest:
    """An error about element ``i`` of a list ``prompt``: ``prompt`` becomes ``prompt[i]``; others say which.

    Unsupported fields are the whole request's, not one prompt's, and stay as they are.
    """
    if isinstance(exc, UnsupportedFields):
        return exc
    if exc.field == "prompt":
        return InvalidRequest(f"prompt[{i}]", exc.detail, exc.allowed)
    return InvalidRequest(exc.field, f"for prompt[{i}]: {exc.detail}", exc.allowed)


def _bad(param: str | None, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _parse(
    body: Any,
    prompt_field: str,
    fields: tuple[str, ...],
    task: str,
    served_name: str,
    prompts: list[str] | None = None,
    backend: str | None = None,
    guided: bool = False,
) -> ParsedRequest:
    if not isinstance(body, Mapping):
        raise _bad(None, f"the request body must be a JSON object, got {type(body).__name__}", "invalid_body")
    unknown = [k for k in body if k not in fields]
    if unknown:  # every one at once: OpenAI's clients show one error
        listed = ", ".join(repr(k) for k in unknown)
        raise _bad(
            unknown[0],
            f"unsupported field{'s' if len(unknown) > 1 else ''} {listed}; supported fields: {', '.join(fields)}",
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
        wanted = options.get("include_usage")
        if wanted is not None and not isinstance(wanted, bool):  # null is "not given"
            raise _bad("stream_options.include_usage", f"must be true or false, got {wanted!r}")
        include_usage = bool(wanted)
    compat = CHAT_COMPAT_FIELDS if task == CHAT else TEXT_COMPAT_FIELDS
    passed = (prompt_field, *_SETTINGS, *compat)
    raw: dict[str, Any] = {k: v for k, v in body.items() if k in passed}  # the client's order, for errors
    if "max_completion_tokens" in body:
        mct = body["max_completion_tokens"]
        if "max_tokens" in raw and raw["max_tokens"] != mct:
            raise _bad(
                "max_completion_tokens",
                f"'max_completion_tokens' ({mct!r}) and 'max_tokens' ({raw['max_tokens']!r}) disagree; give one",
            )
        raw["max_tokens"] = mct
    raws = (raw,) if prompts is None else tuple({**raw, prompt_field: p} for p in prompts)
    for i, one in enumerate(raws):
        try:
            parse_request(one, task, backend, guided=guided)
        except InvalidRequest as exc:
            if exc.field == "max_tokens" and "max_completion_tokens" in body:
                exc = InvalidRequest("max_completion_tokens", exc.detail, exc.allowed)
            raise from_invalid_request(prompt_error(exc, i) if prompts is not None else exc) from None
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return ParsedRequest(raws, stream, include_usage, prompts is not None, tokens_field)


def parse_chat(body: Any, served_name: str, backend: str | None = None, guided: bool = False) -> ParsedRequest:
    """Validate a ``/v1/chat/completions`` body; raise :class:`APIError` (400/404) naming the param."""
    if isinstance(body, Mapping) and "messages" not in body:
        raise _bad("messages", "'messages' is required: a non-empty list of {'role': ..., 'content': ...}")
    return _parse(body, "messages", CHAT_FIELDS, CHAT, served_name, backend=backend, guided=guided)


_PROMPT_FORMS = "a non-empty string or a non-empty list of non-empty strings"


def _is_tokens(value: Any) -> bool:
    """A token id, or a list of them: OpenAI's token-array prompts."""
    if isinstance(value, list):
        return bool(value) and all(_is_tokens(t) and not isinstance(t, list) for t in value)
    return isinstance(value, int) and not isinstance(value, bool)


def _prompts(prompt: Any, max_prompts: int | None) -> list[str] | None:
    """The prompts of a list ``prompt`` (None for a single string); raise a 400 naming the element."""
    if isinstance(prompt, str):
        if not prompt:
            raise _bad("prompt", f"'prompt' is empty; allowed: {_PROMPT_FORMS}")
        return None
    if not isinstance(prompt, list):
        raise _bad("prompt", f"'prompt' must be {_PROMPT_FORMS}, got {type(prompt).__name__}")
    if not prompt:
        raise _bad("prompt", f"'prompt' is an empty list; allowed: {_PROMPT_FORMS}")
    if any(_is_tokens(p) for p in prompt):
        message = f"token arrays are not supported as 'prompt'; allowed: {_PROMPT_FORMS}"
        raise _bad("prompt", message, "unsupported_value")
    if max_prompts is not None and len(prompt) > max_prompts:
        raise _bad(
            "prompt",
            f"'prompt' lists {len(prompt)} prompts; this server takes at most {max_prompts} in one request",
        )
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise _bad(f"prompt[{i}]", f"'prompt[{i}]' must be a string, got {type(p).__name__}")
        if not p:
            raise _bad(f"prompt[{i}]", f"'prompt[{i}]' is empty; allowed: a non-empty string")
    return list(prompt)


def parse_completion(
    body: Any, served_name: str, max_prompts: int | None = None, backend: str | None = None, guided: bool = False
) -> ParsedRequest:
    """Validate a ``/v1/completions`` body (text-generation models); raise :class:`APIError`.

    ``prompt`` is a string or a list of strings (one core request each, at most ``max_prompts``);
    token arrays are refused with a 400 naming ``prompt``.
    """
    prompts = None
    text_logprobs = None
    if isinstance(body, Mapping):
        if body.get("prompt") is None:
            raise _bad("prompt", f"'prompt' is required: {_PROMPT_FORMS}")
        prompts = _prompts(body["prompt"], max_prompts)
        text_logprobs = _text_logprobs(body.get("logprobs"), backend, guided)
    parsed = _parse(body, "prompt", COMPLETION_FIELDS, "text-generation", served_name, prompts, backend, guided)
    return dataclasses.replace(parsed, text_logprobs=text_logprobs)


def _text_logprobs(value: Any, backend: str | None, guided: bool) -> int | None:
    """The legacy ``logprobs`` of ``/v1/completions``: an integer from 0 to 5 (null and false: none)."""
    if value is None or value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TEXT_LOGPROBS:
        raise _bad("logprobs", f"'logprobs' must be an integer from 0 to {MAX_TEXT_LOGPROBS}, got {value!r}")
    if not guided:
        raise from_invalid_request(UnsupportedFields(["logprobs"], backend))
    return value


# -- responses: OpenAI's shapes, built by flavorkit.responses -------------------------------------


def _choices(ps: Sequence[PreparedRequest]) -> list[tuple[str, str | None]]:
    """``(text, finish_reason)`` of every choice of every prompt, in answer order."""
    return [pair for p in ps for pair in zip(p.texts(), p.finish_reasons(), strict=True)]


def chat_completion(rid: str, created: int, model: str, p: PreparedRequest) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    return responses.chat_completion(
        rid, created, model, _choices([p]), usage([p]), tool_calls=p.tool_calls(), logprobs=p.logprobs()
    )


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    delta: Mapping[str, Any],
    finish: str | None,
    include_usage: bool,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` of one choice; ``delta``: ``role``, ``content``, ``tool_calls``, ``logprobs``."""
    return responses.chat_chunk(rid, created, model, index, finish_reason=finish, include_usage=include_usage, **delta)


def usage(ps: Sequence[PreparedRequest]) -> Usage:
    """OpenAI usage over every prompt of a request: each prompt counted once, every choice's tokens."""
    return Usage.total(Usage.model_validate(p.usage()) for p in ps)


def usage_chunk(rid: str, created: int, model: str, obj: str, ps: Sequence[PreparedRequest]) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
    return responses.usage_chunk(rid, created, model, obj, usage(ps))


def completion(rid: str, created: int, model: str, ps: Sequence[PreparedRequest]) -> dict[str, Any]:
    """A ``text_completion`` object: the choices of every prompt in order, the usage summed."""
    logprobs = [lp for p in ps for lp in p.logprobs()]
    return responses.text_completion(rid, created, model, _choices(ps), usage(ps), logprobs=logprobs)


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish: str | None,
    include_usage: bool,
    logprobs: responses.TextLogprobs | None = None,
) -> dict[str, Any]:
    """A streamed ``text_completion`` chunk with one choice (``logprobs`` of its tokens, if asked for)."""
    return responses.text_chunk(
        rid, created, model, index, text, finish, include_usage=include_usage, logprobs=logprobs
    )
