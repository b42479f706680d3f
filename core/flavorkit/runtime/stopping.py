"""Streaming stop-string matcher: text is released only once it can no longer start a stop string.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    """Cut a growing text at its earliest stop string, whatever the increments look like.

    The answer is the text before the earliest-starting occurrence of any stop string, exactly as
    if the whole text were searched at once: ``feed`` releases only text that can no longer be part
    of a stop string, holds back the rest (a stop string may straddle increments), and reports a
    match only when no earlier-starting stop string can still complete. :meth:`flush` settles what
    is held back when the sequence ends.
    """

    __slots__ = ("_buffer", "_longest", "_stops", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._buffer = ""
        self.matched = False

    def _earliest_match(self, buf: str) -> int:
        found = [at for at in (buf.find(stop) for stop in self._stops) if at != -1]
        return min(found, default=-1)

    def _earliest_partial(self, buf: str, before: int) -> int:
        """The first position before ``before`` where a stop string starts but is not yet complete."""
        for at in range(max(0, len(buf) - self._longest + 1), before):
            tail = buf[at:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self._stops):
                return at
        return -1

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return ``(releasable_text, matched)``. After a match, input is ignored."""
        if self.matched:
            return "", True
        if not self._stops:
            return text, False
        buf = self._buffer + text
        cut = self._earliest_match(buf)
        limit = cut if cut != -1 else len(buf)
        pending = self._earliest_partial(buf, limit)
        if cut != -1 and pending == -1:
            self.matched = True
            self._buffer = ""
            return buf[:cut], True
        keep_from = pending if pending != -1 else cut if cut != -1 else len(buf)
        self._buffer = buf[keep_from:]
        return buf[:keep_from], False

    def flush(self) -> tuple[str, bool]:
        """Settle held-back text at the end of a sequence: ``(text, matched)``."""
        buf, self._buffer = self._buffer, ""
        if self.matched:
            return "", True
        cut = self._earliest_match(buf)
        if cut != -1:
            self.matched = True
            return buf[:cut], True
        return buf, False
