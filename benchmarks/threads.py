"""CPU threads per decoding step: the transformers backend with torch at 1 thread against 2, interleaved.

SmolLM2-135M-Instruct (fp32 checkpoint), greedy, ``max_tokens`` fixed, through the packaged
contract (``LoadedModel.predict``): one request, and 8 different requests in one call. Each round
runs both thread counts in a random order (``torch.set_num_threads`` is process-wide, so one
engine serves both); reported are medians of completion tokens per second, and the median of the
per-round ratios with the interquartile range. The onnx-cpu figures of the same question are in
docs/benchmarks.md ("onnx-cpu threads").

    python -m benchmarks.threads --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Run the interleaved rounds and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    from flavorkit.backend.registry import get_backend
    from flavorkit.demo import smollm2
    from flavorkit.runtime.loaded import LoadedModel

    backend = get_backend("transformers")
    model = LoadedModel(backend, backend.load({"model": str(smollm2.checkpoint())}, backend.validate_options({})))
    topics = ["tea", "rivers", "chess", "bread", "owls", "glass", "trains", "salt"]

    def request(topic: str) -> dict[str, object]:
        content = f"Write two sentences about {topic}."
        return {"messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens, "temperature": 0}

    def rate(rows: int, threads: int) -> float:
        torch.set_num_threads(threads)
        batch = [request(t) for t in topics[:rows]]
        start = time.perf_counter()
        answers = model.predict(batch)
        elapsed = time.perf_counter() - start
        return sum(a["usage"]["completion_tokens"] for a in answers) / elapsed

    default = torch.get_num_threads()
    rate(1, 1)  # warm-up
    print(f"torch default threads here: {default}; load average before: {os.getloadavg()[0]:.2f}")
    print("| rows | 1 thread tok/s | 2 threads tok/s | 2 / 1 (IQR) |")
    print("|---:|---:|---:|---:|")
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
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
