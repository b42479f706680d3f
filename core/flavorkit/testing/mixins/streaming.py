"""Streaming and continuous batching: the stream equals predict, arrives in pieces, and requests join.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase

__all__ = ["StreamingClauses"]


class StreamingClauses(ConformanceBase):
    """Streaming and continuous batching: the stream equals predict, arrives in pieces, and requests join."""

    @clause("stream_matches_predict")
    def test_stream_matches_predict(self, conformance: Harness) -> None:
        """predict_stream's chunks join into predict's answer; shorter requests return the stream's start."""
        probe = conformance.probe()
        request = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)
        full = conformance.predict(request)
        chunks = list(conformance.pyfunc().predict_stream(request))
        check(chunks, "predict_stream yielded no chunk")
        check(
            all(c.get("object") == "chat.completion.chunk" for c in chunks),
            "every streamed chunk must be a chat.completion.chunk",
        )
        check(len({c.get("id") for c in chunks}) == 1, "streamed chunks of one request must share one id")
        check(chunks[0]["choices"][0]["delta"].get("role") == "assistant", "the first chunk must carry the role")
        joined = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        check(joined == content(full), f"the joined stream {joined!r} differs from predict's {content(full)!r}")
        last = chunks[-1]
        check(
            last["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"],
            f"the stream ends with finish_reason {last['choices'][0]['finish_reason']!r}, "
            f"predict says {full['choices'][0]['finish_reason']!r}",
        )
        check(
            last.get("usage") == full["usage"],
            f"the last chunk's usage {last.get('usage')} differs from predict's {full['usage']}",
        )
        whole = probe.answer.text
        for limit in (1, 2, 3, 5, 8):
            shorter = conformance.greedy(probe.messages, limit)
            # A character cut by max_tokens ends the shorter answer as U+FFFD (as its tokens decode).
            check(
                whole.startswith(shorter.text.rstrip("\ufffd")),
                f"generate() with max_tokens={limit} returns {shorter.text!r}, which is not how the streamed "
                f"{PROBE_TOKENS}-token answer {whole!r} starts: deltas must carry only new text, and the text "
                "streamed so far must be what a non-streamed request of that length returns",
            )

    @clause("streaming_incremental")
    def test_streaming_incremental(self, conformance: Harness) -> None:
        """A streaming backend yields an answer of several tokens in several text deltas."""
        answer = conformance.probe().answer
        check(
            answer.text_deltas >= 2,
            f"the backend declares 'streaming' but yielded the answer {answer.text!r} ({answer.tokens} tokens) "
            f"in {answer.text_deltas} text delta(s); yield each piece of text as soon as it is decoded",
        )

    @clause("continuous_batching")
    def test_continuous_batching(self, conformance: Harness) -> None:
        """Requests join a running session between steps, get their single-request answers, and cancel."""
        model = conformance.model()
        probe = conformance.probe()
        requests = [conformance.chat(m, max_tokens=PROBE_TOKENS) for m in (probe.messages, probe.other)]
        alone = [content(model.predict(r)[0]) for r in requests]  # the same core contract, one at a time
        # An open session holds the model (no other generation runs until it is closed), so the
        # single-request answers come first.
        batch = model.open_session()
        check(batch is not None, "the backend declares 'continuous_batching' but the core could open no session")
        assert batch is not None
        first, late, dropped = (model.prepare_request(r) for r in (*requests, requests[0]))
        try:
            keys = batch.add([first])
            batch.step()
            keys += batch.add([late, dropped])
            steps = 0
            started = False
            after_cancel = 0
            while batch.live and steps < 10 * PROBE_TOKENS:
                events = batch.step()
                steps += 1
                if not started and any(e.request == keys[1] and (e.tokens or e.text) for e in events):
                    started = True
                    check(steps <= 2, f"a request added to a running session produced no token for {steps} steps")
                after_cancel += sum(1 for e in events if e.request == keys[2] and dropped.cancelled)
                if not dropped.cancelled and any(e.request == keys[2] and (e.tokens or e.text) for e in events):
                    dropped.cancel()
        finally:
            batch.close()
        check(started, "a request added to a running session never produced a token")
        check(
            first.texts()[0] == alone[0],
            f"the first request of a session gives {first.texts()[0]!r}, alone {alone[0]!r}",
        )
        check(
            late.texts()[0] == alone[1],
            f"a request that joined a running session gives {late.texts()[0]!r}, alone {alone[1]!r}",
        )
        check(
            after_cancel == 0 and dropped.finish_reasons() == ["cancelled"],
            f"a request cancelled after its first event got {after_cancel} more event(s) and finish reasons "
            f"{dropped.finish_reasons()}; it must stop at the next step (the core finds the steps of a "
            "generate() stream by Delta.tokens: one token per delta)",
        )
