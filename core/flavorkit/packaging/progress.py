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
from typing import Any, TextIO

from flavorkit.settings import env_flag

__all__ = ["PROGRESS_ENV", "step"]

PROGRESS_ENV = "FLAVORKIT_PROGRESS"
#: Seconds between "still running" lines where stderr is not a terminal (a terminal updates twice a second).
HEARTBEAT_S = 30.0

#: Per thread, the steps running now, outermost first: only the innermost one reports its time, so a
#: conversion inside "Packaging ..." prints one line per beat, not two.
_STACKS = threading.local()
_ACTIVE_LOCK = threading.Lock()


class _Terminal:
    """stderr while a step's live line is open on a terminal: other writers start on a line of their own.

    MLflow prints "Successfully registered model ..." (and other libraries their notices) to
    ``sys.stderr`` while a step runs; without this they would run on from "... 12s". Steps write
    to the real stream; everything else goes through this proxy, which ends the open line first.
    """

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.line_open = False

    def write(self, text: str) -> int:
        with _ACTIVE_LOCK:
            if text and self.line_open:
                self.real.write("\n")
                self.line_open = False
        return self.real.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


#: The proxy installed as ``sys.stderr`` by the outermost running step on a terminal, if any.
_TERMINAL: _Terminal | None = None


def _live(out: TextIO, text: str, open_after: bool) -> None:
    """Write a step's own ``text`` to the terminal and record whether its line is left open."""
    with _ACTIVE_LOCK:
        out.write(text)
        out.flush()
        if _TERMINAL is not None:
            _TERMINAL.line_open = open_after


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
    global _TERMINAL
    out = _TERMINAL.real if _TERMINAL is not None else sys.stderr
    tty = out.isatty()
    proxy: _Terminal | None = None
    if tty and _TERMINAL is None and sys.stderr is out:
        proxy = _TERMINAL = _Terminal(out)
        sys.stderr = proxy  # type: ignore[assignment]
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
                _live(out, f"\r[flavorkit] {title} ... {elapsed:5.0f}s", open_after=True)
            else:
                _live(out, f"[flavorkit] {title} ... still running ({elapsed:.0f}s)\n", open_after=False)

    with _ACTIVE_LOCK:
        nested = bool(active)
        active.append(me)
    # On a terminal the outer step's line is still open: start this one on a line of its own.
    _live(out, f"{chr(10) if tty and nested else ''}[flavorkit] {title} ...{'' if tty else chr(10)}", open_after=tty)
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
        _live(out, f"{prefix}{state} in {elapsed:.1f}s\n", open_after=False)
        if proxy is not None:
            _TERMINAL = None
            if sys.stderr is proxy:
                sys.stderr = out
