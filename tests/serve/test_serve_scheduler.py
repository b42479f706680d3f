"""The batch-of-requests API of the runtime and the serve scheduler, on the real onnx-cpu backend."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from flavorkit.errors import InvalidRequest
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.serve.metrics import Metrics
from flavorkit.serve.scheduler import Event, QueueFull, Scheduler, ShuttingDown
from helpers import MIXED_REQUESTS, chat, check_events, load_engine
from serve_fixtures import collect_events, run_then_shutdown

pytest.importorskip("prometheus_client")


@pytest.fixture(scope="module")
def engine(tiny_ort: Path) -> LoadedModel:
    return load_engine("onnx-cpu", tiny_ort)


REQUESTS = MIXED_REQUESTS


def test_run_batch_gives_each_request_its_own_answer(engine: LoadedModel) -> None:
    alone = [engine.predict(r)[0] for r in REQUESTS]
    prepared = [engine.prepare_request(r) for r in REQUESTS]
    events = list(engine.run_batch(prepared))
    for p, want in zip(prepared, alone, strict=True):
        assert p.texts() == [c["message"]["content"] for c in want["choices"]]
        assert p.finish_reasons() == [c["finish_reason"] for c in want["choices"]]
        assert p.usage() == want["usage"]
    # the events carry exactly the text, per request and choice, and one finish each
    check_events(prepared, range(len(prepared)), events)


def test_a_request_cancelled_before_the_batch_is_skipped(engine: LoadedModel) -> None:
    prepared = [
        engine.prepare_request(chat("Hi", max_tokens=40, n=2)),
        engine.prepare_request(chat("Hi", max_tokens=8)),
    ]
    prepared[0].cancel()
    events = list(engine.run_batch(prepared))
    assert {e.request for e in events} == {1}
    assert prepared[0].finish_reasons() == ["cancelled", "cancelled"]
    assert prepared[0].usage()["completion_tokens"] == 0
    assert prepared[1].finish_reasons() == ["length"]


def test_a_request_cancelled_mid_batch_stops_within_a_step(engine: LoadedModel) -> None:
    prepared = [engine.prepare_request(chat("Hi", max_tokens=60)), engine.prepare_request(chat("Hello", max_tokens=60))]
    after_cancel = 0
    for event in engine.run_batch(prepared):
        if prepared[0].cancelled and event.request == 0:
            after_cancel += 1
        if event.request == 0 and not prepared[0].cancelled:
            prepared[0].cancel()
    assert after_cancel == 0
    assert prepared[0].finish_reasons() == ["cancelled"]
    assert prepared[0].usage()["completion_tokens"] <= 2
    assert prepared[1].finish_reasons()[0] in ("stop", "length")
    assert prepared[1].texts() == [engine.predict(chat("Hello", max_tokens=60))[0]["choices"][0]["message"]["content"]]


def test_prepare_request_names_the_bad_field(engine: LoadedModel) -> None:
    with pytest.raises(InvalidRequest) as err:
        engine.prepare_request(chat("Hi", max_tokens=10_000))
    assert err.value.field == "max_tokens"


def _hold(scheduler: Scheduler) -> threading.Event:
    """Occupy the worker with a job until the returned event is set."""
    gate = threading.Event()
    scheduler.submit_job(gate.wait)
    deadline = time.monotonic() + 10
    while not scheduler._running:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return gate


def test_requests_that_queue_up_share_the_next_generate_call(engine: LoadedModel) -> None:
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, max_batch=3, max_queue=10)

    async def main() -> list[list[Event]]:
        gate = _hold(scheduler)
        tickets = [scheduler.submit(r, stream=True) for r in REQUESTS]
        assert metrics.queue_depth._value.get() == len(REQUESTS)
        gate.set()
        return [await collect_events(t) for t in tickets]

    results = run_then_shutdown(scheduler, main)
    sizes = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name.endswith("_count"))
    total = next(s.value for s in sizes if s.name.endswith("_sum"))
    # onnx-cpu batches continuously: three start together, and each of the other two joins the
    # running batch as soon as a row frees up (max_batch=3), not when the whole batch has finished.
    assert (count, total) == (3, 5), "five queued requests: a batch of 3, then two joins of 1"
    for raw, events in zip(REQUESTS, results, strict=True):
        assert events[0].kind == "start" and events[-1].kind == "done"
        text = "".join(e.payload.text for e in events if e.kind == "delta" and e.payload.choice == 0)
        assert text == engine.predict(raw)[0]["choices"][0]["message"]["content"]


def test_the_worker_waits_briefly_for_the_clients_of_the_last_batch(engine: LoadedModel) -> None:
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, max_batch=8, max_queue=10, batch_wait=30.0)
    scheduler._last_batch = 3  # the previous batch had three clients

    async def main() -> None:
        first = scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        await asyncio.sleep(0.2)  # the others come back later, one by one
        second = scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        await asyncio.sleep(0.2)
        third = scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        for ticket in (first, second, third):
            assert (await collect_events(ticket))[-1].kind == "done"

    run_then_shutdown(scheduler, main)
    samples = {s.name: s.value for s in metrics.batch_size.collect()[0].samples}
    assert (samples["flavorkit_batch_size_count"], samples["flavorkit_batch_size_sum"]) == (1, 3)


def test_a_bad_request_fails_alone_and_the_batch_runs(engine: LoadedModel) -> None:
    scheduler = Scheduler(engine, Metrics(), max_batch=8, max_queue=10)

    async def main() -> tuple[list[Event], list[Event]]:
        gate = _hold(scheduler)
        bad = scheduler.submit(chat("Hi", max_tokens=10_000), stream=False)
        good = scheduler.submit(chat("Hi", max_tokens=4), stream=False)
        gate.set()
        return await collect_events(bad), await collect_events(good)

    bad, good = run_then_shutdown(scheduler, main)
    assert bad[-1].kind == "error" and isinstance(bad[-1].payload, InvalidRequest)
    assert bad[-1].payload.field == "max_tokens"
    assert good[-1].kind == "done" and good[-1].payload.usage()["completion_tokens"] == 4


def test_a_full_queue_refuses_and_shutdown_refuses_new_work(engine: LoadedModel) -> None:
    scheduler = Scheduler(engine, Metrics(), max_batch=8, max_queue=2)

    async def main() -> None:
        gate = _hold(scheduler)
        scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        with pytest.raises(QueueFull):
            scheduler.submit(chat("Hi", max_tokens=2), stream=False)
        gate.set()

    asyncio.run(main())
    assert scheduler.shutdown(10) is True

    async def late() -> None:
        with pytest.raises(ShuttingDown):
            scheduler.submit(chat("Hi", max_tokens=2), stream=False)

    asyncio.run(late())


def test_a_ticket_cancelled_while_queued_never_runs(engine: LoadedModel) -> None:
    metrics = Metrics()
    scheduler = Scheduler(engine, metrics, max_batch=8, max_queue=4)

    async def main() -> list[Event]:
        gate = _hold(scheduler)
        gone = scheduler.submit(chat("Hi", max_tokens=50), stream=False)
        kept = scheduler.submit(chat("Hi", max_tokens=3), stream=False)
        gone.cancel("disconnect")
        assert metrics.queue_depth._value.get() == 1
        gate.set()
        return await collect_events(kept)

    kept = run_then_shutdown(scheduler, main)
    assert kept[-1].kind == "done"
    assert metrics.completion_tokens._value.get() == 3, "only the kept request generated tokens"
    assert metrics.cancelled.labels(reason="disconnect")._value.get() == 1
