"""The per-choice contract that a whole batch and a continuous batch both apply, one delta at a time.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A request becomes a :class:`Row` of ``n`` :class:`Choice` objects (one backend sequence each);
:meth:`Choice.advance` applies one backend delta to a choice (the ``max_tokens`` cap, stop
strings, the finish reason). :class:`~flavorkit.runtime.loaded.LoadedModel` (``predict``,
``run_batch``) and :class:`~flavorkit.runtime.continuous.ContinuousBatch` both import this module
and neither imports the other's internals, so the contract lives in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flavorkit.responses import Usage
from flavorkit.runtime.stopping import StopMatcher
from flavorkit.schema import ChatRequest, TextRequest
from flavorkit.types import GenerationRequest

__all__ = ["BatchEvent", "Choice", "PreparedRequest", "Row"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Choice:
    """State of one generated sequence (one of the ``n`` choices of one input row)."""

    row: int
    index: int
    request: GenerationRequest
    matcher: StopMatcher
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    finish: str | None = None
    #: The tools this choice may call (None: no tools); its answer is read for calls.
    tools: tuple[str, ...] | None = None
    #: With tools, an answer that may be a call (it opens with ``<`` or ``{``, or calls are
    #: required) is held back here until it ends, then read; other answers stream as content.
    held: list[str] | None = None
    #: ``(id, name, arguments)`` of the calls read from the answer.
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    #: How many of :attr:`calls` were handed on (see :meth:`take_calls`).
    calls_sent: int = 0
    #: Calls are required (``tool_choice`` "required" or a named function): every answer is held.
    calls_only: bool = False
    #: Whether the start of the answer was seen and the hold-back decided.
    decided: bool = False
    #: The request asked for log-probabilities (``logprobs: true``): the guide records them.
    wants_logprobs: bool = False
    #: How many of the guide's log-probability entries were handed on (see :meth:`take_logprobs`).
    logprobs_sent: int = 0

    def advance(self, text: str, tokens: int, finish: str | None, backend: str) -> tuple[str, str | None]:
        """Apply one delta of backend ``backend`` (max_tokens cap, stop strings); return the new text and finish."""
        out, finish = self._advance_text(text, tokens, finish, backend)
        if self.tools is not None:
            out, finish = self._read_calls(out, finish)
        if out:
            self.parts.append(out)
        return out, finish

    def all_logprobs(self) -> list[dict[str, Any]] | None:
        """OpenAI's ``logprobs.content`` entries of the whole answer, or None when not asked for."""
        if not self.wants_logprobs:
            return None
        return list(getattr(self.request.logits_processor, "logprobs", None) or [])

    def take_logprobs(self) -> list[dict[str, Any]] | None:
        """The entries recorded since the last call (a stream sends each once), or None when not asked for."""
        entries = self.all_logprobs()
        if entries is None:
            return None
        fresh, self.logprobs_sent = entries[self.logprobs_sent :], len(entries)
        return fresh

    @property
    def unsent_calls(self) -> bool:
        """Whether calls were read that :meth:`take_calls` has not handed on yet."""
        return len(self.calls) > self.calls_sent

    def take_calls(self) -> list[tuple[str, str, str]]:
        """The calls read since the last call of this method (a stream sends each once)."""
        fresh, self.calls_sent = self.calls[self.calls_sent :], len(self.calls)
        return fresh

    def event(self, request: int, text: str, tokens: int, finish: str | None) -> BatchEvent:
        """A :class:`BatchEvent` of the choice for the request at ``request``, with its unsent calls and logprobs."""
        logprobs = self.take_logprobs()
        calls = tuple(self.take_calls())
        return BatchEvent(
            request, self.index, text, tokens, finish, calls, None if logprobs is None else tuple(logprobs)
        )

    def _read_calls(self, out: str, finish: str | None) -> tuple[str, str | None]:
        """Hold back an answer that may be a tool call; read it when it ends (``finish_reason`` ``tool_calls``)."""
        if not self.decided:
            start = "".join(self.held or ()) + out
            if start.strip() or finish is not None:
                self.decided = True
                if self.calls_only or start.lstrip()[:1] in ("<", "{"):
                    self.held = [start]
                    out = ""
                else:
                    self.held = None
                    out = start
            else:
                self.held = [start]
                return "", finish
        elif self.held is not None:
            self.held.append(out)
            out = ""
        if finish is None or self.held is None:
            return out, finish
        from flavorkit.runtime.guidance import parse_calls, tool_call_id

        content, calls = parse_calls("".join(self.held), self.tools or ())
        self.held = None
        self.calls = [(tool_call_id(), name, arguments) for name, arguments in calls]
        if self.calls and finish == "stop":
            finish = "tool_calls"
            self.finish = finish
        return content, finish

    def _advance_text(self, text: str, tokens: int, finish: str | None, backend: str) -> tuple[str, str | None]:
        if self.tokens + tokens > self.request.max_tokens:
            log.warning(
                "backend %r produced more than max_tokens=%d tokens; output cut", backend, self.request.max_tokens
            )
            text, finish = "", "length"
        self.tokens = min(self.tokens + tokens, self.request.max_tokens)
        out, hit = self.matcher.feed(text)
        if not hit and finish is not None:
            tail, hit = self.matcher.flush()
            out += tail
        if hit:
            finish = "stop"
        if finish is not None:
            self.finish = finish
            self.request.cancelled = True
        return out, finish

    def mark_cancelled(self) -> None:
        """Give the choice ``finish_reason="cancelled"`` unless it already finished."""
        self.finish = self.finish or "cancelled"


@dataclass(slots=True)
class Row:
    """One validated, encoded input row: its request, its ``n`` choices and its prompt length."""

    request: ChatRequest | TextRequest
    choices: list[Choice]
    prompt_tokens: int

    def usage(self) -> Usage:
        """OpenAI usage counts of the row: its prompt once, plus every choice's tokens."""
        return Usage.of(self.prompt_tokens, sum(c.tokens for c in self.choices))


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One increment of :meth:`LoadedModel.run_batch`: text for choice ``choice`` of request ``request``.

    ``request`` is the position of the :class:`PreparedRequest` in the batch; ``tokens`` counts the
    generated tokens this event accounts for (``text`` may be empty while a stop string or a
    multi-byte character is held back); the last event of a choice carries ``finish_reason``.
    """

    request: int
    choice: int
    text: str
    tokens: int
    finish_reason: str | None
    #: ``(id, name, arguments)`` of tool calls completed by this event (sent once, in order).
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    #: OpenAI's ``logprobs.content`` entries of the tokens this event accounts for (None: not asked for).
    logprobs: tuple[dict[str, Any], ...] | None = None


class PreparedRequest:
    """One validated, encoded request that can share a backend batch with others (see ``run_batch``).

    The generated text, finish reasons and usage accumulate here while the batch runs. ``cancel``
    may be called from any thread: the backend drops the request within a few decoding steps.
    """

    __slots__ = ("_cancelled", "_row")

    def __init__(self, row: Row) -> None:
        self._row = row
        self._cancelled = False

    @property
    def request(self) -> ChatRequest | TextRequest:
        """The validated request."""
        return self._row.request

    @property
    def choices(self) -> list[Choice]:
        """The request's choices, in order: what a batch advances."""
        return self._row.choices

    @property
    def n(self) -> int:
        """How many choices (sequences) the request asked for."""
        return len(self._row.choices)

    @property
    def prompt_tokens(self) -> int:
        """Length of the encoded prompt."""
        return self._row.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far, over all choices."""
        return sum(c.tokens for c in self._row.choices)

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    @property
    def finished(self) -> bool:
        """True when every choice has a finish reason (``"cancelled"`` included)."""
        return all(c.finish is not None for c in self._row.choices)

    def texts(self) -> list[str]:
        """The text generated so far for each choice, in choice order."""
        return ["".join(c.parts) for c in self._row.choices]

    def tool_calls(self) -> list[list[tuple[str, str, str]]]:
        """The ``(id, name, arguments)`` tool calls of each choice, in choice order."""
        return [list(c.calls) for c in self._row.choices]

    def logprobs(self) -> list[list[dict[str, Any]] | None]:
        """Each choice's log-probability entries, or None for a choice that did not ask for them."""
        return [c.all_logprobs() for c in self._row.choices]

    def finish_reasons(self) -> list[str | None]:
        """The finish reason of each choice (None while it is still generating)."""
        return [c.finish for c in self._row.choices]

    def usage(self) -> dict[str, int]:
        """OpenAI usage counts: the prompt is counted once, completions over all choices."""
        return self._row.usage().model_dump()

    def cancel(self) -> None:
        """Stop generating for this request (thread-safe): backends see ``GenerationRequest.cancelled``."""
        self._cancelled = True
        for choice in self._row.choices:
            choice.request.cancelled = True

    def mark_cancelled(self) -> None:
        """Give every unfinished choice ``finish_reason="cancelled"`` (on the thread that runs the batch)."""
        for choice in self._row.choices:
            choice.mark_cancelled()
