"""CPU threads per decoding step, 1 against 2, interleaved: raw onnxruntime-genai and the transformers backend.

SmolLM2-135M-Instruct, greedy, ``--max-tokens`` per row, one row and 8 rows:

- ``onnx``: raw onnxruntime-genai on the int4 folder the quickstart builds, one ``og.Model`` per
  thread count (``intra_op_num_threads`` through ``og.Config.overlay``, as the backend sets it);
- ``transformers``: the backend through the packaged contract (``LoadedModel.predict``) on the fp32
  checkpoint; ``torch.set_num_threads`` is process-wide, so one engine serves both counts.

Each round runs both thread counts in a random order; reported are medians of tokens per second
and the median of per-round ratios with the interquartile range. ``--load N`` keeps N CPU-bound
processes (a Python busy loop each) running throughout, to see what the choice does on a shared
host.

    python -m benchmarks.threads --rounds 5            # a quiet machine
    python -m benchmarks.threads --rounds 5 --load 2   # one busy process per core of a 2-core machine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOPICS = ["tea", "rivers", "chess", "bread", "owls", "glass", "trains", "salt"]


def _busy() -> None:
    while True:
        pass


def _onnx(max_tokens: int) -> Callable[[int, int], float]:
    """Tokens per second of raw onnxruntime-genai for ``rows`` prompts at ``threads`` threads."""
    import numpy as np
    import onnxruntime_genai as og

    from benchmarks.run import _smollm2_onnx

    folder = str(_smollm2_onnx())
    models = {}
    for threads in (1, 2):
        config = og.Config(folder)
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        models[threads] = og.Model(config)
    tokenizer = og.Tokenizer(models[1])
    prompts = [
        list(tokenizer.encode(f"<|im_start|>user\nWrite two sentences about {t}.<|im_end|>\n<|im_start|>assistant\n"))
        for t in TOPICS
    ]

    def rate(rows: int, threads: int) -> float:
        chosen = prompts[:rows]
        width = max(len(p) for p in chosen)
        ids = np.full((rows, width), 2, dtype=np.int32)  # right-padded with <|im_end|>
        for k, p in enumerate(chosen):
            ids[k, : len(p)] = p
        params = og.GeneratorParams(models[threads])
        params.set_search_options(max_length=width + max_tokens, do_sample=False, batch_size=rows)
        generator = og.Generator(models[threads], params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        steps = 0
        while not generator.is_done() and steps < max_tokens:
            generator.generate_next_token()
            steps += 1
        return rows * steps / (time.perf_counter() - start)

    return rate


def _transformers(max_tokens: int) -> Callable[[int, int], float]:
    """Tokens per second of the transformers backend's ``predict`` for ``rows`` requests at ``threads`` threads."""
    import torch

    from flavorkit.backend.registry import get_backend
    from flavorkit.demo import smollm2
    from flavorkit.runtime.loaded import LoadedModel

    backend = get_backend("transformers")
    model = LoadedModel(backend, backend.load({"model": str(smollm2.checkpoint())}, backend.validate_options({})))

    def rate(rows: int, threads: int) -> float:
        torch.set_num_threads(threads)
        batch = [
            {
                "messages": [{"role": "user", "content": f"Write two sentences about {t}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            for t in TOPICS[:rows]
        ]
        start = time.perf_counter()
        answers = model.predict(batch)
        return float(sum(a["usage"]["completion_tokens"] for a in answers) / (time.perf_counter() - start))

    return rate


def main() -> None:
    """Run the interleaved rounds and print a Markdown table per runtime."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--load", type=int, default=0, help="CPU-bound processes kept running meanwhile")
    parser.add_argument("--runtimes", default="onnx,transformers")
    args = parser.parse_args()

    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for p in busy:
        p.start()
    try:
        print(f"{args.load} busy processes; load average before: {os.getloadavg()[0]:.2f}")
        for name in args.runtimes.split(","):
            rate = {"onnx": _onnx, "transformers": _transformers}[name](args.max_tokens)
            rate(1, 1)  # warm-up
            print(f"\n{name}\n\n| rows | 1 thread tok/s | 2 threads tok/s | 2 / 1 (IQR) |\n|---:|---:|---:|---:|")
            for rows in (1, 8):
                one: list[float] = []
                two: list[float] = []
                for _ in range(args.rounds):
                    order = [1, 2]
                    random.shuffle(order)
                    got = {n: rate(rows, n) for n in order}
                    one.append(got[1])
                    two.append(got[2])
                ratios = sorted(b / a for a, b in zip(one, two, strict=True))
                q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
                print(
                    f"| {rows} | {statistics.median(one):.1f} | {statistics.median(two):.1f} | "
                    f"**{statistics.median(ratios):.2f}** ({q[0]:.2f}-{q[2]:.2f}) |"
                )
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        for p in busy:
            p.terminate()


if __name__ == "__main__":
    main()
