"""Streaming stop-string matcher: text is released only once it can no longer start a stop string."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher"]


class StopMatcher:
    """Cut a growing text at the first stop string, even when one straddles increments.

    ``feed`` returns the text that is safe to emit now and whether a stop string was found. Text
    that could be the beginning of a stop string is held back until the next increment settles
    it; :meth:`flush` releases it when the sequence ends without a match.
    """

    __slots__ = ("_buffer", "_stops", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buffer = ""
        self.matched = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return ``(releasable_text, matched)``. After a match, input is ignored."""
        if self.matched:
            return "", True
        if not self._stops:
            return text, False
        buf = self._buffer + text
        cut = -1
        for stop in self._stops:
            at = buf.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut != -1:
            self.matched = True
            self._buffer = ""
            return buf[:cut], True
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        self._buffer = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        """Release held-back text at the end of a sequence that matched no stop string."""
        out, self._buffer = ("" if self.matched else self._buffer), ""
        return out
