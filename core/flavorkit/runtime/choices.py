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

    def advance(self, text: str, tokens: int, finish: str | None, backend: str) -> tuple[str, str | None]:
        """Apply one delta of backend ``backend`` (max_tokens cap, stop strings); return the new text and finish."""
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
        if out:
            self.parts.append(out)
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
