"""The rules the hook spec settles for backends, as the core applies them (real threads, real plugin objects).

The backend here is a small pure-Python plugin registered through :class:`flavorkit.backend.registry.Backend`,
like every installed backend. It records what the core asks of it: how many of its calls overlap in
time, how many of its ``generate`` streams are open at once, which message fields reach ``encode``,
and whether an abandoned stream's cleanup ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from flavorkit import Artifacts, Capability, Delta, GenerationRequest, RuntimeInfo, hookimpl
from flavorkit.backend.registry import Backend
from flavorkit.runtime.loaded import LoadedModel

#: Seconds each recorded call sleeps while marked busy: long enough for unserialized threads to overlap.
BUSY_S = 0.004


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store."""


@dataclass
class Recorder:
    """What the backend saw: overlapping calls, open streams, messages, finished cleanups."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: int = 0
    most_busy: int = 0
    open_streams: int = 0
    most_open: int = 0
    messages: list[list[dict[str, str]]] = field(default_factory=list)
    cleanups: int = 0

    def enter(self) -> None:
        with self.lock:
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        time.sleep(BUSY_S)

    def leave(self) -> None:
        with self.lock:
            self.busy -= 1


class Echo:
    """Answers the last message's content one character per token; records overlaps (see :class:`Recorder`)."""

    def __init__(self, caps: Sequence[Capability] = (Capability.STREAMING,)) -> None:
        self.caps = list(caps)

    @hookimpl
    def dependencies(self) -> list[str]:
        return []

    @hookimpl
    def capabilities(self) -> list[Capability]:
        return self.caps

    @hookimpl
    def artifacts(self, source: Any, options: Any, workdir: str) -> Artifacts:
        return Artifacts(files={"weights": str(source)})

    @hookimpl
    def load(self, artifacts: Any, options: Any) -> Recorder:
        return Recorder()

    @hookimpl
    def describe(self, handle: Recorder) -> RuntimeInfo:
        return RuntimeInfo(context_length=4096, model_name="echo")

    @hookimpl
    def encode(self, handle: Recorder, messages: Sequence[dict[str, str]]) -> list[int]:
        handle.enter()
        try:
            handle.messages.append([dict(m) for m in messages])
            return [ord(c) for c in messages[-1]["content"]]
        finally:
            handle.leave()

    @hookimpl
    def generate(self, handle: Recorder, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        return self._decode(handle, requests)

    def _decode(self, handle: Recorder, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        with handle.lock:
            handle.open_streams += 1
            handle.most_open = max(handle.most_open, handle.open_streams)
        try:
            for i, req in enumerate(requests):
                text = "".join(chr(t) for t in req.prompt_ids)[: req.max_tokens]
                for k, char in enumerate(text):
                    if req.cancelled:
                        break
                    handle.enter()
                    handle.leave()
                    yield Delta(i, char, 1, "length" if k + 1 == req.max_tokens else None)
                else:
                    if len(text) < req.max_tokens:
                        yield Delta(i, "", 1, "stop")
        finally:
            with handle.lock:
                handle.open_streams -= 1
                handle.cleanups += 1


def model_of(plugin: Echo | None = None) -> LoadedModel:
    backend = Backend("echo", plugin or Echo(), object_path="test_spec_rules:Echo")
    return LoadedModel(backend, backend.load({"weights": "x"}, {}))


def chat(text: str, **settings: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "temperature": 0, **settings}


def answer(response: dict[str, Any]) -> str:
    return str(response["choices"][0]["message"]["content"])


def run_threads(targets: Sequence[Any], timeout: float = 60.0) -> None:
    """Start every target in its own thread at once; fail if one raises or does not end in time."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(fn: Any) -> Any:
        def run() -> None:
            start.wait()
            try:
                fn()
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish: the model deadlocked"
    assert not errors, errors


# -- concurrency --------------------------------------------------------------------------------------


def test_threads_sharing_a_model_never_overlap_in_the_backend_and_each_gets_its_answer() -> None:
    model = model_of()
    texts = [f"thread {i} says hello" for i in range(6)]
    got: dict[int, Any] = {}

    def predict(i: int) -> Any:
        return lambda: got.__setitem__(i, answer(model.predict(chat(texts[i], max_tokens=64))[0]))

    def stream(i: int) -> Any:
        def run() -> None:
            chunks = list(model.predict_stream(chat(texts[i], max_tokens=64)))
            got[i] = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

        return run

    run_threads([predict(0), predict(1), predict(2), stream(3), stream(4), predict(5)])
    assert got == dict(enumerate(texts))
    handle: Recorder = model.handle
    assert handle.most_busy == 1, f"{handle.most_busy} backend calls ran at the same time"
    assert handle.most_open == 1, f"{handle.most_open} generate streams of one handle were open at once"
    assert handle.cleanups == 6 and handle.open_streams == 0


def test_a_stream_abandoned_after_its_first_chunk_is_closed_and_the_model_serves_the_next_request() -> None:
    model = model_of()
    handle: Recorder = model.handle
    stream = model.predict_stream(chat("abcdef", max_tokens=6))
    first = next(stream)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    stream.close()  # type: ignore[attr-defined]
    assert handle.cleanups == 1 and handle.open_streams == 0, "the backend's finally block ran at close()"
    got: list[str] = []
    run_threads([lambda: got.append(answer(model.predict(chat("xyz", max_tokens=3))[0]))], timeout=10)
    assert got == ["xyz"]


def test_a_stream_dropped_without_close_frees_the_model_when_it_is_collected() -> None:
    model = model_of()
    stream = model.predict_stream(chat("abcdef", max_tokens=6))
    next(stream)
    del stream  # CPython finalizes the generator at once: GeneratorExit closes the backend's stream
    got: list[str] = []
    run_threads([lambda: got.append(answer(model.predict(chat("xyz", max_tokens=3))[0]))], timeout=10)
    assert got == ["xyz"]
    assert model.handle.cleanups == 2


def test_a_generation_waits_for_an_open_session_and_runs_once_it_is_closed() -> None:
    model = model_of(Echo([Capability.STREAMING, Capability.CONTINUOUS_BATCHING]))
    batch = model.open_session()
    assert batch is not None
    prepared = model.prepare_request(chat("session", max_tokens=7))  # encoding does not wait
    batch.add([prepared])
    batch.step()
    done = threading.Event()
    result: list[str] = []

    def predict() -> None:
        result.append(answer(model.predict(chat("later", max_tokens=5))[0]))
        done.set()

    waiter = threading.Thread(target=predict)
    waiter.start()
    assert not done.wait(0.3), "a predict ran while the session still had a live request"
    while batch.live:
        batch.step()
    batch.close()
    waiter.join(10)
    assert done.is_set() and result == ["later"]
    assert prepared.texts() == ["session"]
    assert model.handle.most_open == 1


# -- message fields ---------------------------------------------------------------------------------


def test_encode_gets_exactly_role_and_content_even_when_a_message_has_a_name() -> None:
    model = model_of()
    model.predict(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "hi", "name": "alice"},
            ],
            "max_tokens": 2,
        }
    )
    assert model.handle.messages == [[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]]
