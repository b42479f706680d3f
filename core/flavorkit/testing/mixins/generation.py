"""Generation: greedy determinism, cancellation, sampling and seeds.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, ClauseFailed, Generated, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase
from flavorkit.types import Message, close_stream

__all__ = ["GenerationClauses"]

#: How many threads share the packaged model in greedy_deterministic.
_THREADS = 3
#: How many samples, of how many tokens, at which temperature the sampling clauses compare.
_SAMPLES = 6
_SAMPLE_TOKENS = 8
_HOT = 2.0


class GenerationClauses(ConformanceBase):
    """Generation: greedy determinism, cancellation, sampling and seeds."""

    @clause("greedy_deterministic")
    def test_greedy_deterministic(self, conformance: Harness) -> None:
        """The same greedy request gives the same answer: twice raw, through two loads, and from several threads."""
        probe = conformance.probe()
        again = conformance.greedy(probe.messages, PROBE_TOKENS)
        check(
            again.same_as(probe.answer),
            f"two greedy runs of the same request differ: {probe.answer.describe()} then {again.describe()}",
        )
        request = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)
        first = content(conformance.model().predict(request)[0])
        second = content(conformance.model().predict(request)[0])
        check(first == second, f"two greedy predictions differ: {first!r} then {second!r}")
        other = content(conformance.predict(request))
        check(
            other == first,
            f"the same greedy request gives {first!r} on one loaded model and {other!r} on another load of it",
        )

        # MLflow's scoring server predicts from a thread per request: the core serializes the calls,
        # but consecutive ones may come from different threads.
        def ask(_: int) -> str:
            try:
                return content(conformance.predict(request))
            except Exception as exc:  # reported as the answer, so the message shows what each thread got
                return f"<{type(exc).__name__}: {exc}>"

        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            answers = list(pool.map(ask, range(_THREADS)))
        check(
            answers == [first] * _THREADS,
            f"{_THREADS} threads predicting the same greedy request at once got {answers!r}, alone {first!r}: the "
            "core never calls the backend from two threads at a time, but calls may come from different threads, "
            "so keep no per-thread state",
        )

    @clause("cancellation")
    def test_cancellation(self, conformance: Harness) -> None:
        """A cancelled request stops without changing the others; a stream closed part-way leaves the handle ready."""
        probe = conformance.probe()
        # The core may abandon a stream: it stops reading and calls close() (the hook spec's rule).
        abandoned = [conformance.request(probe.messages, PROBE_TOKENS)]
        stream = conformance.backend().generate(conformance.handle(), abandoned)
        first = next(iter(stream), None)
        close_stream(stream)
        again = conformance.greedy(probe.messages, PROBE_TOKENS)
        check(
            again.same_as(probe.answer),
            f"after a generate() stream was closed after its first delta {first!r}, the same request gives "
            f"{again.describe()} instead of {probe.answer.describe()}: the core may abandon a stream part-way, so "
            "release its state in a finally block and start every call from a clean state",
        )
        alone = conformance.run([conformance.request(probe.messages, PROBE_TOKENS)], cancel={0: 1})[0]
        check(
            alone.after_cancel <= 1,
            f"the request was cancelled after its first delta, yet generate() yielded {alone.after_cancel} more",
        )
        batch = conformance.run(
            [conformance.request(probe.messages, PROBE_TOKENS), conformance.request(probe.messages, PROBE_TOKENS)],
            cancel={0: 1},
        )
        check(
            batch[0].after_cancel <= 1,
            f"request 0 was cancelled after its first delta, yet generate() yielded {batch[0].after_cancel} more",
        )
        check(
            batch[1].same_as(probe.answer),
            f"cancelling request 0 changed request 1 into {batch[1].describe()} (alone: {probe.answer.describe()})",
        )

    @clause("sampling")
    def test_sampling(self, conformance: Harness) -> None:
        """top_k=1 sampling equals greedy, and sampling at temperature 2 varies."""
        probe = conformance.probe()
        k1 = conformance.run([conformance.request(probe.messages, PROBE_TOKENS, temperature=1.0, top_k=1, seed=11)])[0]
        check(
            k1.text == probe.answer.text,
            f"temperature=1.0 with top_k=1 gave {k1.text!r}; keeping only the most likely token must reproduce "
            f"the greedy answer {probe.answer.text!r}",
        )
        samples = _samples(conformance, probe.messages, seeds=[100 + i for i in range(_SAMPLES)])
        if len({s.text for s in samples}) >= 2:
            return
        # Different seeds gave one answer: either temperature is ignored, or the seed is (which
        # ``seeded_sampling`` reports). Unseeded samples tell the two apart.
        unseeded = _samples(conformance, probe.messages, seeds=[None] * _SAMPLES)
        check(
            len({s.text for s in unseeded}) >= 2,
            f"{_SAMPLES} samples at temperature={_HOT} were all {samples[0].text!r}, with different seeds and "
            "without one: temperature is ignored",
        )

    @clause("seeded_sampling")
    def test_seeded_sampling(self, conformance: Harness) -> None:
        """Sampling with the same seed repeats exactly, raw and through predict; different seeds differ."""
        probe = conformance.probe()
        runs = [
            conformance.run([conformance.request(probe.messages, PROBE_TOKENS, temperature=1.0, seed=1234)])[0]
            for _ in range(2)
        ]
        check(runs[0].same_as(runs[1]), f"seed=1234 gave {runs[0].describe()} then {runs[1].describe()}")
        request = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS, temperature=1.0, seed=99)
        first, second = content(conformance.predict(request)), content(conformance.predict(request))
        check(first == second, f"predict with seed=99 gave {first!r} then {second!r}")
        # The n choices of a seeded request are seeded seed, seed + 1, ... and run in one batch.
        both = conformance.predict({**request, "n": 2})
        for i in range(2):
            single = content(conformance.predict({**request, "seed": 99 + i}))
            check(
                content(both, i) == single,
                f"choice {i} of n=2 with seed=99 gave {content(both, i)!r}, but n=1 with seed={99 + i} gives "
                f"{single!r}: choice i of a seeded request is seeded seed + i and runs in one batch with the "
                "others, so seed each request of a batch from its own request.seed",
            )
        seeds = [100 + i for i in range(_SAMPLES)]
        samples = _samples(conformance, probe.messages, seeds=seeds)
        if len({s.text for s in samples}) >= 2:
            return
        unseeded = _samples(conformance, probe.messages, seeds=[None] * _SAMPLES)
        check(
            len({s.text for s in unseeded}) < 2,
            f"the seed has no effect: {_SAMPLES} samples at temperature={_HOT} with seeds {seeds} were all "
            f"{samples[0].text!r}, while unseeded samples vary; derive the random generator from request.seed",
        )
        raise ClauseFailed(
            f"{_SAMPLES} samples at temperature={_HOT} were all {samples[0].text!r}, with different seeds and "
            "without one, so seeds cannot be told apart (see the sampling clause)"
        )


def _samples(conformance: Harness, messages: Sequence[Message], seeds: Sequence[int | None]) -> list[Generated]:
    """One hot sample per seed (``None``: unseeded), each run alone."""
    return [
        conformance.run([conformance.request(messages, _SAMPLE_TOKENS, temperature=_HOT, seed=seed)])[0]
        for seed in seeds
    ]
