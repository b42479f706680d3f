"""Wrapper overhead of the Hugging Face engine against an earlier commit's, in one interleaved run.

Measures what ``benchmarks.run --parts overhead`` measures (completion tokens per second of the
packaged model's ``predict`` over the raw backend's ``generate``, SmolLM2-135M-Instruct, greedy,
same prompt), with a third side: the same packaged model whose engine is the one of ``--baseline``
(``plugins/flavorkit_hf`` read from git at that commit, imported as ``flavorkit_hf_base``, over
the very same loaded model and tokenizer). The three sides run once per round in a random order,
so drift on a noisy machine hits them alike; reported are the medians of per-round ratios with
their interquartile ranges.

    python -m benchmarks.hf_overhead --baseline HEAD~1 --rounds 9
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.run import MESSAGES, _median_iqr, _tokens_per_second, cases

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "plugins/flavorkit_hf"


def baseline_engine_class(ref: str, into: Path) -> Any:
    """The ``Engine`` class of ``plugins/flavorkit_hf`` at git ``ref``, importable beside the current one."""
    package = into / "flavorkit_hf_base"
    package.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{ref}:{PLUGIN}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(
                ["git", "show", f"{ref}:{PLUGIN}/{name}"], cwd=ROOT, check=True, capture_output=True, text=True
            ).stdout
            (package / name).write_text(text.replace("flavorkit_hf.", "flavorkit_hf_base."))
    sys.path.insert(0, str(into))
    return importlib.import_module("flavorkit_hf_base.engine").Engine


def twin(engine_class: Any, current: Any) -> Any:
    """An engine of ``engine_class`` over ``current``'s model and tokenizer, with its settings."""
    import torch

    other = engine_class(
        current.model,
        current.tokenizer,
        name=current.name,
        context_length=current.context_length,
        batching=current.batching,
        max_batch_size=current.max_batch_size,
        position_ids=current.position_ids,
        logits_to_keep=current.logits_to_keep,
        dtype=torch.float32 if current.tie_tolerance is not None else torch.bfloat16,
        device=current.device,
    )
    for attr in ("eos_ids", "pad_id", "cache_argument", "cost", "tie_tolerance"):
        if getattr(other, attr) != getattr(current, attr):
            raise RuntimeError(f"the baseline engine differs in {attr}")
    return other


def measure(backend: str, engine_class: Any, rounds: int, max_tokens: int, workdir: Path) -> dict[str, Any]:
    """Tokens/s of raw, current and baseline for one backend, interleaved; the per-round ratios."""
    import mlflow

    import flavorkit

    case = cases()[backend]
    model_dir = workdir / backend
    flavorkit.package(
        model=str(case.source()),
        backend=backend,
        path=model_dir,
        options=case.options,
        generation={"temperature": 0.0},
        overwrite=True,
    )
    wrapped = mlflow.pyfunc.load_model(str(model_dir))
    loaded = wrapped.unwrap_python_model().loaded
    current = loaded.handle
    engines = {"current": current, "baseline": twin(engine_class, current)}
    raw = case.raw(model_dir)
    request = {"messages": MESSAGES, "max_tokens": max_tokens}

    def packaged(name: str) -> Callable[[], int]:
        def tokens() -> int:
            loaded.handle = engines[name]
            return int(wrapped.predict(request)[0]["usage"]["completion_tokens"])

        return tokens

    sides: dict[str, Callable[[], int]] = {
        "raw": lambda: raw.generate(MESSAGES, max_tokens),
        "current": packaged("current"),
        "baseline": packaged("baseline"),
    }
    counts = {name: fn() for name, fn in sides.items()}  # warm-up, and the same token count everywhere
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the sides generate different numbers of tokens: {counts}")
    texts = {}
    for name in ("current", "baseline"):
        loaded.handle = engines[name]
        texts[name] = wrapped.predict(request)[0]["choices"][0]["message"]["content"]
    timed = {name: _tokens_per_second(fn) for name, fn in sides.items()}
    rng = random.Random(2024)
    series: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides)
        rng.shuffle(order)
        for name in order:
            series[name].append(timed[name]())
        print(
            f"  {backend} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f} tok/s" for k, v in series.items()),
            file=sys.stderr,
            flush=True,
        )
    loaded.handle = current
    wrapped.unwrap_python_model().loaded.close()

    def ratio(a: str, b: str) -> tuple[float, float, float]:
        return _median_iqr([x / y for x, y in zip(series[a], series[b], strict=True)])

    return {
        "backend": backend,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "tokens": counts["raw"],
        "same_text": texts["current"] == texts["baseline"],
        "tps": {name: statistics.median(values) for name, values in series.items()},
        "current_over_raw": ratio("current", "raw"),
        "baseline_over_raw": ratio("baseline", "raw"),
        "current_over_baseline": ratio("current", "baseline"),
        "series": series,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the ratios (and optionally write them as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git commit whose flavorkit_hf engine is the third side")
    parser.add_argument("--backends", nargs="*", default=["transformers", "optimum-onnx"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    print(f"baseline {args.baseline}; medians of per-round ratios (interquartile range)", flush=True)
    with tempfile.TemporaryDirectory(prefix="fk-hf-overhead-") as tmp:
        engine_class = baseline_engine_class(args.baseline, Path(tmp))
        for backend in args.backends:
            print(f"benchmarking {backend} ...", file=sys.stderr, flush=True)
            r = measure(backend, engine_class, args.rounds, args.max_tokens, Path(tmp))
            results.append(r)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            line = [f"{r['backend']}: {r['rounds']} rounds, {r['tokens']} tokens, same text: {r['same_text']}"]
            line += [f"{k} {v:.1f} tok/s" for k, v in r["tps"].items()]
            for key in ("current_over_raw", "baseline_over_raw", "current_over_baseline"):
                mid, lo, hi = r[key]
                line.append(f"{key} {mid:.3f} ({lo:.3f}-{hi:.3f})")
            print("; ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
