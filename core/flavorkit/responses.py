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

import codecs
import enum
import time
import typing
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
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
    "TextLogprobs",
    "Usage",
    "chat_chunk",
    "chat_completion",
    "new_id",
    "tool_call_deltas",
    "now",
    "text_chunk",
    "text_completion",
    "text_logprobs",
    "TextOffsets",
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


class FunctionCall(Shape):
    """The function a tool call invokes: its name, and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(Shape):
    """One tool call of an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


#: ``(id, name, arguments)`` of a tool call, as the runtime reads it from an answer.
CallTuple = tuple[str, str, str]


def _tool_calls(calls: Sequence[CallTuple]) -> list[ToolCall] | None:
    return [ToolCall(id=i, function=FunctionCall(name=n, arguments=a)) for i, n, a in calls] or None


class ChatMessage(Shape):
    """The assistant message of a chat choice: its text, or (``content`` null) the tools it calls."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"refusal"})
    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(Shape):
    """One of the likeliest tokens at a position: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """A generated token's log-probability, and the likeliest tokens at its position."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Shape):
    """A choice's ``logprobs``: one entry per content token (``refusal`` is always null here)."""

    content: list[TokenLogprob] | None
    refusal: None = None


def _choice_logprobs(entries: Sequence[Mapping[str, Any]] | None) -> ChoiceLogprobs | None:
    return None if entries is None else ChoiceLogprobs.model_validate({"content": list(entries)})


class ChatChoice(Shape):
    """One choice of a ``chat.completion``: its message, its log-probabilities if asked for, and why it ended."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    message: ChatMessage
    logprobs: ChoiceLogprobs | None = None
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
    id: str,
    created: int,
    model: str,
    choices: Choices,
    usage: Usage,
    *,
    dialect: Dialect = Dialect.OPENAI,
    tool_calls: Sequence[Sequence[CallTuple]] | None = None,
    logprobs: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per ``(text, finish_reason)``, numbered in order.

    ``tool_calls`` holds each choice's calls (a choice with calls and no text has ``content``
    null); ``logprobs`` each choice's ``logprobs.content`` entries, or None where not asked for.
    """
    calls = tool_calls or [()] * len(choices)
    entries = logprobs or [None] * len(choices)
    return ChatCompletion(
        id=id,
        created=created,
        model=model,
        choices=[
            ChatChoice(
                index=i,
                message=ChatMessage(content=text if text or not made else None, tool_calls=_tool_calls(made)),
                logprobs=_choice_logprobs(lp),
                finish_reason=finish,
            )
            for i, ((text, finish), made, lp) in enumerate(zip(choices, calls, entries, strict=True))
        ],
        usage=usage,
    ).wire(dialect)


# -- chat.completion.chunk --------------------------------------------------------------------------


class ToolCallDelta(Shape):
    """A streamed tool call: its position among the choice's calls, then its id, name and arguments."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatDelta(Shape):
    """What a chunk adds to a choice's message: the role on its first chunk, then text or tool calls."""

    ABSENT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


def tool_call_deltas(calls: Sequence[CallTuple], first: int = 0) -> list[dict[str, Any]]:
    """The ``delta.tool_calls`` of a chunk carrying whole calls, numbered from ``first``."""
    return [
        ToolCallDelta(index=first + k, id=i, function=FunctionCall(name=n, arguments=a)).wire()
        for k, (i, n, a) in enumerate(calls)
    ]


class ChatChunkChoice(Shape):
    """The one choice a ``chat.completion.chunk`` carries."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
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
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: Sequence[Mapping[str, Any]] | None = None,
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
    if tool_calls:
        delta["tool_calls"] = tool_calls
    choice = layout.copy()  # copying and setting keeps the layout's key order, and is as fast as a literal
    choice["index"] = index
    choice["delta"] = delta
    if logprobs is not None:  # entries the engine built: {"token", "logprob", "bytes", "top_logprobs"}
        choice["logprobs"] = {"content": list(logprobs), "refusal": None}
        choice["finish_reason"] = choice.pop("finish_reason", None)  # keep OpenAI's key order
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


class TextLogprobs(Shape):
    """``/v1/completions``' legacy ``logprobs``: parallel lists, one entry per generated token.

    ``top_logprobs`` maps the likeliest tokens at each position to their log-probabilities, the
    picked token always among them (so up to ``logprobs + 1`` entries, as OpenAI documents);
    ``text_offset`` is where each token starts in the answer's text (:class:`TextOffsets`). The
    entries cover every generated token, so those of a stop string cut from the text count on past
    its end.
    """

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextOffsets:
    """Where each generated token starts in a choice's text, in characters, across a whole stream.

    Counted from the tokens' UTF-8 ``bytes``, not from the length of their ``token`` strings: a token
    that carries part of a character shows as U+FFFD there (one character) but adds no character to
    the text until the character's last byte arrives. A token that starts inside a character starts
    where that character does.
    """

    def __init__(self) -> None:
        self.chars = 0  # complete characters so far
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def advance(self, entry: Mapping[str, Any]) -> int:
        """The offset of the token of ``entry`` (a chat-style logprobs entry); counts its bytes after it."""
        start = self.chars
        data = entry.get("bytes")
        raw = bytes(data) if data is not None else str(entry["token"]).encode("utf-8")
        self.chars += len(self._decoder.decode(raw))
        return start


def text_logprobs(entries: Sequence[Mapping[str, Any]], offsets: TextOffsets | None = None) -> TextLogprobs:
    """The legacy form of chat-style ``logprobs.content`` entries; ``offsets`` carries a stream's count on."""
    counter = offsets if offsets is not None else TextOffsets()
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    starts: list[int] = []
    for entry in entries:
        alternatives = {alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs", ())}
        alternatives.setdefault(entry["token"], entry["logprob"])
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        top.append(alternatives)
        starts.append(counter.advance(entry))
    return TextLogprobs(tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top, text_offset=starts)


class TextChoice(Shape):
    """One choice of a ``text_completion``, whole or streamed; ``logprobs`` only where asked for."""

    OPENAI_ONLY: ClassVar[frozenset[str]] = frozenset({"logprobs"})

    index: int
    text: str
    logprobs: TextLogprobs | None = None
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
    id: str,
    created: int,
    model: str,
    choices: Choices,
    usage: Usage,
    *,
    dialect: Dialect = Dialect.OPENAI,
    logprobs: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
) -> dict[str, Any]:
    """A whole ``text_completion`` with one choice per ``(text, finish_reason)``, numbered in order.

    ``logprobs``: each choice's chat-style entries (see :func:`text_logprobs`), or None where not asked for.
    """
    entries = logprobs or [None] * len(choices)
    return TextCompletion(
        id=id,
        created=created,
        model=model,
        choices=[
            TextChoice(index=i, text=text, finish_reason=finish, logprobs=None if lp is None else text_logprobs(lp))
            for i, ((text, finish), lp) in enumerate(zip(choices, entries, strict=True))
        ],
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
    logprobs: TextLogprobs | None = None,
) -> dict[str, Any]:
    """A streamed ``text_completion`` piece for choice ``index``, built per token from the model's layout."""
    head, layout = _TEXT_CHUNK_LAYOUTS[dialect is Dialect.PYFUNC][include_usage]
    choice = layout.copy()
    choice["index"] = index
    choice["text"] = text
    if logprobs is not None:
        choice["logprobs"] = logprobs.wire(dialect)
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
