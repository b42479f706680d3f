"""flavorkit benchmarks: packaged model vs the raw backend, as ratios measured in one run.

Each figure interleaves the two sides round by round (in a random order per round) and reports
the median of the per-round ratios, so drift on a noisy machine hits both sides alike.

    python -m benchmarks.run --write docs/benchmarks.md      # what `make bench` runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLAVORKIT_PROGRESS", "1")

from benchmarks.raw import RawBaseline, RawHF, RawOnnxGenai

MESSAGES = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
BATCH = [
    [{"role": "user", "content": q}]
    for q in (
        "Write a long story about a dragon who learns to bake bread.",
        "Explain how a bicycle works.",
        "Describe the city of Madrid.",
        "Write a poem about autumn leaves.",
        "What should I pack for a week of hiking?",
        "Tell me about the history of tea.",
        "How do plants make food?",
        "Give me tips for learning to cook.",
    )
]

#: Sentences of the mixed-length conversations (about 20 tokens each).
NOTES = (
    "The harbour town wakes before dawn, when the fishing boats slip out past the lighthouse.",
    "Bakers light their ovens, and the smell of rye bread drifts along the narrow streets.",
    "By mid-morning the market square fills with stalls of apples, cheese, rope and lamp oil.",
    "Children race to the school on the hill, where the bell has rung at eight for a hundred years.",
    "In the afternoon the wind turns, and the boats come back heavy with herring and cod.",
    "Old sailors sit on the harbour wall and argue about the weather, the council and the price of nets.",
    "At dusk the lamps are lit one by one, and the tavern by the quay begins to sing.",
)


def _notes(sentences: int) -> list[dict[str, str]]:
    if not sentences:
        return [{"role": "user", "content": "Write a short poem about a quiet harbour town at dawn."}]
    text = " ".join(NOTES[i % len(NOTES)] for i in range(sentences))
    return [{"role": "user", "content": f"Here are my notes about a town:\n{text}\nSummarise them in two sentences."}]


#: Six conversations of about 40 to 2,100 prompt tokens (SmolLM2's template), for the mixed-length case.
MIXED = [_notes(n) for n in (0, 8, 23, 48, 72, 102)]


@dataclass
class Case:
    """One backend measured on SmolLM2-135M-Instruct."""

    backend: str
    label: str
    source: Callable[[], Path]
    raw: Callable[[Path], RawBaseline]
    options: dict[str, Any] = field(default_factory=dict)


def _artifact(model_dir: Path, name: str = "model") -> Path:
    from mlflow.models import Model

    conf = Model.load(str(model_dir)).flavors["python_function"]
    return Path(model_dir, conf["artifacts"][name]["path"])


def _smollm2_hf() -> Path:
    from flavorkit.demo import smollm2

    return smollm2.checkpoint()


def _smollm2_onnx() -> Path:
    """SmolLM2-135M-Instruct converted as the quickstart converts it (int4, k_quant_mixed)."""
    from flavorkit.demo.smollm2 import ONNX_OPTIONS
    from flavorkit_onnxgenai.convert import convert_checkpoint

    return convert_checkpoint(_smollm2_hf(), **ONNX_OPTIONS)


def _raw_transformers(model_dir: Path) -> RawBaseline:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _artifact(model_dir)
    return RawHF(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))


def _raw_optimum(model_dir: Path) -> RawBaseline:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    folder = _artifact(model_dir)
    return RawHF(ORTModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder))


def cases() -> dict[str, Case]:
    """Every backend the benchmark knows; unavailable ones are skipped at run time."""
    from flavorkit.demo.smollm2 import ONNX_OPTIONS

    return {
        "onnx-cpu": Case(
            "onnx-cpu", "onnx-cpu (ORT-genai int4)", _smollm2_hf, lambda d: RawOnnxGenai(_artifact(d)), ONNX_OPTIONS
        ),
        "transformers": Case("transformers", "transformers (fp32)", _smollm2_hf, _raw_transformers),
        "optimum-onnx": Case("optimum-onnx", "optimum-onnx (ONNX fp32)", _smollm2_hf, _raw_optimum),
    }


def _median_iqr(values: list[float]) -> tuple[float, float, float]:
    qs = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return statistics.median(values), qs[0], qs[2]


def _interleaved(rounds: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[list[float], list[float]]:
    """Run a and b once per round, in a random order each round; return both series."""
    rng = random.Random(1234)
    xs, ys = [], []
    for _ in range(rounds):
        if rng.random() < 0.5:
            xs.append(a())
            ys.append(b())
        else:
            ys.append(b())
            xs.append(a())
    return xs, ys


def _interleaved_many(rounds: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run every side once per round, in a random order each round; return each side's series."""
    rng = random.Random(4321)
    series: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides)
        rng.shuffle(order)
        for name in order:
            series[name].append(sides[name]())
        print(
            f"  mixed round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in series.items()),
            file=sys.stderr,
            flush=True,
        )
    return series


def _seconds(fn: Callable[[], object]) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def mixed_lengths(wrapped: Any, rounds: int, max_tokens: int, one_batch: bool) -> dict[str, Any]:
    """The six mixed-length conversations: one predict against one predict per row (and one padded batch).

    ``one_batch`` adds a third side, every row forced into one padded batch (what flavorkit did
    before length-aware batching), by giving the handle a cost model in which only steps count.
    """
    from flavorkit.runtime.cost import CostModel

    loaded = wrapped.unwrap_python_model().loaded
    handle = loaded.handle
    rows = [{"messages": m, "max_tokens": max_tokens} for m in MIXED]
    lengths = [len(loaded.backend.encode(handle, m)) for m in MIXED]
    planned = handle.cost

    singles = [wrapped.predict(r)[0] for r in rows]
    batch = wrapped.predict(rows)
    equal = [b["choices"] == s["choices"] for b, s in zip(batch, singles, strict=True)]
    sides: dict[str, Callable[[], float]] = {
        "batch": _seconds(lambda: wrapped.predict(rows)),
        "singles": _seconds(lambda: [wrapped.predict(r) for r in rows]),
    }
    if one_batch:
        everything = CostModel(0.0, 0.0, 1.0, 0.0, 0.0, rows_leave=planned.rows_leave, margin=0.0)

        def forced() -> float:
            handle.cost = everything
            try:
                return _seconds(lambda: wrapped.predict(rows))()
            finally:
                handle.cost = planned

        sides["one_batch"] = forced
    series = _interleaved_many(rounds, sides)
    tokens = [r["usage"]["completion_tokens"] for r in batch]
    result: dict[str, Any] = {
        "prompt_tokens": lengths,
        "completion_tokens": tokens,
        "groups": [[lengths[i] for i in g] for g in planned.plan(lengths, [max_tokens] * len(rows), 16)],
        "equal_to_singles": all(equal),
        "rounds": rounds,
        "max_tokens": max_tokens,
        "seconds": {k: _median_iqr(v) for k, v in series.items()},
        "speedup": _median_iqr([s / b for s, b in zip(series["singles"], series["batch"], strict=True)]),
        "series": series,
    }
    if one_batch:
        result["one_batch_speedup"] = _median_iqr(
            [s / b for s, b in zip(series["singles"], series["one_batch"], strict=True)]
        )
    return result


def _tokens_per_second(fn: Callable[[], int]) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        n = fn()
        return n / (time.perf_counter() - start)

    return timed


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _serving_env(model_dir: Path) -> tuple[int, float]:
    """Bytes and seconds of a virtualenv created from the model's requirements.txt alone."""
    with tempfile.TemporaryDirectory(prefix="fk-bench-env-") as tmp:
        venv = Path(tmp) / "venv"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(model_dir / "requirements.txt")],
            check=True,
            capture_output=True,
        )
        return _dir_size(venv), time.perf_counter() - start


#: The parts of a backend's measurement; ``--parts`` picks some.
PARTS = ("overhead", "ttft", "batch", "mixed")


def measure(
    case: Case,
    rounds: int,
    max_tokens: int,
    env_size: bool,
    workdir: Path,
    parts: tuple[str, ...] = PARTS,
    mixed_rounds: int = 5,
    mixed_tokens: int = 64,
    one_batch: bool = True,
) -> dict[str, Any]:
    """The figures in ``parts`` for one backend."""
    import mlflow

    import flavorkit

    model_dir = workdir / case.backend
    flavorkit.package(
        model=str(case.source()),
        backend=case.backend,
        path=model_dir,
        options=case.options,
        generation={"temperature": 0.0},
        overwrite=True,
    )
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        wrapped = mlflow.pyfunc.load_model(str(model_dir))
        loads.append(time.perf_counter() - start)
    result: dict[str, Any] = {
        "backend": case.backend,
        "label": case.label,
        "rounds": rounds,
        "load_s": statistics.median(loads),
        "model_dir_bytes": _dir_size(model_dir),
    }
    raw = case.raw(model_dir) if {"overhead", "ttft"} & set(parts) else None
    request = {"messages": MESSAGES, "max_tokens": max_tokens}

    if "overhead" in parts and raw is not None:
        baseline = raw

        def wrapped_tokens() -> int:
            return int(wrapped.predict(request)[0]["usage"]["completion_tokens"])

        def raw_tokens() -> int:
            return baseline.generate(MESSAGES, max_tokens)

        # Warm up both sides, and check they generate the same number of tokens.
        n_wrapped, n_raw = wrapped_tokens(), raw_tokens()
        raw_tps, wrapped_tps = _interleaved(rounds, _tokens_per_second(raw_tokens), _tokens_per_second(wrapped_tokens))
        result.update(
            tokens={"wrapped": n_wrapped, "raw": n_raw},
            raw_tps=statistics.median(raw_tps),
            wrapped_tps=statistics.median(wrapped_tps),
            ratio=_median_iqr([w / r for w, r in zip(wrapped_tps, raw_tps, strict=True)]),
        )

    if "ttft" in parts and raw is not None:
        baseline = raw

        def wrapped_first() -> float:
            start = time.perf_counter()
            stream = wrapped.predict_stream({"messages": MESSAGES, "max_tokens": 8})
            for chunk in stream:
                if chunk["choices"][0]["delta"].get("content"):
                    break
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        raw_first, wrap_first = _interleaved(rounds, lambda: baseline.first_token(MESSAGES), wrapped_first)
        result.update(
            raw_ttft_ms=1000 * statistics.median(raw_first),
            wrapped_ttft_ms=1000 * statistics.median(wrap_first),
            ttft_delta_ms=_median_iqr([1000 * (w - r) for w, r in zip(wrap_first, raw_first, strict=True)]),
        )

    if "batch" in parts:
        batch_rows = [{"messages": m, "max_tokens": max_tokens} for m in BATCH]

        def batched() -> float:
            start = time.perf_counter()
            out = wrapped.predict(batch_rows)
            return float(sum(r["usage"]["completion_tokens"] for r in out) / (time.perf_counter() - start))

        def sequential() -> float:
            start = time.perf_counter()
            total = sum(wrapped.predict(r)[0]["usage"]["completion_tokens"] for r in batch_rows)
            return float(total / (time.perf_counter() - start))

        batch_rounds = max(3, rounds // 3)
        batch_tps, seq_tps = _interleaved(batch_rounds, batched, sequential)
        result.update(
            batch_tps=statistics.median(batch_tps),
            sequential_tps=statistics.median(seq_tps),
            batch_speedup=_median_iqr([b / s for b, s in zip(batch_tps, seq_tps, strict=True)]),
            batch_rounds=batch_rounds,
        )

    if "mixed" in parts:
        result["mixed"] = mixed_lengths(wrapped, mixed_rounds, mixed_tokens, one_batch)

    if env_size:
        size, seconds = _serving_env(model_dir)
        result["serving_env_bytes"] = size
        result["serving_env_install_s"] = seconds
    wrapped.unwrap_python_model().loaded.close()
    return result


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def _mixed_lines(results: list[dict[str, Any]]) -> list[str]:
    mixed = [r for r in results if "mixed" in r]
    if not mixed:
        return []
    m0 = mixed[0]["mixed"]
    lines = [
        "",
        f"### Mixed lengths: 6 conversations in one predict vs one predict per row (max_tokens={m0['max_tokens']})",
        "",
        f"Prompt lengths {', '.join(str(n) for n in m0['prompt_tokens'])} tokens. "
        "Seconds are medians (interquartile range); speed-up is the median of per-round "
        "(one by one) / (one predict), so at least 1.0 means the batch is not slower.",
        "",
        "| backend | rounds | one by one | one predict | speed-up | groups (prompt tokens) | answers equal | "
        "all in one padded batch | its speed-up |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in mixed:
        m = r["mixed"]
        sec = m["seconds"]
        sp, lo, hi = m["speedup"]
        # Commas between groups: "[42] [204]" would read as a Markdown reference link on the docs site.
        groups = ", ".join("[" + ", ".join(str(n) for n in g) + "]" for g in m["groups"])
        one = "-"
        one_sp = "-"
        if "one_batch" in sec:
            o, olo, ohi = sec["one_batch"]
            one = f"{o:.1f} s ({olo:.1f}-{ohi:.1f})"
            x, xlo, xhi = m["one_batch_speedup"]
            one_sp = f"{x:.2f}x ({xlo:.2f}-{xhi:.2f})"
        lines.append(
            f"| {r['label']} | {m['rounds']} "
            f"| {sec['singles'][0]:.1f} s ({sec['singles'][1]:.1f}-{sec['singles'][2]:.1f}) "
            f"| {sec['batch'][0]:.1f} s ({sec['batch'][1]:.1f}-{sec['batch'][2]:.1f}) "
            f"| **{sp:.2f}x** ({lo:.2f}-{hi:.2f}) | {groups} | {'yes' if m['equal_to_singles'] else '**no**'} "
            f"| {one} | {one_sp} |"
        )
    return lines


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown tables of the results (a table only for the parts that were measured)."""
    batch_rounds = next((r["batch_rounds"] for r in results if "batch_rounds" in r), "-")
    overhead = [r for r in results if "ratio" in r or "ttft_delta_ms" in r]
    rounds = {r["rounds"] for r in overhead if "rounds" in r} or {args.rounds}
    counted = f"{rounds.pop()} interleaved rounds" if len(rounds) == 1 else "interleaved rounds as labelled"
    settings = (
        f", max_tokens={args.max_tokens}, {counted} (batch: {batch_rounds})" if overhead or batch_rounds != "-" else ""
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; SmolLM2-135M-Instruct, greedy{settings}. "
        "Ratios are medians of per-round ratios, with the interquartile range.",
    ]
    if overhead:
        lines += [
            "",
            "### Wrapper overhead and streaming latency",
            "",
            "| backend | raw tokens/s | packaged tokens/s | ratio (target >= 0.97) "
            "| raw TTFT | packaged TTFT | TTFT delta (target <= 10 ms) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
    for r in overhead:
        cells = [r["label"]]
        if "ratio" in r:
            ratio, lo, hi = r["ratio"]
            cells += [f"{r['raw_tps']:.1f}", f"{r['wrapped_tps']:.1f}", f"**{ratio:.3f}** ({lo:.3f}-{hi:.3f})"]
        else:
            cells += ["-", "-", "-"]
        if "ttft_delta_ms" in r:
            d, dlo, dhi = r["ttft_delta_ms"]
            cells += [
                f"{r['raw_ttft_ms']:.1f} ms",
                f"{r['wrapped_ttft_ms']:.1f} ms",
                f"**{d:+.1f} ms** ({dlo:+.1f} to {dhi:+.1f})",
            ]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    batched = [r for r in results if "batch_speedup" in r]
    if batched:
        lines += [
            "",
            "### Batch of 8 conversations vs 8 sequential requests (packaged model)",
            "",
            "| backend | sequential tokens/s | batch tokens/s | speed-up |",
            "|---|---:|---:|---:|",
        ]
    for r in batched:
        s, lo, hi = r["batch_speedup"]
        lines.append(
            f"| {r['label']} | {r['sequential_tps']:.1f} | {r['batch_tps']:.1f} | **{s:.2f}x** ({lo:.2f}-{hi:.2f}) |"
        )
    lines += _mixed_lines(results)
    if all("wrapped_tps" in r for r in results) and results:
        lines += [
            "",
            "### Backend comparison",
            "",
            "| backend | packaged tokens/s | load time | model directory "
            "| serving environment (from requirements.txt) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in results:
            env = (
                f"{_mb(r.get('serving_env_bytes'))} (installed in {r['serving_env_install_s']:.0f} s)"
                if "serving_env_bytes" in r
                else "-"
            )
            lines.append(
                f"| {r['label']} | {r['wrapped_tps']:.1f} | {r['load_s']:.2f} s | {_mb(r['model_dir_bytes'])} | {env} |"
            )
    return "\n".join(lines) + "\n"


def write(path: Path, body: str, section: str = "bench") -> None:
    """Replace the generated section of ``path`` between the ``<!-- SECTION:start/end -->`` markers."""
    begin, finish = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{finish}\n"
    if begin not in text:
        text += f"\n{begin}\n{finish}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(finish, 1)
    path.write_text(f"{head}{begin}\n{body}{finish}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print (and optionally write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="*", help="backend ids (default: every available one)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-env-size", dest="env_size", action="store_false", help="skip the serving-env install")
    parser.add_argument("--write", type=Path, help="update this markdown file between the bench markers")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    parser.add_argument("--section", default="bench", help="marker name of the section --write replaces")
    parser.add_argument(
        "--from-json", nargs="+", type=Path, help="render these --json outputs (of separate runs) instead of measuring"
    )
    parser.add_argument("--mixed-rounds", type=int, default=5)
    parser.add_argument("--mixed-tokens", type=int, default=64, help="max_tokens of the mixed-length case")
    parser.add_argument(
        "--no-one-batch", dest="one_batch", action="store_false", help="mixed case: skip the all-in-one-batch side"
    )
    args = parser.parse_args(argv)

    if args.from_json:
        results = [r for path in args.from_json for r in json.loads(path.read_text())]
        return _report(results, args)

    import flavorkit

    available = {b["name"] for b in flavorkit.backends() if b["available"]}
    known = cases()
    chosen = args.backends or [name for name in known if name in available]
    results = []
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
        for name in chosen:
            if name not in available:
                print(f"skipping {name}: not available", file=sys.stderr)
                continue
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            results.append(
                measure(
                    known[name],
                    args.rounds,
                    args.max_tokens,
                    args.env_size,
                    Path(tmp),
                    parts=tuple(args.parts),
                    mixed_rounds=args.mixed_rounds,
                    mixed_tokens=args.mixed_tokens,
                    one_batch=args.one_batch,
                )
            )
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return _report(results, args)


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> int:
    body = render(results, args)
    print(body)
    if args.write:
        write(args.write, body, args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
