"""Request validation: the pydantic models of the chat and text-generation contracts.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The core owns validation so that every backend rejects the same inputs with the same messages.
Errors are raised as :class:`~flavorkit.errors.InvalidRequest` naming the field (``messages[0].role``,
``max_tokens``, ...) and the allowed values.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError

from flavorkit.errors import InvalidRequest

__all__ = [
    "CHAT_COMPAT_FIELDS",
    "IGNORED_FIELDS",
    "MAX_DEPTH",
    "MAX_N",
    "MAX_SEED",
    "MAX_STOP",
    "NEUTRAL_VALUES",
    "GUIDED_FIELDS",
    "MAX_TOOLS",
    "ROLES",
    "TEXT_COMPAT_FIELDS",
    "ChatCompat",
    "ChatMessage",
    "ChatRequest",
    "GenerationParams",
    "Prediction",
    "NamedToolChoice",
    "ResponseFormat",
    "Tool",
    "TextCompat",
    "TextRequest",
    "UnsupportedFields",
    "format_validation_error",
    "generation_settings",
    "parse_request",
    "stop_tuple",
    "unknown_fields_error",
    "validate_call_params",
    "validate_generation_defaults",
    "validate_options",
]

#: Message roles; ``developer`` (OpenAI's newer name for ``system``) is read as ``system``.
ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_N = 16
MAX_STOP = 4
#: Deepest nesting of lists and objects a request may have (a valid one needs three levels).
MAX_DEPTH = 32
#: Seeds are 31-bit so every runtime can take them (onnxruntime-genai's random_seed is an int32).
MAX_SEED = 2**31 - 1
#: The most tools one request may declare.
MAX_TOOLS = 128


def _no_text_or_bool(value: Any) -> Any:
    """Numbers must be numbers: reject strings and booleans pydantic's lax mode would coerce."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"must be a number, got {type(value).__name__} {value!r}")
    item = getattr(value, "item", None)  # numpy scalars from DataFrames
    if callable(item) and not isinstance(value, (int, float)):
        value = item()
    return value


def _integer(value: Any) -> Any:
    value = _no_text_or_bool(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    return value


def _flag(value: Any) -> Any:
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, bool):
        value = item()
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _stop(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"must be a string or a list of strings, got {type(value).__name__}")


Integer = Annotated[int, BeforeValidator(_integer)]
Number = Annotated[float, BeforeValidator(_no_text_or_bool)]
Flag = Annotated[bool, BeforeValidator(_flag)]


def _developer_is_system(role: str) -> str:
    """OpenAI's ``developer`` role is its newer name for ``system``."""
    return "system" if role == "developer" else role


#: OpenAI's rule for function names.
_FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    """The function an earlier assistant turn called: its name and its arguments as a JSON string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=_FUNCTION_NAME)]
    arguments: str


class ToolCall(BaseModel):
    """A tool call of an earlier assistant turn (conversation history)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: Annotated[str, Field(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One chat turn; a list ``content`` of text parts was joined by :func:`parse_request`.

    ``content`` may be null on an assistant turn that made ``tool_calls``; a ``tool`` turn answers
    one of them by ``tool_call_id`` (checked by :func:`parse_request`).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Annotated[Literal["system", "user", "assistant", "developer", "tool"], AfterValidator(_developer_is_system)]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    #: OpenAI's assistant-turn extras that a local model has no use for (accepted, ignored).
    refusal: str | None = None


class GenerationParams(BaseModel):
    """Generation settings a request may set; packaging-time defaults use the same fields."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: Annotated[Integer, Field(gt=0)] | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[Integer, Field(ge=1)] | None = None
    n: Annotated[Integer, Field(ge=1, le=MAX_N)] | None = None
    stop: Annotated[str | list[Annotated[str, Field(min_length=1)]] | None, BeforeValidator(_stop)] = None
    seed: Annotated[Integer, Field(ge=0, le=MAX_SEED)] | None = None

    def stop_strings(self) -> tuple[str, ...]:
        """``stop`` as a tuple, whichever form the caller used."""
        return stop_tuple(self.stop)


def stop_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """A ``stop`` value (None, one string or a list of strings) as a tuple of strings."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


Penalty = Annotated[Number, Field(ge=-2.0, le=2.0)]


class _LooseObject(BaseModel):
    """An object whose ``type`` is checked; its other fields are not read."""

    model_config = ConfigDict(extra="allow")


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: a named JSON schema the answer must follow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Annotated[str, Field(strict=True, pattern=_FUNCTION_NAME)]
    description: StrictStr | None = None
    json_schema: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: Flag | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: plain text, any JSON object, or JSON following a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDefinition(BaseModel):
    """A function the model may call: its name, what it does and its parameters' JSON schema."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(strict=True, pattern=_FUNCTION_NAME)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: Flag | None = None


class Tool(BaseModel):
    """One entry of ``tools``: a function."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    """``tool_choice.function``."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(strict=True)]


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function the model must call."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: NamedFunction


class Prediction(_LooseObject):
    """OpenAI's predicted output, a latency hint that never changes the answer (ignored)."""

    type: Literal["content"]
    content: StrictStr | list[dict[str, Any]]


class TextCompat(BaseModel):
    """OpenAI fields both tasks accept: ``user`` is ignored, the others only at their neutral value."""

    user: StrictStr | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[Number, Field(ge=-100.0, le=100.0)]] | None = None


class ChatCompat(TextCompat):
    """OpenAI chat fields that change nothing for a local model, or that are accepted at a neutral value only."""

    store: Flag | None = None
    metadata: dict[str, StrictStr] | None = None
    service_tier: StrictStr | None = None
    parallel_tool_calls: Flag | None = None
    prediction: Prediction | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: Flag | None = None
    top_logprobs: Annotated[Integer, Field(ge=0, le=20)] | None = None


#: Fields accepted and ignored: they change nothing for a local model (types are still checked).
IGNORED_FIELDS = ("user", "store", "metadata", "service_tier", "parallel_tool_calls", "prediction")
#: Fields accepted only at the neutral value clients send by default, which each names here.
NEUTRAL_VALUES: dict[str, str] = {
    "presence_penalty": "0",
    "frequency_penalty": "0",
    "logit_bias": "{}",
    "tools": "[]",
    "tool_choice": "'none'",
    "response_format": "{'type': 'text'}",
    "logprobs": "false",
    "top_logprobs": "0",
    "modalities": "['text']",
}
TEXT_COMPAT_FIELDS = tuple(TextCompat.model_fields)
CHAT_COMPAT_FIELDS = tuple(ChatCompat.model_fields)


#: Fields honoured by a backend with guided decoding (a logits processor): on others, neutral only.
GUIDED_FIELDS = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "tool_choice",
    "response_format",
    "logprobs",
    "top_logprobs",
)


def _is_neutral(name: str, value: Any) -> bool:
    """Whether ``value`` of the neutral-only field ``name`` asks for nothing the model cannot do."""
    if name == "tool_choice":
        return bool(value == "none")
    if name == "response_format":
        return bool(value.type == "text")
    if name == "modalities":
        return set(value) <= {"text"}
    return not bool(value)  # 0, 0.0, {}, [], false


class ChatRequest(ChatCompat, GenerationParams):
    """An OpenAI-style chat completion request (the ``llm/v1/chat`` task)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: Flag | None = None


class TextRequest(TextCompat, GenerationParams):
    """A ``{"prompt": str}`` request (the ``text-generation`` task); always one completion."""

    prompt: Annotated[str, Field(strict=True)]
    n: Literal[1] | None = None
    stream: Flag | None = None


class UnsupportedFields(InvalidRequest):
    """Fields given a value the backend cannot honour yet; ``field`` is the first, ``fields`` all of them."""

    def __init__(self, fields: Sequence[str], backend: str | None = None) -> None:
        self.fields = list(fields)
        names = ", ".join(repr(f) for f in self.fields)
        who = f"backend {backend!r}" if backend else "this model's backend"
        verb = "is" if len(self.fields) == 1 else "are"
        allowed = "; ".join(f"{f}: {NEUTRAL_VALUES[f]} or absent" for f in self.fields)
        super().__init__(self.fields[0], f"{names} {verb} not supported by {who}", allowed=allowed)


def generation_settings(req: ChatRequest | TextRequest) -> dict[str, Any]:
    """The generation settings a request sets explicitly (the compatibility fields change none)."""
    return req.model_dump(exclude_none=True, include=set(GenerationParams.model_fields))


def unknown_fields_error(names: Sequence[str], allowed: Sequence[str]) -> InvalidRequest:
    """One error for unknown fields: the first is ``field``, the message names every one."""
    message = "unknown field"
    if len(names) > 1:
        message += " (also unknown: " + ", ".join(repr(n) for n in names[1:]) + ")"
    return InvalidRequest(names[0], message, allowed=", ".join(allowed))


_ALLOWED = {
    "role": ", ".join(repr(r) for r in ROLES),
    "temperature": "a number from 0 to 2",
    "top_p": "a number greater than 0 and at most 1",
    "top_k": "an integer of at least 1",
    "max_tokens": "an integer of at least 1",
    "n": f"an integer from 1 to {MAX_N}",
    "stop": f"a non-empty string or a list of at most {MAX_STOP} non-empty strings",
    "seed": f"an integer from 0 to {MAX_SEED}",
    "stream": "true or false",
    "content": "a string or a non-empty list of {'type': 'text', 'text': ...} parts",
    "user": "a string",
    "store": "true or false",
    "metadata": "an object whose values are strings",
    "service_tier": "a string",
    "parallel_tool_calls": "true or false",
    "prediction": "{'type': 'content', 'content': ...}",
    "modalities": "['text']",
    "presence_penalty": "a number from -2 to 2",
    "frequency_penalty": "a number from -2 to 2",
    "logit_bias": "an object of token ids to numbers from -100 to 100",
    "tools": f"a list of at most {MAX_TOOLS} {{'type': 'function', 'function': {{'name', 'parameters', ...}}}}",
    "type": "'function'",
    "name": "1 to 64 of a-z, A-Z, 0-9, _ and -",
    "tool_choice": "'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
    "response_format": (
        "{'type': 'text'}, {'type': 'json_object'} or {'type': 'json_schema', 'json_schema': {'name', 'schema'}}"
    ),
    "logprobs": "true or false",
    "top_logprobs": "an integer from 0 to 20, with logprobs: true",
    "tool_call_id": "the id of a tool call made by an earlier assistant message",
    "messages": "a non-empty list of {'role': ..., 'content': ...} objects",
    "prompt": "a string",
}


#: Fields that are objects of the client's own keys.
_MAPS = ("metadata", "logit_bias")


def _is_branch_label(part: int | str) -> bool:
    """Pydantic puts union branches ("str", "list[str]", "function-before[...]") into error locations."""
    return isinstance(part, str) and (part == "str" or "[" in part or part.startswith("function-"))


def _field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_branch_label(part):
            path += f".{part}" if path else str(part)
    return path or "request"


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel]:
    """The pydantic model of the object at ``loc`` (``["tools", 0, "function"]``), for the names it allows."""
    current = model
    for part in loc:
        if not isinstance(part, str) or part not in current.model_fields:
            continue
        found = _inner_model(current.model_fields[part].annotation)
        if found is not None:
            current = found
    return current


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``list[X] | None``, ``Annotated[X, ...]`` and the like."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def format_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> InvalidRequest:
    """Turn pydantic's error list into one :class:`InvalidRequest` naming the first bad field."""
    errors = exc.errors(include_url=False)
    # Prefer the most specific error (deepest location): unions report one error per branch.
    first = max(errors, key=lambda e: len([p for p in e["loc"] if not str(p).startswith("function-")]))
    loc = [p for p in first["loc"] if not _is_branch_label(p)]
    field = _field_path(loc, prefix)
    leaf = next((p for p in reversed(loc) if isinstance(p, str)), "")
    kind = first["type"]
    if kind == "extra_forbidden":
        known = list(_model_at(model, loc[:-1]).model_fields)
        extras = [_field_path(e["loc"], prefix) for e in errors if e["type"] == "extra_forbidden"]
        return unknown_fields_error([field, *(f for f in extras if f != field)], known)
    if kind == "missing":
        return InvalidRequest(field, "is required", allowed=_ALLOWED.get(leaf))
    message = first["msg"]
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 and leaf != "stop" else ""
    allowed = _ALLOWED.get(leaf)
    if loc and loc[0] in _MAPS:  # the leaf is the client's own key: describe the field
        allowed = _ALLOWED[str(loc[0])]
    if model is TextRequest and leaf == "n":
        allowed = "1 (text-generation returns one string per prompt)"
    if message.startswith("Value error, "):  # our own validators already show the input
        return InvalidRequest(field, message[len("Value error, ") :] + extra, allowed=allowed)
    got = first.get("input")
    shown = repr(got) if len(repr(got)) < 80 else type(got).__name__
    return InvalidRequest(field, f"{message}; got {shown}{extra}", allowed=allowed)


def _clean(value: Any, prefix: str = "") -> Any:
    """Turn numpy arrays/scalars and NaN cells (from DataFrames) into plain Python, checking the text.

    Nothing valid is nested more than a few levels, so anything deeper than :data:`MAX_DEPTH` is
    refused before any recursive walk (this one, pydantic's, a repr) can exhaust the stack; a string
    with a lone surrogate (not Unicode text, so no tokenizer can encode it) is refused here too.
    Both errors name the field.
    """
    return _clean_at(value, [prefix] if prefix else [], 0)


def _clean_at(value: Any, loc: list[int | str], depth: int) -> Any:
    if isinstance(value, str):
        _check_text(value, loc)
        return value
    if depth >= MAX_DEPTH and (isinstance(value, (Mapping, list, tuple)) or getattr(value, "ndim", 0) > 0):
        # Name the field that holds the nesting, not the path down to where the limit was hit.
        named = max((i for i, part in enumerate(loc) if isinstance(part, str)), default=-1)
        raise InvalidRequest(
            _field_path(loc[: named + 1]),
            f"is nested more than {MAX_DEPTH} levels deep",
            allowed=_ALLOWED.get(str(loc[named])) if named >= 0 else None,
        )
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(k)
            _check_text(key, [*loc, _printable(key)], what="field name")
            if not _is_missing(v):
                out[key] = _clean_at(v, [*loc, key], depth + 1)
        return out
    if hasattr(value, "tolist") and not isinstance(value, bytes):
        value = value.tolist()
        if isinstance(value, str):
            _check_text(value, loc)
    if isinstance(value, (list, tuple)):
        return [_clean_at(v, [*loc, i], depth + 1) for i, v in enumerate(value)]
    return value


def _printable(text: str) -> str:
    """``text`` with lone surrogates written as escapes, so messages about it are valid text."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, loc: list[int | str], what: str = "text") -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            _field_path(loc),
            f"{what} is not valid Unicode: lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}",
            allowed="Unicode text without lone UTF-16 surrogates",
        ) from None


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import numpy as np
        import pandas as pd
    except ImportError:  # pragma: no cover - numpy and pandas always come with mlflow
        return False
    # pandas' missing markers: NA in nullable columns (Int64, boolean, string), NaT in datetimes.
    return value is pd.NA or value is pd.NaT or (isinstance(value, np.floating) and bool(np.isnan(value)))


def parse_request(
    row: Any, task: str, backend: str | None = None, *, guided: bool = False
) -> ChatRequest | TextRequest:
    """Validate one input row for ``task``; raise :class:`InvalidRequest` naming the bad field.

    Unknown fields, and fields set to a value ``backend`` cannot honour (:class:`UnsupportedFields`),
    are named all at once. ``guided``: the backend applies logits processors, so tools, response
    formats, penalties and ``logit_bias`` are honoured (:data:`GUIDED_FIELDS`).
    """
    model: type[ChatRequest] | type[TextRequest] = ChatRequest if task == "llm/v1/chat" else TextRequest
    if isinstance(row, str) and model is TextRequest:
        row = {"prompt": row}
    if not isinstance(row, Mapping):
        expected = "'messages'" if model is ChatRequest else "'prompt'"
        raise InvalidRequest("request", f"each input must be an object with {expected}, got {type(row).__name__}")
    data = _clean(row)
    unknown = [k for k in data if k not in model.model_fields]
    if unknown:  # every one at once, as OpenAI's clients show only the first error
        raise unknown_fields_error(unknown, list(model.model_fields))
    if model is ChatRequest:
        data = _join_text_parts(data)
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, model) from None
    if len(req.stop_strings()) > MAX_STOP:
        raise InvalidRequest("stop", f"{len(req.stop_strings())} stop strings given", allowed=_ALLOWED["stop"])
    honoured = GUIDED_FIELDS if guided else ()
    unsupported = [k for k in data if k in NEUTRAL_VALUES and k not in honoured and not _is_neutral(k, getattr(req, k))]
    if unsupported:
        raise UnsupportedFields(unsupported, backend)
    if isinstance(req, ChatRequest):
        _check_conversation(req)
        _check_tools(req)
    if req.logit_bias:
        for key in req.logit_bias:
            if not key.isdigit():
                raise InvalidRequest(f"logit_bias.{key}", "is not a token id", allowed=_ALLOWED["logit_bias"])
    return req


def _check_conversation(req: ChatRequest) -> None:
    """Content where it is required, tool calls only on assistant turns, tool results answering a call."""
    called: set[str] = set()
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        if m.content is None and not (m.role == "assistant" and m.tool_calls):
            raise InvalidRequest(f"{where}.content", "is required", allowed=_ALLOWED["content"])
        if m.tool_calls and m.role != "assistant":
            raise InvalidRequest(
                f"{where}.tool_calls", f"only an assistant message may carry tool_calls, not a {m.role!r} one"
            )
        for j, call in enumerate(m.tool_calls or ()):
            try:
                arguments = json.loads(call.function.arguments)
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                raise InvalidRequest(
                    f"{where}.tool_calls[{j}].function.arguments",
                    "is not a JSON object",
                    allowed="a JSON object as a string",
                )
            called.add(call.id)
        if m.role == "tool":
            if not m.tool_call_id:
                raise InvalidRequest(f"{where}.tool_call_id", "is missing", allowed=_ALLOWED["tool_call_id"])
            if m.tool_call_id not in called:
                raise InvalidRequest(
                    f"{where}.tool_call_id",
                    f"{m.tool_call_id!r} answers no tool call of an earlier assistant message",
                    allowed=_ALLOWED["tool_call_id"],
                )
        elif m.tool_call_id is not None:
            raise InvalidRequest(
                f"{where}.tool_call_id", f"only a 'tool' message has a tool_call_id, not a {m.role!r} one"
            )


def _check_tools(req: ChatRequest) -> None:
    """``tools``, ``tool_choice`` and ``response_format`` agree with each other."""
    tools = req.tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest("tools", f"{len(tools)} tools given", allowed=_ALLOWED["tools"])
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.function.name in seen:
            raise InvalidRequest(f"tools[{i}].function.name", f"{tool.function.name!r} is declared twice")
        seen.add(tool.function.name)
    choice = req.tool_choice
    if choice is not None and choice != "none" and not tools:
        raise InvalidRequest(
            "tool_choice", f"{_shown_choice(choice)} needs tools, and none are given", allowed="'none', or give tools"
        )
    if isinstance(choice, NamedToolChoice) and choice.function.name not in seen:
        raise InvalidRequest(
            "tool_choice.function.name",
            f"{choice.function.name!r} is not among the tools",
            allowed=", ".join(repr(n) for n in seen),
        )
    if req.top_logprobs and not req.logprobs:
        raise InvalidRequest("top_logprobs", "needs logprobs: true", allowed=_ALLOWED["top_logprobs"])
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest("response_format.json_schema", "is missing", allowed="{'name': ..., 'schema': {...}}")


def _shown_choice(choice: Any) -> str:
    return repr(choice) if isinstance(choice, str) else f"a named function ({choice.function.name!r})"


_PART = "{'type': 'text', 'text': ...}"


def _join_text_parts(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each message's list ``content`` of text parts joined into one string (as OpenAI does).

    A part of another type (``image_url``, ``input_audio``, ``file``, ...) is refused naming it
    (``messages[1].content[2].type``); what is not a list of messages is left to pydantic to name.
    """
    messages = data.get("messages")
    if not isinstance(messages, list):
        return data
    joined: list[Any] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            joined.append(message)
            continue
        where = f"messages[{i}].content"
        if not content:
            raise InvalidRequest(where, "is an empty list", allowed=_ALLOWED["content"])
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise InvalidRequest(f"{where}[{j}]", f"must be an object, got {type(part).__name__}", allowed=_PART)
            kind = part.get("type")
            if kind != "text":
                shown = repr(kind) if isinstance(kind, str) else type(kind).__name__
                raise InvalidRequest(
                    f"{where}[{j}].type",
                    f"content part type {shown} is not supported: this model reads text only",
                    allowed="'text'",
                )
            extra = [k for k in part if k not in ("type", "text")]
            if extra:
                raise unknown_fields_error([f"{where}[{j}].{k}" for k in extra], ["type", "text"])
            text = part.get("text")
            if not isinstance(text, str):
                got = "missing" if text is None else f"got {type(text).__name__}"
                raise InvalidRequest(f"{where}[{j}].text", f"must be a string, {got}", allowed="a string")
            texts.append(text)
        joined.append({**message, "content": "".join(texts)})
    return {**data, "messages": joined}


def validate_generation_defaults(generation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check packaging-time ``generation=`` defaults with the request rules (fields ``generation.*``)."""
    if generation is None:
        return {}
    if not isinstance(generation, Mapping):
        raise InvalidRequest("generation", f"must be a dict, got {type(generation).__name__}")
    return _settings_under(generation, "generation")


def _settings_under(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` checked as generation settings with the request rules, errors naming ``prefix.FIELD``."""
    try:
        parsed = GenerationParams.model_validate(_clean(values, prefix=prefix))
    except ValidationError as exc:
        raise format_validation_error(exc, GenerationParams, prefix=prefix) from None
    if len(parsed.stop_strings()) > MAX_STOP:
        raise InvalidRequest(f"{prefix}.stop", "too many stop strings", allowed=_ALLOWED["stop"])
    return parsed.model_dump(exclude_none=True)


def validate_call_params(params: Mapping[str, Any] | None, *, chat: bool) -> dict[str, Any]:
    """MLflow's ``params`` of one ``predict`` call, checked as generation settings (fields ``params.*``).

    They sit between the packaged defaults and each request's own fields. Unset ones (``None``, or
    the empty ``stop`` list that MLflow fills in as the declared default) are left out.
    """
    given = {k: v for k, v in (params or {}).items() if v is not None}
    stop = given.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not hasattr(stop, "__len__") or not all(isinstance(s, str) for s in stop):
            raise InvalidRequest("params.stop", "must be a list of strings", allowed=_ALLOWED["stop"])
        if len(stop) == 0:  # MLflow's declared default: unset
            del given["stop"]
    if not given:
        return {}
    if not chat and given.get("n", 1) != 1:
        raise InvalidRequest("params.n", "text-generation returns one string per prompt", allowed="1")
    if "stop" in given and not isinstance(given["stop"], str):
        given["stop"] = list(given["stop"])
    return _settings_under(given, "params")


def validate_options(backend: str, schema: type[BaseModel] | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate backend ``options`` against the backend's pydantic schema (fields ``options.*``)."""
    if not isinstance(options, Mapping):
        raise InvalidRequest("options", f"must be a dict, got {type(options).__name__}")
    if schema is None:
        if options:
            raise InvalidRequest(
                f"options.{next(iter(options))}", f"backend {backend!r} takes no options", allowed="none"
            )
        return {}
    try:
        parsed = schema.model_validate(dict(options))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = _field_path(list(err["loc"]), "options")
        if err["type"] == "extra_forbidden":
            raise InvalidRequest(
                field, f"unknown option for backend {backend!r}", allowed=", ".join(schema.model_fields)
            ) from None
        raise InvalidRequest(field, err["msg"]) from None
    return parsed.model_dump()
