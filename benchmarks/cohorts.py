"""What splitting 8 rows into several ``og.Generator`` batches costs: one batch of 8 against cohorts.

onnx-cpu's continuous batching (``InterleavedSession``) decodes each group admitted at another
step as a generator of its own and steps the generators in turn, because onnxruntime-genai cannot
add rows to a running generator. This measures the price of that on raw onnxruntime-genai: the 8
chat prompts of ``benchmarks.run.BATCH`` (SmolLM2-135M-Instruct int4, the quickstart's folder, the
backend's thread setting), greedy, ``--max-tokens`` steps each, as one batch of 8 and split into
cohorts (``1+7``, ``4+4``, ``2+2+2+2``, eight single rows) that advance one step each in turn, as
the session does. Prefill is included. Each round runs every split once, in a random order;
reported are the median tokens per second and the median ratio to the batch of 8 over the rounds.

    python -m benchmarks.cohorts --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SPLITS: dict[str, list[int]] = {
    "8": [8],
    "1+7": [1, 7],
    "4+4": [4, 4],
    "2+2+2+2": [2, 2, 2, 2],
    "8 x 1": [1] * 8,
}


def main(argv: list[str] | None = None) -> int:
    """Time every split over ``--rounds`` interleaved rounds and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime_genai as og

    from benchmarks.run import BATCH, _smollm2_onnx
    from flavorkit_onnxgenai.runtime import set_cpu_threads

    config = og.Config(str(_smollm2_onnx()))
    set_cpu_threads(config)
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    rows = [
        [int(t) for t in tokenizer.encode(tokenizer.apply_chat_template(json.dumps(m), add_generation_prompt=True))]
        for m in BATCH[:8]
    ]
    steps = args.max_tokens

    def generator(group: list[list[int]]) -> Any:
        width = max(len(r) for r in group)
        ids = np.zeros((len(group), width), dtype=np.int32)
        for k, row in enumerate(group):
            ids[k, : len(row)] = row
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=width + steps, do_sample=False, batch_size=len(group))
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        return gen

    def run(split: list[int]) -> float:
        started = time.perf_counter()
        gens, at = [], 0
        for size in split:
            gens.append(generator(rows[at : at + size]))
            at += size
        for _ in range(steps):
            for gen in gens:
                gen.generate_next_token()
                gen.get_next_tokens()
        return float(8 * steps / (time.perf_counter() - started))

    run([8])  # kernel set-up
    speed: dict[str, list[float]] = {name: [] for name in SPLITS}
    ratio: dict[str, list[float]] = {name: [] for name in SPLITS}
    for _ in range(args.rounds):
        names = list(SPLITS)
        random.shuffle(names)
        got = {name: run(SPLITS[name]) for name in names}
        for name in SPLITS:
            speed[name].append(got[name])
            ratio[name].append(got[name] / got["8"])
    print(f"{args.rounds} rounds, {steps} tokens per row, load average {os.getloadavg()[0]:.2f} at the end\n")
    print("| cohorts | tokens/s (median) | against one batch of 8 |")
    print("|---|---:|---:|")
    for name in SPLITS:
        lo, hi = min(ratio[name]), max(ratio[name])
        median = statistics.median(ratio[name])
        print(f"| {name} | {statistics.median(speed[name]):.0f} | {median:.2f}x ({lo:.2f} to {hi:.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
