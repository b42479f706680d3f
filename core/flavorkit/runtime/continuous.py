"""Continuous batching in the core: requests join and leave a running backend session between steps.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

:class:`ContinuousBatch` is what ``flavorkit serve`` drives when the backend can take requests
while it decodes: either through its own ``generate_session`` hook (spec version 2) or, for a
backend that declares ``continuous_batching`` without that hook, through
:class:`~flavorkit.runtime.interleave.InterleavedSession`.
It applies exactly the contract of :meth:`LoadedModel.run_batch <flavorkit.runtime.loaded.LoadedModel.run_batch>`
(``n`` choices, the ``max_tokens`` cap, stop strings, finish reasons, usage) to each request, only
one decoding step at a time, so the caller can admit new requests between steps. That contract
is :mod:`flavorkit.runtime.choices`' (:meth:`Choice.advance <flavorkit.runtime.choices.Choice.advance>`);
of the model that opened the session it needs only what :class:`SessionOwner` names, so this module
does not import :mod:`flavorkit.runtime.loaded` (which imports it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from flavorkit.backend.registry import Backend
from flavorkit.errors import BackendError
from flavorkit.runtime.choices import BatchEvent, Choice, PreparedRequest
from flavorkit.types import Delta, GenerationSession

__all__ = ["RETIRED_STEPS", "ContinuousBatch", "SessionOwner"]

_T = TypeVar("_T")

#: Steps during which deltas for a finished or cancelled choice are ignored (a backend drops such
#: rows within a step or two); a delta for an id older than that, or never issued, is an error.
RETIRED_STEPS = 64


class SessionOwner(Protocol):
    """What a :class:`ContinuousBatch` needs of the model that opened it (a ``LoadedModel`` has it)."""

    backend: Backend

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``, one call into the handle or its session, while no other call into the handle runs."""
        ...


class ContinuousBatch:
    """Prepared requests decoding together in one backend session; new ones may join between steps."""

    def __init__(
        self, model: SessionOwner, session: GenerationSession, *, release: Callable[[], None] | None = None
    ) -> None:
        self.model = model
        self.session = session
        self._release = release  # called once, by close(): the model's generation lock (open_session)
        self._requests: dict[int, PreparedRequest] = {}  # live requests by key
        self._choices: dict[int, tuple[int, Choice]] = {}  # session id -> (request key, choice)
        self._next_key = 0
        self._retired: dict[int, int] = {}  # session id of a finished choice -> step it finished at
        self._steps = 0

    @property
    def live(self) -> int:
        """How many admitted requests are still generating."""
        return len(self._requests)

    def add(self, requests: Sequence[PreparedRequest]) -> list[int]:
        """Admit prepared requests (they start at the next step); return their keys for :class:`BatchEvent`."""
        keys: list[int] = []
        pending: list[tuple[int, Choice]] = []
        for prepared in requests:
            key = self._next_key
            self._next_key += 1
            keys.append(key)
            if prepared.cancelled:
                prepared.mark_cancelled()
                continue
            self._requests[key] = prepared
            pending.extend((key, c) for c in prepared.choices if c.finish is None)
        if pending:
            joining = [c.request for _, c in pending]
            ids = self.model.call(lambda: self.session.add(joining))
            reused = any(i in self._choices or i in self._retired for i in ids)
            if len(ids) != len(pending) or len(set(ids)) != len(ids) or reused:
                raise BackendError(
                    f"backend {self.model.backend.name!r}: GenerationSession.add() must return one new, "
                    f"unique id per request; got {list(ids)!r} for {len(pending)} request(s)"
                )
            self._choices.update(zip(ids, pending, strict=True))
        return keys

    def step(self) -> list[BatchEvent]:
        """Run one decoding step of every live request; return the events, as ``run_batch`` yields them.

        Requests cancelled since the last step end with ``finish_reason="cancelled"`` and yield
        nothing; the backend drops them. A session that stops producing while requests are live is
        a :class:`~flavorkit.errors.BackendError`.
        """
        self._drop_cancelled()
        if not self._requests:
            return []
        deltas = self.model.call(self.session.step)
        events: list[BatchEvent] = []
        for delta in deltas:
            if not isinstance(delta, Delta):
                raise BackendError(
                    f"backend {self.model.backend.name!r}: GenerationSession.step() must return "
                    f"flavorkit.Delta items, got {type(delta).__name__}"
                )
            entry = self._choices.get(delta.index)
            if entry is None:
                if delta.index in self._retired:
                    continue  # a finished or cancelled choice; the backend is still winding it down
                raise BackendError(
                    f"backend {self.model.backend.name!r} yielded a delta for unknown session id {delta.index}"
                )
            key, choice = entry
            if choice.finish is not None:
                continue  # cancelled or capped; the backend may still be winding down
            before = choice.tokens
            out, finish = choice.advance(delta.text, delta.tokens, delta.finish_reason, self.model.backend.name)
            if out or finish is not None or choice.tokens > before:
                events.append(choice.event(key, out, choice.tokens - before, finish))
            if finish is not None:
                self._retire(delta.index)
                if self._requests[key].finished:
                    del self._requests[key]
        self._drop_cancelled()
        self._steps += 1
        if self._retired and next(iter(self._retired.values())) < self._steps - RETIRED_STEPS:
            self._retired = {i: n for i, n in self._retired.items() if n >= self._steps - RETIRED_STEPS}
        if not deltas and self._requests:
            unfinished = sum(p.n for p in self._requests.values())
            raise BackendError(
                f"backend {self.model.backend.name!r}: its session stopped without finishing "
                f"{unfinished} request(s); every request must end with a Delta carrying finish_reason"
            )
        return events

    def close(self) -> None:
        """End the session: unfinished requests are marked cancelled and the backend frees its state."""
        for prepared in self._requests.values():
            prepared.cancel()
            prepared.mark_cancelled()
        self._requests.clear()
        self._choices.clear()
        try:
            self.model.call(self.session.close)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()

    def _retire(self, session_id: int) -> None:
        del self._choices[session_id]
        self._retired[session_id] = self._steps

    def _drop_cancelled(self) -> None:
        dropped = False
        for key, prepared in list(self._requests.items()):
            if prepared.cancelled:
                prepared.mark_cancelled()
                del self._requests[key]
                dropped = True
        if dropped:
            for session_id, (key, _choice) in list(self._choices.items()):
                if key not in self._requests:
                    self._retire(session_id)
