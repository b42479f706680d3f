"""Cancellation, timeouts and SIGTERM draining of ``flavorkit serve``, on the transformers backend.

Where a test needs a request to be waiting, it occupies the server's worker with a job
(``hold_worker``), so the outcome does not depend on how fast the machine decodes. The
mid-answer disconnect compares the tokens spent on the cancelled stream with the tokens of the
same request run to its end (the longest answer the tiny model's context allows).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_fixtures import free_port, hold_worker, metric, running

openai = pytest.importorskip("openai")
pytest.importorskip("prometheus_client")
pytest.importorskip("torch")

from flavorkit.serve import create_app  # noqa: E402

NAME = "tiny-hf"
PROMPT = [{"role": "user", "content": "Tell me a story"}]
LONG = 230  # max_tokens of the long requests: the tiny model's context (256) less the prompt


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_hf: Path) -> Path:
    import flavorkit

    path = tmp_path_factory.mktemp("serve-hf") / NAME
    flavorkit.package(model=str(tiny_hf), backend="transformers", path=path, generation={"temperature": 0.0})
    return path


@pytest.fixture(scope="module")
def app(hf_model_dir: Path) -> Any:
    return create_app(str(hf_model_dir))


@pytest.fixture(scope="module")
def base(app: Any) -> Iterator[str]:
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def full_length(base: str) -> int:
    """Tokens the long request costs when nobody cancels it."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG)
    assert r.usage.completion_tokens >= 60, "the long request must take long enough to be cancelled"
    return int(r.usage.completion_tokens)


def _metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def _wait_cancelled(base: str, reason: str, before: str) -> str:
    """Poll /metrics until one more request was cancelled for ``reason`` and none is running."""
    deadline = time.monotonic() + 20
    while True:
        now = _metrics(base)
        done = metric(now, "flavorkit_cancelled_requests_total", reason=reason) - metric(
            before, "flavorkit_cancelled_requests_total", reason=reason
        )
        if done == 1 and metric(now, "flavorkit_active_requests") == 0:
            return now
        assert time.monotonic() < deadline, f"no cancellation for {reason!r} was recorded"
        time.sleep(0.05)


def _spent(before: str, after: str) -> float:
    return metric(after, "flavorkit_completion_tokens_total") - metric(before, "flavorkit_completion_tokens_total")


def test_stream_equals_non_stream_on_transformers(base: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    whole = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=12)
    chunks = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content


def test_a_disconnected_stream_stops_costing_compute(base: str, full_length: int) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    before = _metrics(base)
    stream = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG, stream=True)
    first = next(iter(stream))  # the role chunk: the request joined a batch and is decoding
    assert first.choices[0].delta.role == "assistant"
    stream.close()  # the client goes away mid-answer
    after = _wait_cancelled(base, "disconnect", before)
    assert _spent(before, after) < full_length / 2


def test_a_disconnected_waiting_request_never_runs(app: Any, base: str) -> None:
    impatient = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=0.5)
    before = _metrics(base)
    gate = hold_worker(app.server.scheduler)
    try:
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG)
        after = _wait_cancelled(base, "disconnect", before)
        assert metric(after, "flavorkit_queue_depth") == 0, "the cancelled request left the queue"
    finally:
        gate.set()
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=2).usage.completion_tokens == 2
    assert _spent(before, _metrics(base)) == 2, "the abandoned request generated nothing"


def test_request_timeout_is_a_504_and_cancels_the_request(hf_model_dir: Path) -> None:
    app = create_app(str(hf_model_dir), request_timeout=0.5)
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        before = _metrics(url)
        gate = hold_worker(app.server.scheduler)
        try:
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG)
            assert err.value.status_code == 504
            assert err.value.code == "request_timeout"
            assert err.value.type == "timeout_error"
            _wait_cancelled(url, "timeout", before)
            before = _metrics(url)
            with pytest.raises(openai.InternalServerError) as err:  # a stream that never started: a plain 504
                client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG, stream=True)
            assert err.value.status_code == 504
            _wait_cancelled(url, "timeout", before)
        finally:
            gate.set()
        short = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=2)
        assert short.usage.completion_tokens == 2, "the server keeps serving"
        assert _spent(before, _metrics(url)) == 2, "the timed-out requests generated nothing"


@pytest.mark.slow  # a fresh process that imports torch: about 20 s here
def test_sigterm_drains_in_flight_requests_then_exits(hf_model_dir: Path, full_length: int) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "flavorkit.cli", "serve", str(hf_model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--drain-timeout", "60", "--log-level", "info"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except OSError:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None and proc.stdout else ""
                assert proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{out[-3000:]}"
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
        expected = client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG)
        first = threading.Event()
        got: dict[str, Any] = {}

        def consume() -> None:
            text, finish = [], None
            for chunk in client.chat.completions.create(model=NAME, messages=PROMPT, max_tokens=LONG, stream=True):
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
                first.set()
            got.update(text="".join(text), finish=finish)

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)  # while the stream is running
        reader.join(60)
        assert got == {"text": expected.choices[0].message.content, "finish": expected.choices[0].finish_reason}
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status says SIGTERM
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert "Finished server process" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_cli_serve_defaults_bind_loopback() -> None:
    from flavorkit.cli import build_parser

    args = build_parser().parse_args(["serve", "models:/m@champion"])
    assert (args.host, args.port, args.max_batch, args.max_queue) == ("127.0.0.1", 8000, 8, 64)
    assert args.api_key is None  # then FLAVORKIT_API_KEY, read by create_app
    args = build_parser().parse_args(
        ["serve", "m", "--served-model-name", "x", "--api-key", "k", "--request-timeout", "5", "--log-level", "debug"]
    )
    assert (args.served_model_name, args.api_key, args.request_timeout, args.log_level) == ("x", "k", 5.0, "debug")


def test_an_invocations_job_that_times_out_while_queued_never_runs(hf_model_dir: Path) -> None:
    app = create_app(str(hf_model_dir), request_timeout=0.5)
    # The model's first generation includes torch's warm-up, which alone can outlast the 0.5 s timeout
    # of the follow-up request below; warm it up first, outside the server (no job, no token counted).
    app.server.pyfunc.predict({"messages": PROMPT, "max_tokens": 1})
    with running(app) as url:
        before = _metrics(url)
        gate = hold_worker(app.server.scheduler)
        try:
            req = urllib.request.Request(
                f"{url}/invocations",
                data=json.dumps({"messages": PROMPT, "max_tokens": LONG}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=30)
            assert err.value.code == 504
            assert json.loads(err.value.read())["error"]["code"] == "request_timeout"
            _wait_cancelled(url, "timeout", before)
        finally:
            gate.set()
        status = urllib.request.urlopen(
            urllib.request.Request(
                f"{url}/invocations",
                data=json.dumps({"messages": PROMPT, "max_tokens": 2}).encode(),
                headers={"Content-Type": "application/json"},
            ),
            timeout=30,
        ).status
        assert status == 200
        assert _spent(before, _metrics(url)) == 2, "only the second request generated (counted by the job guard)"
