"""Guided decoding (issue 18): what a grammar costs per token, to compile, and a tool call round trip.

    python -m benchmarks.guided --write docs/benchmarks.md       # section "guided"

Per backend, on SmolLM2-135M-Instruct loaded directly (no MLflow in between):

- **tokens/s, guided vs unguided**: the same prompt, once with a JSON schema and once free, run in
  interleaved rounds; the figure is the median of the per-round ratios. Each side's rate is its
  completion tokens over its wall time, prompt included; the schemas ask for a string longer than
  ``max_tokens`` allows, so both sides generate the same number of tokens. Also as a batch of four
  rows, two guided with different schemas.
- **compiling a grammar**: the vocabulary for llguidance (once per model), a schema compiled cold
  (a new schema each time), and cached (the copy a choice gets).
- **a tool call round trip through ``flavorkit serve``** (onnx-cpu): the ``openai`` client asks with
  ``tool_choice="required"``, sends the tool's result back and gets the answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.run import _interleaved, _median_iqr, _smollm2_hf, _smollm2_onnx, write

#: Schemas whose answers cannot end before ``max_tokens`` (a string of at least 4,000 characters), so
#: both sides generate the same number of tokens and the ratio is the cost of the mask per token.
STORY: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 4000}},
    "required": ["title", "story"],
}
ESSAY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "maxLength": 40},
        "paragraphs": {"type": "array", "items": {"type": "string", "minLength": 4000}, "minItems": 1},
    },
    "required": ["topic", "paragraphs"],
}
#: A schema of the usual kind, compiled for the compile-time figures.
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
        "bio": {"type": "string"},
    },
    "required": ["name", "age", "city", "hobbies", "bio"],
}
ASK = [
    {"role": "user", "content": "Invent a person and describe them in detail: name, age, city, hobbies and a long bio."}
]
WEATHER: Any = {  # an OpenAI tool (ChatCompletionFunctionToolParam)
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _loaded(backend_name: str) -> Any:
    from flavorkit.backend.registry import get_backend
    from flavorkit.runtime.loaded import LoadedModel

    folder = _smollm2_onnx() if backend_name == "onnx-cpu" else _smollm2_hf()
    backend = get_backend(backend_name)
    return LoadedModel(backend, backend.load({"model": str(folder)}, {}))


def _rate(model: Any, requests: list[dict[str, Any]]) -> Callable[[], float]:
    """Completion tokens per second of one predict over ``requests``."""

    def run() -> float:
        start = time.perf_counter()
        answers = model.predict(requests)
        seconds = time.perf_counter() - start
        return float(sum(a["usage"]["completion_tokens"] for a in answers) / seconds)

    return run


def throughput(model: Any, rounds: int, max_tokens: int) -> dict[str, Any]:
    """Guided over unguided tokens/s: one request, then a batch of four."""
    base = {"messages": ASK, "temperature": 0, "max_tokens": max_tokens}
    guided = [{**base, "response_format": _format(STORY)}]
    free = [base]
    model.predict(guided + free)  # the vocabulary and the grammar, outside the timing
    g, f = _interleaved(rounds, _rate(model, guided), _rate(model, free))
    mixed = [{**base, "response_format": _format(STORY)}, {**base, "response_format": _format(ESSAY)}, base, base]
    gb, fb = _interleaved(rounds, _rate(model, mixed), _rate(model, [base] * 4))
    return {
        "single": _median_iqr([a / b for a, b in zip(g, f, strict=True)]),
        "single_tps": (statistics.median(g), statistics.median(f)),
        "batch": _median_iqr([a / b for a, b in zip(gb, fb, strict=True)]),
        "batch_tps": (statistics.median(gb), statistics.median(fb)),
    }


def compile_times(model: Any, repeats: int) -> dict[str, float]:
    """Milliseconds: the vocabulary, a grammar compiled cold, and the cached copy."""
    from flavorkit.runtime.guidance import Guidance, build_grammar

    start = time.perf_counter()
    tokenizer = model.backend.guidance_tokenizer(model.handle)
    vocabulary = time.perf_counter() - start
    guidance = Guidance(lambda: tokenizer)
    cold, cached = [], []
    for i in range(repeats):
        schema = {**PERSON, "properties": {**PERSON["properties"], f"extra{i}": {"type": "integer"}}}
        grammar = build_grammar(_format(schema), None, None)
        assert grammar is not None
        start = time.perf_counter()
        guidance.matcher(grammar)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        guidance.matcher(grammar)
        cached.append(time.perf_counter() - start)
    return {
        "vocabulary_ms": vocabulary * 1e3,
        "cold_ms": statistics.median(cold) * 1e3,
        "cached_ms": statistics.median(cached) * 1e3,
    }


def round_trip(repeats: int) -> dict[str, float]:
    """Seconds of a tool call round trip through ``flavorkit serve`` with the ``openai`` client (onnx-cpu)."""
    import tempfile

    import openai

    from benchmarks.serve import FK_CMD, _free_port, _package_exact, _start, _stop

    with tempfile.TemporaryDirectory() as scratch:
        path = _package_exact(Path(scratch))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start([*FK_CMD, str(path), "--port", str(port)], base)
        try:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
            name = client.models.list().data[0].id
            ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
            times, calls, answers = [], [], []
            for _ in range(repeats):
                start = time.perf_counter()
                first = client.chat.completions.create(
                    model=name, messages=ask, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=40
                )
                message = first.choices[0].message
                assert message.tool_calls, first
                t1 = time.perf_counter()
                history = [
                    *ask,
                    message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18 C and sunny"},
                ]
                client.chat.completions.create(
                    model=name, messages=history, tools=[WEATHER], temperature=0, max_tokens=40
                )
                times.append(time.perf_counter() - start)
                calls.append(t1 - start)
                answers.append(time.perf_counter() - t1)
        finally:
            _stop(proc)
    return {
        "round_trip_s": statistics.median(times),
        "call_s": statistics.median(calls),
        "answer_s": statistics.median(answers),
    }


def render(results: dict[str, dict[str, Any]], trip: dict[str, float] | None, args: argparse.Namespace) -> str:
    """The Markdown section."""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPUs), SmolLM2-135M-Instruct, greedy, "
        f"`max_tokens={args.max_tokens}`, {args.rounds} interleaved rounds; the ratios are medians of per-round "
        "ratios (interquartile range in brackets). Reproduce: `python -m benchmarks.guided`.",
        "",
        "| backend | guided / unguided tokens/s, one request | tokens/s (guided, free) | batch of 4 (2 guided) | "
        "vocabulary | schema compile, cold | cached |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, b, c, tps = r["single"], r["batch"], r["compile"], r["single_tps"]
        lines.append(
            f"| {name} | **{s[0]:.2f}** [{s[1]:.2f} to {s[2]:.2f}] | {tps[0]:.0f}, {tps[1]:.0f} "
            f"| **{b[0]:.2f}** [{b[1]:.2f} to {b[2]:.2f}] | {c['vocabulary_ms']:.0f} ms | {c['cold_ms']:.1f} ms "
            f"| {c['cached_ms'] * 1e3:.0f} µs |"
        )
    if trip:
        lines += [
            "",
            f"Tool call round trip through `flavorkit serve` (onnx-cpu, `openai` client, median of {args.trips}): "
            f'**{trip["round_trip_s"]:.2f} s**: the call ({trip["call_s"]:.2f} s, `tool_choice="required"`) and the '
            f"answer to the tool's result ({trip['answer_s']:.2f} s).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure and print (or write into docs/benchmarks.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="onnx-cpu,transformers")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--trips", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in args.backends.split(","):
        print(f"{name}: loading", file=sys.stderr, flush=True)
        model = _loaded(name)
        try:
            results[name] = throughput(model, args.rounds, args.max_tokens)
            results[name]["compile"] = compile_times(model, 5)
        finally:
            model.close()
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    trip = round_trip(args.trips) if args.trips else None
    body = render(results, trip, args)
    print(body)
    if args.write:
        write(args.write, body, section="guided")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
