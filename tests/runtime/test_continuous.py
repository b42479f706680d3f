"""Continuous batching in the core: InterleavedSession, ContinuousBatch and the serve scheduler's joins.

The backends are real: onnx-cpu on the tiny fixture model, and a pure-Python echo backend (one
character per token) whose steps are exactly predictable.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from flavorkit import Artifacts, Capability, Delta, GenerationRequest, RuntimeInfo, hookimpl
from flavorkit.backend.registry import Backend
from flavorkit.errors import BackendError
from flavorkit.runtime.continuous import ContinuousBatch
from flavorkit.runtime.interleave import InterleavedSession
from flavorkit.runtime.loaded import BatchEvent, LoadedModel
from helpers import MIXED_REQUESTS, chat, check_events, load_engine
from serve_fixtures import collect_events, run_then_shutdown

pytest.importorskip("prometheus_client")

from flavorkit.serve.metrics import Metrics
from flavorkit.serve.scheduler import Event, Scheduler


class EchoBackend:
    """Echoes the last user message one character per token, then EOS; streams are independent."""

    def __init__(self, capabilities: tuple[Capability, ...], step_seconds: float = 0.0) -> None:
        self.caps = capabilities
        self.step_seconds = step_seconds  # a decoding step's cost, so that a server has time to react
        self.session_factory: Any = None  # a deliberately broken session, for the error paths
        self.calls: list[int] = []  # batch size of every generate() call

    @hookimpl
    def dependencies(self) -> list[str]:
        return []

    @hookimpl
    def capabilities(self) -> tuple[Capability, ...]:
        return self.caps

    @hookimpl
    def artifacts(self, source: Any, options: Any, workdir: str) -> Artifacts:
        return Artifacts(files={"echo": workdir})

    @hookimpl
    def load(self, artifacts: Any, options: Any) -> dict[str, str]:
        return {"echo": "loaded"}

    @hookimpl
    def describe(self, handle: Any) -> RuntimeInfo:
        return RuntimeInfo(context_length=512, model_name="echo")

    @hookimpl
    def encode(self, handle: Any, messages: Any) -> list[int]:
        return [ord(c) for c in messages[-1]["content"]]

    @hookimpl
    def generate_session(self, handle: Any) -> Any:
        return None if self.session_factory is None else self.session_factory()

    @hookimpl
    def generate(self, handle: Any, requests: Any) -> Any:
        self.calls.append(len(requests))
        texts = ["".join(chr(i) for i in r.prompt_ids) for r in requests]
        produced = [0] * len(requests)
        live = set(range(len(requests)))
        while live:
            time.sleep(self.step_seconds)
            for i in sorted(live):
                if requests[i].cancelled:
                    live.discard(i)
                    continue
                produced[i] += 1
                if produced[i] > len(texts[i]):
                    live.discard(i)
                    yield Delta(i, "", 1, "stop")
                elif produced[i] >= requests[i].max_tokens:
                    live.discard(i)
                    yield Delta(i, texts[i][produced[i] - 1], 1, "length")
                else:
                    yield Delta(i, texts[i][produced[i] - 1], 1)


def _echo(concurrent: bool = True, step_seconds: float = 0.0) -> tuple[LoadedModel, EchoBackend]:
    caps = (Capability.STREAMING, Capability.BATCHING) + ((Capability.CONTINUOUS_BATCHING,) if concurrent else ())
    plugin = EchoBackend(caps, step_seconds)
    backend = Backend("echo", plugin, object_path="tests.test_continuous:EchoBackend")
    return LoadedModel(backend, backend.load({}, {}), defaults={"temperature": 0.0}), plugin


def _drain(batch: ContinuousBatch, limit: int = 10_000) -> list[list[BatchEvent]]:
    steps = []
    while batch.live:
        steps.append(batch.step())
        assert len(steps) < limit
    return steps


@pytest.fixture(scope="module")
def onnx(tiny_ort: Path) -> LoadedModel:
    return load_engine("onnx-cpu", tiny_ort)


# -- InterleavedSession -----------------------------------------------------------------------------


def test_each_step_advances_every_cohort_by_one_token() -> None:
    model, plugin = _echo()
    session = InterleavedSession(lambda reqs: model.backend.generate(model.handle, reqs))
    first = session.add([GenerationRequest([ord(c) for c in "abc"], 10), GenerationRequest([ord("x")] * 5, 10)])
    assert first == [0, 1]
    assert session.step() == [Delta(0, "a", 1), Delta(1, "x", 1)]
    late = session.add([GenerationRequest([ord(c) for c in "hi"], 10)])
    assert late == [2]
    # the late request starts at the very next step, in a step of its own: its first token is not
    # held back behind a step of the running cohort, which steps at the call after
    assert session.step() == [Delta(2, "h", 1)]
    assert session.cohorts == 2 and plugin.calls == [2, 1]
    assert session.step() == [Delta(0, "b", 1), Delta(1, "x", 1), Delta(2, "i", 1)]
    assert session.step() == [Delta(0, "c", 1), Delta(1, "x", 1), Delta(2, "", 1, "stop")]
    assert session.step() == [Delta(0, "", 1, "stop"), Delta(1, "x", 1)]
    assert session.cohorts == 1, "a cohort whose rows all finished is closed"
    assert session.step() == [Delta(1, "x", 1)]
    assert session.step() == [Delta(1, "", 1, "stop")]
    assert session.step() == [] and session.cohorts == 0


def test_a_cancelled_cohort_is_closed_without_another_step() -> None:
    model, _plugin = _echo()
    session = InterleavedSession(lambda reqs: model.backend.generate(model.handle, reqs))
    reqs = [GenerationRequest([ord("a")] * 9, 20), GenerationRequest([ord("b")] * 9, 20)]
    session.add(reqs)
    session.add([GenerationRequest([ord("c")] * 3, 20)])
    session.step()
    reqs[0].cancelled = reqs[1].cancelled = True
    assert session.step() == [Delta(2, "c", 1)]
    assert session.cohorts == 1


def test_a_newcomer_cancelled_before_its_first_step_does_not_stall_the_running_cohort() -> None:
    model, plugin = _echo()
    session = InterleavedSession(lambda reqs: model.backend.generate(model.handle, reqs))
    session.add([GenerationRequest([ord(c) for c in "abc"], 10)])
    assert session.step() == [Delta(0, "a", 1)]
    late = GenerationRequest([ord("z")] * 4, 10)
    session.add([late])
    late.cancelled = True
    # an empty step would read as "nothing live" to the core: the running cohort steps instead
    assert session.step() == [Delta(0, "b", 1)]
    assert session.cohorts == 1 and plugin.calls == [1], "the cancelled newcomer never reached the backend"


# -- ContinuousBatch on onnx-cpu --------------------------------------------------------------------

#: The first three start together, the other two join later (in test_continuous).
REQUESTS = MIXED_REQUESTS


def test_requests_joining_mid_flight_get_exactly_their_own_answers(onnx: LoadedModel) -> None:
    alone = [onnx.predict(r)[0] for r in REQUESTS]
    batch = onnx.open_session()
    assert isinstance(batch, ContinuousBatch)
    assert isinstance(batch.session, InterleavedSession), "onnx-cpu's session interleaves og.Generators"
    prepared = [onnx.prepare_request(r) for r in REQUESTS]
    keys = batch.add(prepared[:3])
    events = batch.step() + batch.step()
    keys += batch.add(prepared[3:])
    assert batch.live == sum(not p.finished for p in prepared)
    late = batch.step()
    # both late requests start at the next step, each in its own generator (different settings)
    assert {e.request for e in late if e.tokens} >= {keys[3], keys[4]}
    events += late
    for step in _drain(batch):
        events += step
    batch.close()
    for p, want in zip(prepared, alone, strict=True):
        assert p.texts() == [c["message"]["content"] for c in want["choices"]]
        assert p.finish_reasons() == [c["finish_reason"] for c in want["choices"]]
        assert p.usage() == want["usage"]
    check_events(prepared, keys, events)


def test_a_request_cancelled_in_a_session_stops_at_once_and_the_others_go_on(onnx: LoadedModel) -> None:
    batch = onnx.open_session()
    assert batch is not None
    prepared = [onnx.prepare_request(chat("Hi", max_tokens=60)), onnx.prepare_request(chat("Hello", max_tokens=60))]
    keys = batch.add(prepared)
    batch.step()
    batch.step()
    prepared[0].cancel()
    after = [e for step in _drain(batch) for e in step]
    batch.close()
    assert [e for e in after if e.request == keys[0]] == []
    assert prepared[0].finish_reasons() == ["cancelled"]
    assert prepared[0].usage()["completion_tokens"] == 2
    want = onnx.predict(chat("Hello", max_tokens=60))[0]
    assert prepared[1].texts() == [want["choices"][0]["message"]["content"]]


def test_a_request_cancelled_before_it_joins_never_reaches_the_backend() -> None:
    model, plugin = _echo()
    batch = model.open_session()
    assert batch is not None
    p = model.prepare_request(chat("abc", max_tokens=5))
    p.cancel()
    assert batch.add([p]) == [0]
    assert batch.live == 0 and batch.step() == [] and plugin.calls == []
    assert p.finish_reasons() == ["cancelled"]


def test_closing_a_session_cancels_what_is_left_and_closes_the_streams() -> None:
    model, _plugin = _echo()
    batch = model.open_session()
    assert batch is not None
    p = model.prepare_request(chat("abcdef", max_tokens=5))
    batch.add([p])
    batch.step()
    batch.close()
    assert p.cancelled and p.finish_reasons() == ["cancelled"] and p.texts() == ["a"]
    assert isinstance(batch.session, InterleavedSession) and batch.session.cohorts == 0


def test_a_backend_without_continuous_batching_has_no_session() -> None:
    model, _plugin = _echo(concurrent=False)
    assert model.open_session() is None


# -- sessions that break the contract ---------------------------------------------------------------


class _Reusing(InterleavedSession):
    """Hands out the same ids again."""

    def add(self, requests: Any) -> list[int]:
        super().add(requests)
        return list(range(len(requests)))


class _Stray(InterleavedSession):
    """Reports every delta under an id it never issued."""

    def step(self) -> list[Delta]:
        return [Delta(d.index + 1000, d.text, d.tokens, d.finish_reason) for d in super().step()]


class _Quitter(InterleavedSession):
    """Stops producing after the first step."""

    def step(self) -> list[Delta]:
        out = super().step()
        self.close()
        return out


def test_sessions_that_break_the_contract_are_backend_errors() -> None:
    model, _plugin = _echo()
    gen = lambda reqs: model.backend.generate(model.handle, reqs)  # noqa: E731

    reusing = ContinuousBatch(model, _Reusing(gen))
    reusing.add([model.prepare_request(chat("ab"))])
    with pytest.raises(BackendError, match=r"add\(\) must return one new, unique id per request; got \[0\]"):
        reusing.add([model.prepare_request(chat("cd"))])

    stray = ContinuousBatch(model, _Stray(gen))
    stray.add([model.prepare_request(chat("ab"))])
    with pytest.raises(BackendError, match="unknown session id 1000"):
        stray.step()

    quitter = ContinuousBatch(model, _Quitter(gen))
    quitter.add([model.prepare_request(chat("abc", n=2))])
    quitter.step()
    with pytest.raises(BackendError, match="stopped without finishing 2 request"):
        quitter.step()


# -- the scheduler ----------------------------------------------------------------------------------


def _order(join_wait: float) -> list[str]:
    """Which ticket's deltas came in which order: a long request, and a short one sent mid-way."""
    model, _plugin = _echo(step_seconds=0.005)
    scheduler = Scheduler(model, Metrics(), max_batch=8, max_queue=8, join_wait=join_wait)
    order: list[str] = []

    async def main() -> None:
        long = scheduler.submit(chat("L" * 200, max_tokens=200), stream=True)
        seen = 0
        while seen < 3:
            event = await asyncio.wait_for(long.events.get(), 30)
            seen += event.kind == "delta"
        short = scheduler.submit(chat("s" * 3, max_tokens=10), stream=True)

        async def follow(name: str, ticket: Any) -> None:
            while True:
                event = await asyncio.wait_for(ticket.events.get(), 30)
                if event.kind == "delta":
                    order.append(name)
                if event.kind in ("done", "error"):
                    order.append(name + ":" + event.kind)
                    return

        await asyncio.gather(follow("L", long), follow("s", short))

    run_then_shutdown(scheduler, main)
    return order


def test_a_late_request_joins_the_running_batch_within_a_few_steps() -> None:
    order = _order(join_wait=0.0)
    first = order.index("s")
    assert order.index("s:done") < order.index("L:done"), "the short request does not wait for the long one"
    assert order[:first].count("L") <= 3, order[:first]
    assert order[first:].count("s") == 4  # "s", "s", "s" and the end-of-sequence step


def test_without_freed_rows_a_newcomer_joins_at_once_whatever_join_wait() -> None:
    # nobody finished, so no client is coming back: waiting would only delay the newcomer
    order = _order(join_wait=60.0)  # longer than the long request takes
    first = order.index("s")
    assert order.index("s:done") < order.index("L:done"), order
    assert order[:first].count("L") <= 3, order[:first]


def _returning(join_wait: float) -> list[int]:
    """Two short rows finish beside a long one; their clients come back 0.3 s apart.

    Returns the size of every admission to the running session, in order (the long one's first).
    """
    model, _plugin = _echo(step_seconds=0.01)  # the long one decodes for 2.5 s at least
    metrics = Metrics()
    sizes: list[int] = []
    observe = metrics.batch_size.observe
    metrics.batch_size.observe = lambda value, *a, **k: (sizes.append(int(value)), observe(value, *a, **k))[1]  # type: ignore[method-assign]
    scheduler = Scheduler(model, metrics, max_batch=8, max_queue=8, join_wait=join_wait)

    async def main() -> None:
        tickets = [scheduler.submit(chat("L" * 250, max_tokens=250), stream=True)]
        await asyncio.sleep(0.05)  # the long one decodes
        tickets += [scheduler.submit(chat("ab", max_tokens=5), stream=True) for _ in range(2)]
        for ticket in tickets[1:]:
            assert (await collect_events(ticket))[-1].kind == "done"
        tickets.append(scheduler.submit(chat("cd", max_tokens=5), stream=True))
        await asyncio.sleep(0.3)
        tickets.append(scheduler.submit(chat("ef", max_tokens=5), stream=True))
        for ticket in tickets[3:]:
            assert (await collect_events(ticket))[-1].kind == "done"
        assert not tickets[0].done, "the long one was still running when the clients came back"
        tickets[0].cancel("disconnect")

    run_then_shutdown(scheduler, main)
    return sizes


def test_after_rows_finish_a_newcomer_waits_for_the_other_returning_client() -> None:
    # two rows finished: the first client back waits (up to join_wait) for the second, and they
    # join as one group instead of two generators
    sizes = _returning(join_wait=60.0)
    assert sizes[0] == 1 and sum(sizes[1:-1]) == 2, sizes
    assert sizes[-1] == 2, "the two returning clients joined together"


def test_without_join_wait_returning_clients_join_one_by_one() -> None:
    sizes = _returning(join_wait=0.0)
    assert sizes[-2:] == [1, 1] and sum(sizes) == 5, sizes


# -- failures: every ticket gets its last event, nothing hangs ------------------------------------


def test_a_stream_that_ends_without_finishing_its_rows_fails_at_once() -> None:
    def quits(requests: Any) -> Any:
        yield Delta(0, "a", 1)  # then stops: no finish_reason ever comes

    session = InterleavedSession(quits)
    session.add([GenerationRequest([1], 5)])
    with pytest.raises(BackendError, match=r"ended without finishing 1 request\(s\)"):
        session.step()
        session.step()


def test_a_plan_that_loses_a_request_is_refused() -> None:
    session = InterleavedSession(lambda reqs: iter(()), split=lambda reqs: [[0]])
    with pytest.raises(BackendError, match=r"must name each of the 2 request\(s\) exactly once, got \[\[0\]\]"):
        session.add([GenerationRequest([1], 5), GenerationRequest([2], 5)])


def test_ids_of_finished_choices_are_not_reused() -> None:
    model, _plugin = _echo()

    class Recycling(InterleavedSession):
        def add(self, requests: Any) -> list[int]:
            super().add(requests)
            return [0]

    batch = ContinuousBatch(model, Recycling(lambda reqs: model.backend.generate(model.handle, reqs)))
    batch.add([model.prepare_request(chat("a", max_tokens=1))])
    _drain(batch)
    with pytest.raises(BackendError, match="one new, unique id per request"):
        batch.add([model.prepare_request(chat("b", max_tokens=1))])


def test_handle_hooks_ignore_a_session_attribute_that_is_not_a_method() -> None:
    from flavorkit.backend.handles import HandleHooks

    class Handle:
        session = object()  # e.g. an onnxruntime InferenceSession

    assert HandleHooks().generate_session(Handle()) is None


def _serve(model: LoadedModel, raws: list[dict[str, Any]], **options: Any) -> tuple[list[list[Event]], Metrics]:
    metrics = Metrics()
    scheduler = Scheduler(model, metrics, max_batch=8, max_queue=8, **options)

    async def main() -> list[list[Event]]:
        tickets = [scheduler.submit(raws[0], stream=True)]
        first = await asyncio.wait_for(tickets[0].events.get(), 30)
        assert first.kind in ("start", "error")
        for raw in raws[1:]:
            tickets.append(scheduler.submit(raw, stream=True))
        return [[first, *await collect_events(tickets[0])], *[await collect_events(t) for t in tickets[1:]]]

    return run_then_shutdown(scheduler, main), metrics


def test_a_session_that_cannot_be_opened_falls_back_to_request_level_batching() -> None:
    model, plugin = _echo()

    def broken() -> Any:
        raise RuntimeError("no session today")

    plugin.session_factory = broken
    results, metrics = _serve(model, [chat("abc", max_tokens=10)])
    assert results[0][-1].kind == "done" and results[0][-1].payload.texts() == ["abc"]
    assert metrics.active._value.get() == 0


def test_a_session_that_refuses_a_join_ends_every_ticket_with_an_error() -> None:
    model, plugin = _echo(step_seconds=0.005)
    plugin.session_factory = lambda: _Reusing(lambda reqs: model.backend.generate(model.handle, reqs))
    results, metrics = _serve(model, [chat("L" * 200, max_tokens=200), chat("s", max_tokens=5)], join_wait=0.0)
    assert [events[-1].kind for events in results] == ["error", "error"]
    assert all(isinstance(events[-1].payload, BackendError) for events in results)
    assert metrics.active._value.get() == 0, "every admitted ticket was finished"


# -- request-level batching (run_batch): cancellation in flight --------------------------------------


class _Recording(EchoBackend):
    """The echo backend, recording which request every delta was for and whether its stream was closed."""

    def __init__(self, *, honours_cancel: bool) -> None:
        super().__init__((Capability.STREAMING, Capability.BATCHING))
        self.honours_cancel = honours_cancel
        self.yielded: list[int] = []
        self.closed_early = False

    @hookimpl
    def generate(self, handle: Any, requests: Any) -> Any:
        texts = ["".join(chr(i) for i in r.prompt_ids) for r in requests]
        live = list(range(len(requests)))
        produced = [0] * len(requests)
        try:
            while live:
                for i in list(live):
                    if self.honours_cancel and requests[i].cancelled:
                        live.remove(i)
                        continue
                    produced[i] += 1
                    done = produced[i] == len(texts[i])
                    if done:
                        live.remove(i)
                    self.yielded.append(i)
                    yield Delta(i, texts[i][produced[i] - 1], 1, "stop" if done else None)
        except GeneratorExit:
            self.closed_early = True
            raise


def _recording(honours_cancel: bool) -> tuple[LoadedModel, _Recording]:
    plugin = _Recording(honours_cancel=honours_cancel)
    backend = Backend("echo", plugin, object_path="tests.test_continuous:_Recording")
    return LoadedModel(backend, backend.load({}, {}), defaults={"temperature": 0.0}), plugin


def test_a_request_cancelled_mid_batch_is_dropped_at_the_backends_next_step() -> None:
    model, plugin = _recording(honours_cancel=True)
    a, b = model.prepare_request(chat("hello")), model.prepare_request(chat("abcdefgh"))
    events, cut = [], None
    for event in model.run_batch([a, b]):
        events.append(event)
        if event.request == 1 and cut is None:
            b.cancel()  # from the consumer, between two backend steps
            cut = len(plugin.yielded)
    assert cut is not None
    # The backend saw the flag at its very next step: no token of b was generated after the cancel.
    assert 1 not in plugin.yielded[cut:]
    assert [e.request for e in events].count(1) == 1
    assert (a.texts(), a.finish_reasons()) == (["hello"], ["stop"])
    assert (b.texts(), b.finish_reasons(), b.completion_tokens) == (["a"], ["cancelled"], 1)


@pytest.mark.parametrize("cancel", ["both", "the longer"])
def test_once_every_live_request_is_done_the_stream_is_closed_even_if_the_backend_ignores_cancel(
    cancel: str,
) -> None:
    # "the backend may still be winding down": the core stops reading the moment nothing it waits
    # for is left, and closes the stream, so a backend that ignores the flag cannot keep it busy.
    model, plugin = _recording(honours_cancel=False)
    a, b = model.prepare_request(chat("hey")), model.prepare_request(chat("abcdefghijklmnop"))
    events = []
    for event in model.run_batch([a, b]):
        events.append(event)
        if len(events) == 2:  # one token of each
            b.cancel()
            if cancel == "both":
                a.cancel()
    assert plugin.closed_early
    if cancel == "both":
        assert (a.finish_reasons(), b.finish_reasons()) == (["cancelled"], ["cancelled"])
        assert len(plugin.yielded) == 3  # the delta read before the core polled the flags
    else:
        assert (a.texts(), a.finish_reasons(), b.finish_reasons()) == (["hey"], ["stop"], ["cancelled"])
        assert plugin.yielded == [0, 1, 0, 1, 0]  # a's last token ends the stream; b is not drained


class _BrokenEncode(EchoBackend):
    @hookimpl
    def encode(self, handle: Any, messages: Any) -> list[int]:
        raise BackendError("the tokenizer crashed")


def test_an_encode_error_that_is_not_a_template_refusal_stays_a_backend_error() -> None:
    # Only a chat template's own refusal (a Jinja error) is the request's fault; anything else the
    # backend raises while encoding is a server error, not a 400 naming the messages.
    plugin = _BrokenEncode((Capability.STREAMING,))
    backend = Backend("echo", plugin, object_path="tests.test_continuous:_BrokenEncode")
    model = LoadedModel(backend, backend.load({}, {}), defaults={"temperature": 0.0})
    with pytest.raises(BackendError, match=r"^the tokenizer crashed$"):
        model.prepare_request(chat("hi"))
