"""Helpers for the ``flavorkit serve`` tests: a real uvicorn server on loopback, in this process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in a background thread; yield the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def server_process(cmd: Sequence[str], ready_url: str, *, timeout: float = 120, **popen: Any) -> Iterator[None]:
    """Run a server command in its own process group until ``ready_url`` answers 200; stop it afterwards.

    Its output goes to a temporary log, whose tail is in the error when it does not start in time.
    SIGTERM stops it (the whole group); 30 s later at most, SIGKILL ends what is left of the group.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        tail = log.read().decode(errors="replace")[-3000:]
                        raise RuntimeError(f"{cmd[0]} did not start:\n{tail}") from None
                    time.sleep(0.3)
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is gone if it died while starting
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            # Whatever of the group is still there (children that outlived their leader, or a leader
            # that ignored SIGTERM) is killed, and the leader reaped.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_then_shutdown(scheduler: Any, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on an event loop of its own, then shut the scheduler down whatever happened."""
    import asyncio

    try:
        return asyncio.run(main())
    finally:
        scheduler.shutdown(5)


async def collect_events(ticket: Any) -> list[Any]:
    """A scheduler ticket's events up to and including its last one (done, error or result)."""
    import asyncio

    events = []
    while True:
        event = await asyncio.wait_for(ticket.events.get(), 30)
        events.append(event)
        if event.kind in ("done", "error", "result"):
            return events


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


def hold_worker(scheduler: Any) -> threading.Event:
    """Occupy the scheduler's worker with a job until the returned event is set (requests then queue)."""
    import asyncio

    gate = threading.Event()

    async def submit() -> None:
        scheduler.submit_job(gate.wait)

    asyncio.run(submit())
    deadline = time.monotonic() + 10
    while not scheduler._running:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not take the job")
        time.sleep(0.005)
    return gate
