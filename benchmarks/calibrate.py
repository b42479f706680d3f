"""Calibrate the batch cost models of the onnx-cpu and transformers backends on this machine.

The backends decide which requests share a padded batch with :class:`flavorkit.runtime.cost.CostModel`
(see docs/architecture.md, "Length-aware batching"). Its coefficients come from this script: it
times the two parts of decoding on SmolLM2-135M-Instruct, the way each backend runs them,

- the prompt pass of ``rows`` prompts padded to ``width`` tokens, and
- one decoding step of ``rows`` rows over a KV cache of ``width`` positions,

in interleaved rounds (medians, because the machine is shared), and fits

    prompt(rows, width) = rows * width * (prompt_token + prompt_attention * width)
    step(rows, width)   = step + rows * (row_step + context * width)

by least squares on relative error. The coefficients are printed in milliseconds.

    python -m benchmarks.calibrate onnx-cpu transformers --rounds 3
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: (rows, width) points timed: short, medium and long prompts, one to eight rows.
POINTS = [(1, 64), (2, 64), (4, 64), (8, 64), (1, 512), (2, 512), (4, 512), (1, 1024), (2, 1024), (1, 2048), (2, 2048)]
STEPS = 16


class _Og:
    """Prompt pass and steps of one og.Generator batch, as the onnx-cpu backend runs them."""

    def __init__(self) -> None:
        import onnxruntime_genai as og

        from benchmarks.run import _smollm2_onnx
        from flavorkit_onnxgenai.runtime import set_cpu_threads

        self.og = og
        config = og.Config(str(_smollm2_onnx()))
        set_cpu_threads(config)  # the backend's thread setting: every usable core unless told otherwise
        self.model = og.Model(config)

    def run(self, rows: int, width: int) -> tuple[float, float]:
        import numpy as np

        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=width + STEPS, batch_size=rows, do_sample=False)
        generator = self.og.Generator(self.model, params)
        ids = np.random.RandomState(width).randint(100, 40000, size=(rows, width)).astype(np.int32)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.get_next_tokens()
        prompt = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(STEPS):
            generator.generate_next_token()
            generator.get_next_tokens()
        return prompt, (time.perf_counter() - start) / STEPS


class _Hf:
    """Prompt pass and steps of the transformers backend's own engine (left-padded batch)."""

    def __init__(self) -> None:
        from flavorkit.backend.registry import get_backend
        from flavorkit.demo import smollm2

        backend = get_backend("transformers")
        self.engine = backend.load({"model": str(smollm2.checkpoint())}, backend.validate_options({}))

    def run(self, rows: int, width: int) -> tuple[float, float]:
        import torch

        ids = torch.randint(100, 40000, (rows, width), generator=torch.Generator().manual_seed(width))
        mask = torch.ones_like(ids)
        positions = torch.arange(width).unsqueeze(0).expand(rows, -1)
        start = time.perf_counter()
        logits, past = self.engine._forward(ids, mask, positions, None)
        prompt = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(STEPS):
            token = torch.argmax(logits, dim=-1).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
            positions = positions[:, -1:] + 1
            logits, past = self.engine._forward(token, mask, positions, past)
        return prompt, (time.perf_counter() - start) / STEPS


RUNNERS: dict[str, Callable[[], Any]] = {"onnx-cpu": _Og, "transformers": _Hf}


def _fit(rows: list[list[float]], times: list[float]) -> list[float]:
    """Least squares on relative error (each point weighted by 1/time), every coefficient >= 0.

    With two or three unknowns, trying every subset of free coefficients is the whole NNLS.
    """
    import itertools

    import numpy as np

    a = np.asarray(rows, dtype=float) / np.asarray(times, dtype=float)[:, None]
    b = np.ones(len(times))
    best: tuple[float, list[float]] = (float("inf"), [0.0] * a.shape[1])
    for k in range(1, a.shape[1] + 1):
        for subset in itertools.combinations(range(a.shape[1]), k):
            sol, *_ = np.linalg.lstsq(a[:, subset], b, rcond=None)
            if (sol < 0).any():
                continue
            coef = [0.0] * a.shape[1]
            for j, c in zip(subset, sol, strict=True):
                coef[j] = float(c)
            err = float(np.sum((a @ np.asarray(coef) - b) ** 2))
            if err < best[0]:
                best = (err, coef)
    return best[1]


def calibrate(backend: str, rounds: int, max_tokens: int | None = None) -> dict[str, float]:
    """Time every point in ``rounds`` shuffled rounds and fit the cost model's coefficients (ms).

    ``max_tokens`` leaves out the points of more than that many prompt tokens (rows x width).
    """
    runner = RUNNERS[backend]()
    runner.run(1, 64)  # warm-up
    points = [p for p in POINTS if max_tokens is None or p[0] * p[1] <= max_tokens]
    samples: dict[tuple[int, int], list[tuple[float, float]]] = {p: [] for p in points}
    rng = random.Random(7)
    for r in range(rounds):
        order = points[:]
        rng.shuffle(order)
        for rows, width in order:
            samples[(rows, width)].append(runner.run(rows, width))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    prompt_rows: list[list[float]] = []
    step_rows: list[list[float]] = []
    prompt_t: list[float] = []
    step_t: list[float] = []
    for (rows, width), values in samples.items():
        p = 1000 * statistics.median(v[0] for v in values)
        s = 1000 * statistics.median(v[1] for v in values)
        spread = max(v[1] for v in values) / min(v[1] for v in values)
        print(f"  rows={rows} width={width:5d}: prompt {p:9.1f} ms, step {s:7.2f} ms (step max/min {spread:.2f})")
        prompt_rows.append([rows * width, rows * width * width])
        prompt_t.append(p)
        step_rows.append([1.0, rows, rows * width])
        step_t.append(s)
    prompt_token, prompt_attention = _fit(prompt_rows, prompt_t)
    step, row_step, context = _fit(step_rows, step_t)
    return {
        "prompt_token": prompt_token,
        "prompt_attention": prompt_attention,
        "step": step,
        "row_step": row_step,
        "context": context,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the fitted coefficients of each backend named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backends", nargs="+", choices=sorted(RUNNERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, help="skip points of more prompt tokens (rows x width)")
    args = parser.parse_args(argv)
    for backend in args.backends:
        print(f"{backend}:", flush=True)
        coef = calibrate(backend, args.rounds, args.max_tokens)
        print("  CostModel(" + ", ".join(f"{k}={v:.3g}" for k, v in coef.items()) + ")  # milliseconds", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
