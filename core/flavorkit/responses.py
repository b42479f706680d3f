"""OpenAI's response objects as pydantic models, with one typed builder per wire shape.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Both places that answer in OpenAI's shapes build their output here: the pyfunc model
(:class:`flavorkit.runtime.loaded.LoadedModel`'s ``predict`` and ``predict_stream``) and the HTTP
server (:mod:`flavorkit.serve.openai_api`), so the two cannot drift apart. The shapes are
``chat.completion`` (:class:`ChatCompletion`), ``chat.completion.chunk``
(:class:`ChatCompletionChunk`), ``text_completion`` (:class:`TextCompletion`, whole or streamed,
as ``/v1/completions`` sends it) and their :class:`Usage`.

**Two dialects of one shape.** :attr:`Dialect.OPENAI` is OpenAI's HTTP shape: every field OpenAI
sends is sent, ``null`` included (``logprobs``, a message's ``refusal``, ``system_fingerprint``).
:attr:`Dialect.PYFUNC` is what the MLflow pyfunc model has always returned: the same objects less
those OpenAI-only fields while they are ``null`` (the model's MLflow signature declares none of
them, and its tests pin the shape). In both, a field OpenAI *leaves out* when it has no value is
left out, not sent as ``null``: a delta's ``role`` and ``content``, and a chunk's ``usage`` unless
the stream asked for it (``include_usage``: then it is ``null`` until the usage chunk). Each model
lists its fields of either kind (``OPENAI_ONLY``, ``ABSENT_WHEN_NONE``) and :meth:`Shape.wire`
applies the rule, so a new optional field (issue 18's ``tool_calls`` on a message and a delta,
``logprobs`` filled in on a choice) is one field declaration plus its entry in one of those sets,
and for a streamed one a parameter of the chunk builder (whose test then covers it).

**Cost, and the validated-once chunk.** Whole responses (one per request) are built as validated
models and dumped: about 17 µs of CPU, nothing next to a generation. A streamed chunk is built once
per generated token, and validating its three nested models and dumping them costs about 14 µs
against 0.4 µs for a dict literal (``model_construct`` is no faster: it runs in Python). So
:func:`chat_chunk` and :func:`text_chunk` fill their per-token values (typed parameters, checked by
mypy) into a layout that the model itself wrote once per dialect at import (which keys, in which
order, which of them ``null``): 0.85 µs a chunk, and ``predict_stream`` with a backend that costs
nothing went from 2.7 to 3.4 µs a chunk (CPU time, measured on 2 shared cores).
``tests/runtime/test_responses.py`` checks that every variant equals the validated model's
:meth:`~Shape.wire`.
"""

from __future__ import annotations

import enum
import time
import typing
import uuid
from collections.abc import Collection, Iterable, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatDelta",
    "ChatMessage",
    "Dialect",
    "Shape",
    "TextChoice",
    "TextCompletion",
    "Usage",
    "chat_chunk",
    "chat_completion",
    "new_id",
    "now",
    "text_chunk",
    "text_completion",
    "usage_chunk",
]

#: ``(text, finish_reason)`` of each choice, in choice order.
Choices = Sequence[tuple[str, str | None]]


class Dialect(enum.Enum):
    """Which surface an object is written for: OpenAI's HTTP API, or the MLflow pyfunc model."""

    #: OpenAI's shape: every field OpenAI sends, ``null`` included (``flavorkit serve``).
    OPENAI = "openai"
    #: The pyfunc model's shape: OpenAI-only fields (``OPENAI_ONLY``) are left out while ``null``.
    PYFUNC = "pyfunc"


def new_id(prefix: str) -> str:
    """A fresh response id, ``chatcmpl-...`` or ``cmpl-...`` (32 hex digits after the dash)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, for ``created``."""
    return int(time.time())


class Shape(BaseModel):
    """Base of the response models: no unknown fields, and the dialect rule of :meth:`wire`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Fields left out, rather than sent as ``null``, when they are None (OpenAI omits them).
    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()
    #: OpenAI's fields that :attr:`Dialect.PYFUNC` leaves out while they are None.
    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset()

    def wire(self, dialect: Dialect = Dialect.OPENAI, *, null: Collection[str] = ()) -> dict[str, Any]:
        """The JSON-ready dict that ``dialect`` sends; ``null`` names top-level fields sent as null anyway."""
        exclude = _exclusions(self, dialect is Dialect.PYFUNC)
        for name in null:
            exclude.pop(name, None)
        return self.model_dump(exclude=exclude or None)


#: A chunk and its one choice as a model writes them: the layout that the chunk builders fill in.
_Layout = tuple[dict[str, Any], dict[str, Any]]


def _layouts(sample: Shape) -> tuple[tuple[_Layout, _Layout], tuple[_Layout, _Layout]]:
    """The layouts of a one-choice chunk ``sample``, indexed ``[dialect is PYFUNC][include_usage]``."""

    def layout(dialect: Dialect, include_usage: bool) -> _Layout:
        head = sample.wire(dialect, null=("usage",) if include_usage else ())
        return head, head["choices"][0]

    return (
        (layout(Dialect.OPENAI, False), layout(Dialect.OPENAI, True)),
        (layout(Dialect.PYFUNC, False), layout(Dialect.PYFUNC, True)),
    )


#: Per model class and dialect (``pyfunc``): the fields to leave out when None, and the fields that
#: hold models with something to leave out (walked). Computed from the class on first use.
_PLANS: dict[tuple[type[Shape], bool], tuple[frozenset[str], tuple[str, ...]]] = {}


def _plan(cls: type[Shape], pyfunc: bool) -> tuple[frozenset[str], tuple[str, ...]]:
    """What :func:`_exclusions` looks at in a ``cls`` object: its droppable fields and its fields to walk."""
    plan = _PLANS.get((cls, pyfunc))
    if plan is None:
        drop = (cls.ABSENT_WHEN_NONE | cls.OPENAI_ONLY) if pyfunc else cls.ABSENT_WHEN_NONE
        walk = tuple(name for name, f in cls.model_fields.items() if _prunable(f.annotation, pyfunc))
        plan = _PLANS[(cls, pyfunc)] = (drop, walk)
    return plan


def _prunable(annotation: Any, pyfunc: bool) -> bool:
    """True when a field of this type can hold a model with a field to leave out (``list[ChatChoice]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, Shape):
        drop, walk = _plan(annotation, pyfunc)
        return bool(drop or walk)
    return any(_prunable(arg, pyfunc) for arg in typing.get_args(annotation))


def _exclusions(obj: Shape, pyfunc: bool) -> dict[Any, Any]:
    """The ``model_dump(exclude=...)`` spec of the None fields that the dialect leaves out, nested."""
    drop, walk = _plan(type(obj), pyfunc)
    out: dict[Any, Any] = {name: True for name in drop if getattr(obj, name) is None}
    for name in walk:
        value = getattr(obj, name)
        if isinstance(value, Shape):
            if sub := _exclusions(value, pyfunc):
                out[name] = sub
        elif isinstance(value, list):
            subs = {i: s for i, v in enumerate(value) if isinstance(v, Shape) and (s := _exclusions(v, pyfunc))}
            if subs:
                out[name] = subs
    return out


class Usage(Shape):
    """Token counts of a response: the prompt once, plus every choice's generated tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """The usage of a prompt and its completions; ``total_tokens`` is their sum."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    @classmethod
    def total(cls, usages: Iterable[Usage]) -> Usage:
        """The usage of several prompts answered together (``/v1/completions`` with a list)."""
        items = list(usages)
        return cls.of(sum(u.prompt_tokens for u in items), sum(u.completion_tokens for u in items))


# -- chat.completion --------------------------------------------------------------------------------


class ChatMessage(Shape):
    """The assistant message of a chat choice (issue 18 adds ``tool_calls`` as one optional field)."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"refusal"})

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(Shape):
    """One choice of a ``chat.completion``: its message and why it ended."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    message: ChatMessage
    logprobs: None = None  # issue 18: the log-probabilities object, still optional
    # A backend's finish reason is passed on as it is (the conformance kit judges it), so not a Literal.
    finish_reason: str | None


class ChatCompletion(Shape):
    """A whole ``chat.completion`` object, as ``predict`` and ``/v1/chat/completions`` return it."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"system_fingerprint"})

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


def chat_completion(
    id: str, created: int, model: str, choices: Choices, usage: Usage, *, dialect: Dialect = Dialect.OPENAI
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per ``(text, finish_reason)``, numbered in order."""
    return ChatCompletion(
        id=id,
        created=created,
        model=model,
        choices=[
            ChatChoice(index=i, message=ChatMessage(content=text), finish_reason=finish)
            for i, (text, finish) in enumerate(choices)
        ],
        usage=usage,
    ).wire(dialect)


# -- chat.completion.chunk --------------------------------------------------------------------------


class ChatDelta(Shape):
    """What a chunk adds to a choice's message: the role on its first chunk, then text."""

    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"role", "content"})

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Shape):
    """The one choice a ``chat.completion.chunk`` carries."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(Shape):
    """A ``chat.completion.chunk``: one choice's increment, or (no choices) the stream's usage."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"system_fingerprint"})
    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"usage"})

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


#: Written once by the model at import; chunks copy them and never change them.
_CHAT_CHUNK_LAYOUTS = _layouts(
    ChatCompletionChunk(id="", created=0, model="", choices=[ChatChunkChoice(index=0, delta=ChatDelta())])
)


def chat_chunk(
    id: str,
    created: int,
    model: str,
    index: int,
    *,
    role: Literal["assistant"] | None = None,
    content: str | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    include_usage: bool = False,
    dialect: Dialect = Dialect.OPENAI,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` for choice ``index``, built per token from the model's layout (see above).

    ``usage`` set puts the counts on this chunk (the pyfunc stream's last chunk); ``include_usage``
    sends ``"usage": null`` on every chunk, as OpenAI does before the usage chunk of such a stream.
    """
    head, layout = _CHAT_CHUNK_LAYOUTS[dialect is Dialect.PYFUNC][include_usage]
    delta: dict[str, Any] = {} if role is None else {"role": role}
    if content is not None:
        delta["content"] = content
    choice = layout.copy()  # copying and setting keeps the layout's key order, and is as fast as a literal
    choice["index"] = index
    choice["delta"] = delta
    choice["finish_reason"] = finish_reason
    chunk = head.copy()
    chunk["id"] = id
    chunk["created"] = created
    chunk["model"] = model
    chunk["choices"] = [choice]
    if usage is not None:
        chunk["usage"] = usage.wire(dialect)
    return chunk


# -- text_completion --------------------------------------------------------------------------------


class TextChoice(Shape):
    """One choice of a ``text_completion``, whole or streamed."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class TextCompletion(Shape):
    """A ``text_completion`` object (``/v1/completions``): the whole answer, a streamed piece, or the usage chunk."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"system_fingerprint"})
    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"usage"})

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage | None = None


def text_completion(
    id: str, created: int, model: str, choices: Choices, usage: Usage, *, dialect: Dialect = Dialect.OPENAI
) -> dict[str, Any]:
    """A whole ``text_completion`` with one choice per ``(text, finish_reason)``, numbered in order."""
    return TextCompletion(
        id=id,
        created=created,
        model=model,
        choices=[TextChoice(index=i, text=text, finish_reason=finish) for i, (text, finish) in enumerate(choices)],
        usage=usage,
    ).wire(dialect)


#: Written once by the model at import; chunks copy them and never change them.
_TEXT_CHUNK_LAYOUTS = _layouts(TextCompletion(id="", created=0, model="", choices=[TextChoice(index=0, text="")]))


def text_chunk(
    id: str,
    created: int,
    model: str,
    index: int,
    text: str,
    finish_reason: str | None,
    *,
    include_usage: bool = False,
    dialect: Dialect = Dialect.OPENAI,
) -> dict[str, Any]:
    """A streamed ``text_completion`` piece for choice ``index``, built per token from the model's layout."""
    head, layout = _TEXT_CHUNK_LAYOUTS[dialect is Dialect.PYFUNC][include_usage]
    choice = layout.copy()
    choice["index"] = index
    choice["text"] = text
    choice["finish_reason"] = finish_reason
    chunk = head.copy()
    chunk["id"] = id
    chunk["created"] = created
    chunk["model"] = model
    chunk["choices"] = [choice]
    return chunk


# -- the usage chunk --------------------------------------------------------------------------------


def usage_chunk(
    id: str, created: int, model: str, obj: str, usage: Usage, *, dialect: Dialect = Dialect.OPENAI
) -> dict[str, Any]:
    """The last chunk of a stream with ``include_usage``: no choices, the usage (``obj`` names the shape)."""
    if obj == "chat.completion.chunk":
        return ChatCompletionChunk(id=id, created=created, model=model, choices=[], usage=usage).wire(dialect)
    if obj == "text_completion":
        return TextCompletion(id=id, created=created, model=model, choices=[], usage=usage).wire(dialect)
    raise ValueError(f"no streamed shape {obj!r}; allowed: 'chat.completion.chunk', 'text_completion'")
