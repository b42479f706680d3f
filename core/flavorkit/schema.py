"""Request validation: the pydantic models of the chat and text-generation contracts.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The core owns validation so that every backend rejects the same inputs with the same messages.
Errors are raised as :class:`~flavorkit.errors.InvalidRequest` naming the field (``messages[0].role``,
``max_tokens``, ...) and the allowed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from flavorkit.errors import InvalidRequest

__all__ = [
    "MAX_DEPTH",
    "MAX_N",
    "MAX_SEED",
    "MAX_STOP",
    "ROLES",
    "ChatMessage",
    "ChatRequest",
    "GenerationParams",
    "TextRequest",
    "format_validation_error",
    "parse_request",
    "stop_tuple",
    "validate_generation_defaults",
    "validate_options",
]

ROLES = ("system", "user", "assistant")
MAX_N = 16
MAX_STOP = 4
#: Deepest nesting of lists and objects a request may have (a valid one needs three levels).
MAX_DEPTH = 32
#: Seeds are 31-bit so every runtime can take them (onnxruntime-genai's random_seed is an int32).
MAX_SEED = 2**31 - 1


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


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


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


class ChatRequest(GenerationParams):
    """An OpenAI-style chat completion request (the ``llm/v1/chat`` task)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: Flag | None = None


class TextRequest(GenerationParams):
    """A ``{"prompt": str}`` request (the ``text-generation`` task); always one completion."""

    prompt: Annotated[str, Field(strict=True)]
    n: Literal[1] | None = None
    stream: Flag | None = None


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
    "content": "a string",
    "messages": "a non-empty list of {'role': ..., 'content': ...} objects",
    "prompt": "a string",
}


def _is_branch_label(part: int | str) -> bool:
    """Pydantic puts union branches ("str", "list[str]", "function-before[...]") into error locations."""
    return isinstance(part, str) and (part == "str" or "[" in part or part.startswith("function"))


def _field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_branch_label(part):
            path += f".{part}" if path else str(part)
    return path or "request"


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
        known = (
            [f for f in model.model_fields]
            if not any(isinstance(p, int) for p in loc)
            else [f for f in ChatMessage.model_fields]
        )
        return InvalidRequest(field, "unknown field", allowed=", ".join(known))
    if kind == "missing":
        return InvalidRequest(field, "is required", allowed=_ALLOWED.get(leaf))
    message = first["msg"]
    extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 and leaf != "stop" else ""
    allowed = _ALLOWED.get(leaf)
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


def parse_request(row: Any, task: str) -> ChatRequest | TextRequest:
    """Validate one input row for ``task``; raise :class:`InvalidRequest` naming the bad field."""
    model: type[ChatRequest] | type[TextRequest] = ChatRequest if task == "llm/v1/chat" else TextRequest
    if isinstance(row, str) and model is TextRequest:
        row = {"prompt": row}
    if not isinstance(row, Mapping):
        expected = "'messages'" if model is ChatRequest else "'prompt'"
        raise InvalidRequest("request", f"each input must be an object with {expected}, got {type(row).__name__}")
    data = _clean(row)
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, model) from None
    if len(req.stop_strings()) > MAX_STOP:
        raise InvalidRequest("stop", f"{len(req.stop_strings())} stop strings given", allowed=_ALLOWED["stop"])
    return req


def validate_generation_defaults(generation: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check packaging-time ``generation=`` defaults with the request rules (fields ``generation.*``)."""
    if generation is None:
        return {}
    if not isinstance(generation, Mapping):
        raise InvalidRequest("generation", f"must be a dict, got {type(generation).__name__}")
    try:
        params = GenerationParams.model_validate(_clean(generation, prefix="generation"))
    except ValidationError as exc:
        raise format_validation_error(exc, GenerationParams, prefix="generation") from None
    if len(params.stop_strings()) > MAX_STOP:
        raise InvalidRequest("generation.stop", "too many stop strings", allowed=_ALLOWED["stop"])
    return params.model_dump(exclude_none=True)


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
