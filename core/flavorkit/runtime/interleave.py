"""Continuous batching for any backend whose ``generate`` streams can run side by side.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

A backend that declares :attr:`~flavorkit.types.Capability.CONTINUOUS_BATCHING` without a
``generate_session`` hook promises that several ``generate`` streams of one handle may be open at
once and advanced alternately from one thread (each onnxruntime-genai ``og.Generator`` owns its
own state, for instance).
:class:`InterleavedSession` turns that promise into a :class:`~flavorkit.types.GenerationSession`:
the requests admitted together become one ``generate`` call (a *cohort*, batched by the backend
as it sees fit; a backend that returns this session from its own ``generate_session`` hook can pass
its batching plan as ``split``, so that each group it would decode apart is a cohort of its own
instead of waiting for the previous group), and every :meth:`~InterleavedSession.step` advances each open cohort by one
decoding step. A request that arrives while others decode therefore starts at the next step
instead of waiting for the running batch to finish; cohorts do not merge, so their rows never
share a forward pass with rows admitted at another step. New cohorts take that first step on
their own, before the running ones step again, so their first token is delivered at once.

Step boundaries are inferred from the stream: a cohort's step ends once every live row of it has
produced a token, or when a row produces its second token (the first delta of the next step,
which is kept for the next call). Deltas that carry no token (a held-back text tail) never end a
step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from flavorkit.errors import BackendError
from flavorkit.types import Delta, GenerationRequest

__all__ = ["InterleavedSession"]

Generate = Callable[[Sequence[GenerationRequest]], Iterator[Delta]]
#: A backend's batching plan: groups of request indices that one ``generate`` call should decode together.
Split = Callable[[Sequence[GenerationRequest]], list[list[int]]]


@dataclass(eq=False)
class _Cohort:
    """One ``generate`` stream: the requests admitted together and their session ids."""

    ids: list[int]
    requests: list[GenerationRequest]
    stream: Iterator[Delta] | None = None
    ahead: Delta | None = None  # the first delta of the next step, read while finding this step's end
    finished: set[int] = field(default_factory=set)
    exhausted: bool = False

    def live(self) -> set[int]:
        """Rows that still need tokens: not finished and not cancelled."""
        return {k for k, req in enumerate(self.requests) if k not in self.finished and not req.cancelled}

    def close(self) -> None:
        """Close the backend's stream now, so it frees its state (generators, KV caches)."""
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()
        self.stream = None
        self.exhausted = True


class InterleavedSession:
    """A :class:`~flavorkit.types.GenerationSession` made of ``generate`` streams advanced in turn."""

    def __init__(self, generate: Generate, split: Split | None = None) -> None:
        self._generate = generate
        self._split = split
        self._cohorts: list[_Cohort] = []
        self._next_id = 0

    @property
    def cohorts(self) -> int:
        """How many ``generate`` streams are open (for metrics and tests)."""
        return len(self._cohorts)

    def add(self, requests: Sequence[GenerationRequest]) -> list[int]:
        """Admit requests as new cohorts (one, or one per group of ``split``); they start at the next :meth:`step`."""
        ids = list(range(self._next_id, self._next_id + len(requests)))
        self._next_id += len(requests)
        groups = [list(range(len(requests)))]
        if self._split is not None and len(requests) > 1:
            groups = self._split(requests)
            if sorted(k for group in groups for k in group) != list(range(len(requests))):
                raise BackendError(
                    f"the batching plan must name each of the {len(requests)} request(s) exactly once, got {groups!r}"
                )
        for group in groups:
            if group:
                self._cohorts.append(_Cohort([ids[k] for k in group], [requests[k] for k in group]))
        return ids

    def step(self) -> list[Delta]:
        """Advance the open cohorts by one decoding step; return their deltas with session ids.

        Cohorts admitted since the last step, while others decode, get a step of their own (their
        prompt and first token) before the running ones step again: the core delivers a step's
        deltas when the step returns, so a newcomer's first token would otherwise wait for one
        step of every running cohort. The work is the same, only its order changes.
        """
        fresh = [c for c in self._cohorts if c.stream is None]
        if fresh and len(fresh) < len(self._cohorts):
            out = self._advance_all(fresh)
            if out:  # all newcomers cancelled before their first step: the running ones step now
                return out
        return self._advance_all(list(self._cohorts))

    def _advance_all(self, cohorts: list[_Cohort]) -> list[Delta]:
        """One step of each of ``cohorts``; the finished and exhausted ones are closed and dropped."""
        out: list[Delta] = []
        for cohort in cohorts:
            out.extend(self._advance(cohort))
            if cohort.exhausted or not cohort.live():
                cohort.close()
                self._cohorts.remove(cohort)
        return out

    def close(self) -> None:
        """Close every cohort's stream (all of them, even when one fails to close)."""
        cohorts, self._cohorts = self._cohorts, []
        failed: Exception | None = None
        for cohort in cohorts:
            try:
                cohort.close()
            except Exception as exc:  # the others must still be closed
                failed = failed or exc
        if failed is not None:
            raise failed

    def _advance(self, cohort: _Cohort) -> list[Delta]:
        if not cohort.live():
            return []
        if cohort.stream is None:
            cohort.stream = iter(self._generate(cohort.requests))
        out: list[Delta] = []
        stepped: set[int] = set()  # rows that produced their token of this step
        while True:
            delta, cohort.ahead = cohort.ahead, None
            if delta is None:
                try:
                    delta = next(cohort.stream)
                except StopIteration:
                    cohort.exhausted = True
                    unfinished = cohort.live()
                    if unfinished:
                        raise BackendError(
                            f"a generate() stream ended without finishing {len(unfinished)} request(s); "
                            "every request must end with a Delta carrying finish_reason"
                        ) from None
                    break
            row = delta.index
            if delta.tokens and row in stepped:
                cohort.ahead = delta  # the next step has begun: keep it for the next call
                break
            if delta.tokens:
                stepped.add(row)
            if delta.finish_reason is not None:
                cohort.finished.add(row)
            out.append(Delta(cohort.ids[row], delta.text, delta.tokens, delta.finish_reason))
            if cohort.live() <= stepped:
                break
        return out
