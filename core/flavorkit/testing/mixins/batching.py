"""Batching: a batch gives each request its own answer, and batches really are decoded together.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

from collections.abc import Sequence

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase
from flavorkit.types import Message

__all__ = ["BatchingClauses"]

#: The long prompt of batch_matches_single: this many times the short one, within half the context.
_LONG_FACTOR = 10
_LONG_PROMPT_MAX = 2048
_FILLER = "Here is a note about packaging language models with their runtimes, read it carefully. "


class BatchingClauses(ConformanceBase):
    """Batching: a batch gives each request its own answer, and batches really are decoded together."""

    @clause("batch_matches_single")
    def test_batch_matches_single(self, conformance: Harness) -> None:
        """Each request of a batch mixing prompt lengths and limits gets its result alone, raw and through predict."""
        probe = conformance.probe()
        long = _long_messages(conformance, probe.messages)
        lengths = [len(conformance.encode(m)) for m in (probe.messages, long, probe.other)]
        specs = [(probe.messages, 8), (long, 6), (probe.other, 3)]
        batch = conformance.run([conformance.request(m, n) for m, n in specs])
        for i, (messages, limit) in enumerate(specs):
            alone = conformance.greedy(messages, limit)
            check(
                batch[i].same_as(alone),
                f"request {i} of a batch of {len(specs)} with prompts of {lengths} tokens gives {batch[i].describe()}, "
                f"alone {alone.describe()}: padding or prompt length leaks into the answers",
            )
        rows = [conformance.chat(probe.messages, max_tokens=8), conformance.chat(long, max_tokens=6)]
        together = conformance.pyfunc().predict(rows)
        check(len(together) == 2, f"predict of two rows returned {len(together)} responses")
        for i, row in enumerate(rows):
            alone_text = content(conformance.predict(row))
            check(
                content(together[i]) == alone_text,
                f"row {i} of a two-row predict with prompts of {lengths[:2]} tokens gives "
                f"{content(together[i])!r}, alone {alone_text!r}",
            )

    @clause("batching_interleaved")
    def test_batching_interleaved(self, conformance: Harness) -> None:
        """A batching backend decodes the requests of one call together: their deltas interleave."""
        probe = conformance.probe()
        a, b = conformance.run(
            [conformance.request(probe.messages, PROBE_TOKENS), conformance.request(probe.other, PROBE_TOKENS)]
        )
        check(
            a.positions and b.positions and min(b.positions) < max(a.positions),
            "the backend declares 'batching' but finished request 0 before starting request 1 "
            f"(delta positions {a.positions} and {b.positions})",
        )


def _long_messages(conformance: Harness, short: Sequence[Message]) -> tuple[Message, ...]:
    """A one-message prompt about ``_LONG_FACTOR`` times as long as ``short``, within half the context."""
    ctx = conformance.info().context_length
    target = min(_LONG_FACTOR * len(conformance.encode(short)), ctx // 2, _LONG_PROMPT_MAX)

    def messages(repeats: int) -> tuple[Message, ...]:
        return ({"role": "user", "content": _FILLER * repeats + "Now say what the note is about."},)

    one = len(conformance.encode(messages(1)))
    per = max(1, len(conformance.encode(messages(2))) - one)
    repeats = max(1, 1 + (target - one) // per)
    while repeats > 1 and len(conformance.encode(messages(repeats))) > target:
        repeats -= 1
    return messages(repeats)
