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
    return model_dir / conf["artifacts"][name]["path"]


def _smollm2_hf() -> Path:
    from flavorkit import smollm2

    return smollm2.checkpoint()


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
    from flavorkit.quickstart import ONNX_OPTIONS

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


def measure(case: Case, rounds: int, max_tokens: int, env_size: bool, workdir: Path) -> dict[str, Any]:
    """All figures for one backend."""
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
    raw = case.raw(model_dir)
    request = {"messages": MESSAGES, "max_tokens": max_tokens}

    def wrapped_tokens() -> int:
        return int(wrapped.predict(request)[0]["usage"]["completion_tokens"])

    def raw_tokens() -> int:
        return raw.generate(MESSAGES, max_tokens)

    # Warm up both sides, and check they generate the same number of tokens.
    n_wrapped, n_raw = wrapped_tokens(), raw_tokens()
    raw_tps, wrapped_tps = _interleaved(rounds, _tokens_per_second(raw_tokens), _tokens_per_second(wrapped_tokens))
    ratios = [w / r for w, r in zip(wrapped_tps, raw_tps, strict=True)]

    def wrapped_first() -> float:
        start = time.perf_counter()
        stream = wrapped.predict_stream({"messages": MESSAGES, "max_tokens": 8})
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content"):
                break
        elapsed = time.perf_counter() - start
        stream.close()
        return elapsed

    raw_first, wrap_first = _interleaved(rounds, lambda: raw.first_token(MESSAGES), wrapped_first)
    ttft_delta_ms = [1000 * (w - r) for w, r in zip(wrap_first, raw_first, strict=True)]

    batch_rows = [{"messages": m, "max_tokens": max_tokens} for m in BATCH]

    def batched() -> float:
        start = time.perf_counter()
        out = wrapped.predict(batch_rows)
        return sum(r["usage"]["completion_tokens"] for r in out) / (time.perf_counter() - start)

    def sequential() -> float:
        start = time.perf_counter()
        total = sum(wrapped.predict(r)[0]["usage"]["completion_tokens"] for r in batch_rows)
        return total / (time.perf_counter() - start)

    batch_rounds = max(3, rounds // 3)
    batch_tps, seq_tps = _interleaved(batch_rounds, batched, sequential)
    result: dict[str, Any] = {
        "backend": case.backend,
        "label": case.label,
        "tokens": {"wrapped": n_wrapped, "raw": n_raw},
        "raw_tps": statistics.median(raw_tps),
        "wrapped_tps": statistics.median(wrapped_tps),
        "ratio": _median_iqr(ratios),
        "raw_ttft_ms": 1000 * statistics.median(raw_first),
        "wrapped_ttft_ms": 1000 * statistics.median(wrap_first),
        "ttft_delta_ms": _median_iqr(ttft_delta_ms),
        "batch_tps": statistics.median(batch_tps),
        "sequential_tps": statistics.median(seq_tps),
        "batch_speedup": _median_iqr([b / s for b, s in zip(batch_tps, seq_tps, strict=True)]),
        "load_s": statistics.median(loads),
        "model_dir_bytes": _dir_size(model_dir),
        "rounds": rounds,
        "batch_rounds": batch_rounds,
    }
    if env_size:
        size, seconds = _serving_env(model_dir)
        result["serving_env_bytes"] = size
        result["serving_env_install_s"] = seconds
    wrapped.unwrap_python_model().loaded.close()
    return result


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Markdown tables of the results."""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; SmolLM2-135M-Instruct, greedy, max_tokens={args.max_tokens}, "
        f"{args.rounds} interleaved rounds (batch: {results[0]['batch_rounds'] if results else '-'}). "
        "Ratios are medians of per-round ratios, with the interquartile range.",
        "",
        "### Wrapper overhead and streaming latency",
        "",
        "| backend | raw tokens/s | packaged tokens/s | ratio (target >= 0.97) "
        "| raw TTFT | packaged TTFT | TTFT delta (target <= 10 ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio, lo, hi = r["ratio"]
        d, dlo, dhi = r["ttft_delta_ms"]
        lines.append(
            f"| {r['label']} | {r['raw_tps']:.1f} | {r['wrapped_tps']:.1f} | **{ratio:.3f}** ({lo:.3f}-{hi:.3f}) "
            f"| {r['raw_ttft_ms']:.1f} ms | {r['wrapped_ttft_ms']:.1f} ms "
            f"| **{d:+.1f} ms** ({dlo:+.1f} to {dhi:+.1f}) |"
        )
    lines += [
        "",
        "### Batch of 8 conversations vs 8 sequential requests (packaged model)",
        "",
        "| backend | sequential tokens/s | batch tokens/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        s, lo, hi = r["batch_speedup"]
        lines.append(
            f"| {r['label']} | {r['sequential_tps']:.1f} | {r['batch_tps']:.1f} | **{s:.2f}x** ({lo:.2f}-{hi:.2f}) |"
        )
    lines += [
        "",
        "### Backend comparison",
        "",
        "| backend | packaged tokens/s | load time | model directory | serving environment (from requirements.txt) |",
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


START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def write(path: Path, body: str) -> None:
    """Replace the generated section of ``path`` between the bench markers."""
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{body}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print (and optionally write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="*", help="backend ids (default: every available one)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-env-size", dest="env_size", action="store_false", help="skip the serving-env install")
    parser.add_argument("--write", type=Path, help="update this markdown file between the bench markers")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON")
    args = parser.parse_args(argv)

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
            results.append(measure(known[name], args.rounds, args.max_tokens, args.env_size, Path(tmp)))
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    body = render(results, args)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.write:
        write(args.write, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
