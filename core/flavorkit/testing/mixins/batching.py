"""Batching: each request of a batch gets its own answer (greedy: its answer alone), and batches run together.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, Generated, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase
from flavorkit.types import Capability, Message

__all__ = ["BatchingClauses"]

#: The long prompt of batch_matches_single: this many times the short one, within half the context.
_LONG_FACTOR = 10
_LONG_PROMPT_MAX = 2048
_FILLER = "Here is a note about packaging language models with their runtimes, read it carefully. "

#: batch_invariant: tokens per answer, the limit of the rows that finish early, and the deltas after
#: which a row is cancelled. Small, because the clause runs on real models (about 30 rows in all).
_INVARIANT_TOKENS = 24
_EARLY_TOKENS = 4
_CANCEL_AFTER = 3
#: The long prompts of batch_invariant (60 tokens and more with a chat template; cut to fit a small
#: context): batched kernels round differently from one row on long inputs first.
_LONG_TEXTS = (
    "The river ran past the old mill where the baker kept his flour in wooden barrels, and every morning the "
    "children of the village walked along the bank to buy warm bread before school, counting the boats that "
    "carried timber down to the harbour where ships waited for the tide. Describe this scene in one sentence.",
    "A small team packages a language model with its runtime so that anyone can load it in one line: the "
    "weights, the tokenizer, the chat template and the exact versions of every library travel together, and a "
    "manifest of checksums proves that nothing changed on the way from the laptop where it was built to the "
    "server that answers requests. Explain why the manifest matters.",
)
#: The batches of batch_invariant through generate(): (prompt, max_tokens) per row, and the rows
#: cancelled (row -> deltas). Prompts 0 and 1 are long, 2 and 3 short (the kit's probe prompts).
_BATCHES: tuple[tuple[tuple[tuple[int, int], ...], Mapping[int, int]], ...] = (
    (((0, _INVARIANT_TOKENS), (0, _INVARIANT_TOKENS)), {}),
    (((0, _INVARIANT_TOKENS), (2, _INVARIANT_TOKENS), (1, _INVARIANT_TOKENS), (3, _INVARIANT_TOKENS)), {}),
    (
        (
            (1, _INVARIANT_TOKENS),
            (0, _EARLY_TOKENS),
            (3, _INVARIANT_TOKENS),
            (0, _INVARIANT_TOKENS),
            (2, _EARLY_TOKENS),
            (1, _INVARIANT_TOKENS),
            (0, _INVARIANT_TOKENS),
            (3, _INVARIANT_TOKENS),
        ),
        {3: _CANCEL_AFTER},
    ),
)
#: The session of batch_invariant: rows admitted before step k, as (prompt, max_tokens); the second
#: row admitted at step 2 is cancelled after its first _CANCEL_AFTER steps.
_JOINS: Mapping[int, tuple[tuple[int, int], ...]] = {
    0: ((0, _INVARIANT_TOKENS), (2, _EARLY_TOKENS)),
    2: ((1, _INVARIANT_TOKENS), (3, _INVARIANT_TOKENS)),
    6: ((0, _INVARIANT_TOKENS),),
}
_SESSION_CANCELLED = (2, 1)


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

    @clause("batch_invariant")
    def test_batch_invariant(self, conformance: Harness) -> None:
        """Every greedy row equals its answer alone: long and short prompts, batches of 2, 4, 8, sessions."""
        probe = conformance.probe()
        ctx = conformance.info().context_length
        limit = max(16, min(ctx // 2, ctx - _INVARIANT_TOKENS - 8))
        prompts = [*(_fit(conformance, text, limit) for text in _LONG_TEXTS), probe.messages, probe.other]
        lengths = [len(conformance.encode(m)) for m in prompts]
        alone: dict[tuple[int, int], Generated] = {}

        def reference(prompt: int, max_tokens: int) -> Generated:
            if (prompt, max_tokens) not in alone:
                alone[prompt, max_tokens] = conformance.greedy(prompts[prompt], max_tokens)
            return alone[prompt, max_tokens]

        for rows, cancel in _BATCHES:
            got = conformance.run([conformance.request(prompts[p], n) for p, n in rows], cancel=cancel)
            shape = (
                f"a batch of {len(rows)} through generate() (prompts of {[lengths[p] for p, _ in rows]} tokens, "
                f"max_tokens {[n for _, n in rows]}"
                + "".join(f", request {j} cancelled after {d} deltas" for j, d in cancel.items())
                + ")"
            )
            for j, (p, n) in enumerate(rows):
                ref = reference(p, n)
                if j in cancel:
                    check(
                        ref.text.startswith(got[j].text.rstrip("\ufffd")),
                        f"request {j} of {shape} was cancelled with {got[j].text!r}, which is not how its answer "
                        f"alone {ref.describe()} starts",
                    )
                    continue
                check(
                    got[j].same_as(ref),
                    f"request {j} of {shape} gives {got[j].describe()}, alone {ref.describe()}: the backend declares "
                    "'batch_invariant', so a greedy answer must not depend on the rest of its batch",
                )
        if Capability.CONTINUOUS_BATCHING in conformance.capabilities():
            _session_invariance(conformance, prompts, lengths)

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


def _fit(conformance: Harness, text: str, limit: int) -> tuple[Message, ...]:
    """A one-message prompt of ``text``, its end cut by words until it encodes to at most ``limit`` tokens."""
    words = text.split()
    while True:
        messages: tuple[Message, ...] = ({"role": "user", "content": " ".join(words)},)
        if len(words) <= 4 or len(conformance.encode(messages)) <= limit:
            return messages
        words = words[: len(words) * 4 // 5]


def _session_invariance(conformance: Harness, prompts: Sequence[tuple[Message, ...]], lengths: Sequence[int]) -> None:
    """Rows that join a running session, finish early or are cancelled: each greedy row gets its answer alone.

    The references go through the core too (one request per ``predict``), so the session is compared
    with the same contract (the ``max_tokens`` cap, stop handling) applied to the request alone.
    """
    model = conformance.model()
    # An open session holds the model (no other generation runs until it is closed): references first.
    alone: dict[tuple[int, int], tuple[str, str]] = {}
    for rows in _JOINS.values():
        for p, n in rows:
            if (p, n) not in alone:
                choice = model.predict(conformance.chat(prompts[p], max_tokens=n))[0]["choices"][0]
                alone[p, n] = (str(choice["message"]["content"]), str(choice["finish_reason"]))
    admitted = {
        (step, k): model.prepare_request(conformance.chat(prompts[p], max_tokens=n))
        for step, rows in _JOINS.items()
        for k, (p, n) in enumerate(rows)
    }
    dropped = admitted[_SESSION_CANCELLED]
    batch = model.open_session()
    check(batch is not None, "the backend declares 'continuous_batching' but the core could open no session")
    assert batch is not None
    try:
        last = max(_JOINS)
        for step in range(last + 10 * _INVARIANT_TOKENS):
            if step in _JOINS:
                batch.add([admitted[step, k] for k in range(len(_JOINS[step]))])
            if step > last and not batch.live:
                break
            batch.step()
            if step == _SESSION_CANCELLED[0] + _CANCEL_AFTER - 1:
                dropped.cancel()  # after its first _CANCEL_AFTER steps (a token each)
    finally:
        batch.close()
    for (step, k), prepared in admitted.items():
        p, n = _JOINS[step][k]
        ref_text, ref_finish = alone[p, n]
        text, finish = prepared.texts()[0], prepared.finish_reasons()[0]
        where = f"a request admitted to a session before step {step} (a prompt of {lengths[p]} tokens, max_tokens {n})"
        if prepared is dropped:
            check(
                ref_text.startswith(text.rstrip("\ufffd")),
                f"{where} and cancelled after {_CANCEL_AFTER} steps produced {text!r} (finish_reason={finish!r}), "
                f"which is not how its answer alone {ref_text!r} starts",
            )
            continue
        check(
            (text, finish) == (ref_text, ref_finish),
            f"{where} gives {text!r} (finish_reason={finish!r}), alone {ref_text!r} (finish_reason={ref_finish!r}): "
            "the backend declares 'batch_invariant', so a greedy answer must not depend on the rows that join, "
            "finish or are cancelled around it",
        )
