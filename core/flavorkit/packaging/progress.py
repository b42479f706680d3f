"""Progress lines for long steps (conversions, exports, downloads), written to stderr.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Quiet with ``FLAVORKIT_PROGRESS=false`` (or ``0``, ``no``, ``off``). On a terminal the elapsed time
updates in place; elsewhere (CI logs) a line is printed when a step starts, every 30 s while it
runs, and when it ends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flavorkit.settings import env_flag

__all__ = ["PROGRESS_ENV", "step"]

PROGRESS_ENV = "FLAVORKIT_PROGRESS"
#: Seconds between "still running" lines where stderr is not a terminal (a terminal updates twice a second).
HEARTBEAT_S = 30.0

#: Per thread, the steps running now, outermost first: only the innermost one reports its time, so a
#: conversion inside "Packaging ..." prints one line per beat, not two.
_STACKS = threading.local()
_ACTIVE_LOCK = threading.Lock()


def _stack() -> list[object]:
    stack: list[object] | None = getattr(_STACKS, "steps", None)
    if stack is None:
        stack = _STACKS.steps = []
    return stack


def _enabled() -> bool:
    return env_flag(PROGRESS_ENV)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Report ``title`` as a running step with its elapsed time, then done or failed."""
    if not _enabled():
        yield
        return
    out = sys.stderr
    tty = out.isatty()
    start = time.perf_counter()
    stop = threading.Event()
    me = object()
    active = _stack()  # this thread's; the ticker thread reads it under the lock

    def beat() -> None:
        period = 0.5 if tty else HEARTBEAT_S
        while not stop.wait(period):
            with _ACTIVE_LOCK:
                innermost = bool(active) and active[-1] is me
            if not innermost:
                continue  # a step inside this one is reporting
            elapsed = time.perf_counter() - start
            if tty:
                out.write(f"\r[flavorkit] {title} ... {elapsed:5.0f}s")
            else:
                out.write(f"[flavorkit] {title} ... still running ({elapsed:.0f}s)\n")
            out.flush()

    with _ACTIVE_LOCK:
        nested = bool(active)
        active.append(me)
    # On a terminal the outer step's line is still open: start this one on a line of its own.
    out.write(f"{chr(10) if tty and nested else ''}[flavorkit] {title} ...{'' if tty else chr(10)}")
    out.flush()
    ticker = threading.Thread(target=beat, daemon=True)
    ticker.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        ticker.join()
        with _ACTIVE_LOCK:
            active.remove(me)
        elapsed = time.perf_counter() - start
        state = "done" if ok else "failed"
        prefix = f"\r[flavorkit] {title} ... " if tty else f"[flavorkit] {title}: "
        out.write(f"{prefix}{state} in {elapsed:.1f}s\n")
        out.flush()
