"""Batch generation on Spark: rows per second through ``mlflow.pyfunc.spark_udf`` against in-process ``predict``.

SmolLM2-135M-Instruct packaged with onnx-cpu (ORT-genai int4), greedy, short answers. Three sides
answer the same rows each round, in a random order per round:

- **in-process**: one ``predict`` over all rows of a model loaded once (what Spark is compared with);
- **local[1]** and **local[2]**: a pyspark session with that master, each in its own process (a
  process holds one SparkContext), running ``spark_udf(..., env_manager="local")`` over a DataFrame
  of as many partitions as task slots, the answer text collected; the job's time includes what a
  Spark user pays: each task loads the model (MLflow loads it per task in local mode).

Figures are rows per second of wall time, medians over rounds, and the medians of the per-round
ratios to in-process.

    nice -n 10 python -m benchmarks.spark --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

START, END = "<!-- spark-bench:start -->", "<!-- spark-bench:end -->"
MASTERS = ("local[1]", "local[2]")


def requests(rows: int, max_tokens: int) -> list[dict[str, Any]]:
    """``rows`` greedy chat requests over the batch benchmark's prompts, each made distinct."""
    from benchmarks.run import BATCH

    return [
        {
            "messages": [{**BATCH[i % len(BATCH)][0], "content": f"{BATCH[i % len(BATCH)][0]['content']} ({i})"}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        for i in range(rows)
    ]


def spark_worker(master: str, model: str, rows: int, max_tokens: int) -> None:
    """Hold one Spark session; for each line on stdin run the job and print its seconds (JSON)."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    import mlflow
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.master(master).config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    slots = spark.sparkContext.defaultParallelism
    data = [(r["messages"], r["max_tokens"], r["temperature"]) for r in requests(rows, max_tokens)]
    schema = "messages array<struct<role:string,content:string>>, max_tokens int, temperature double"
    df = spark.createDataFrame(spark.sparkContext.parallelize(data, slots), schema)
    udf = mlflow.pyfunc.spark_udf(spark, model, env_manager="local")
    answer = udf(F.struct("messages", "max_tokens", "temperature"))["choices"][0]["message"]["content"]
    print(json.dumps({"ready": slots}), flush=True)
    for _line in sys.stdin:
        start = time.perf_counter()
        texts = [row.text for row in df.select(answer.alias("text")).collect()]
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "texts": texts}), flush=True)
    spark.stop()


class Worker:
    """A ``spark_worker`` subprocess for one master."""

    def __init__(self, master: str, model: Path, rows: int, max_tokens: int) -> None:
        cmd = [sys.executable, "-m", "benchmarks.spark", "--worker", master, "--model", str(model)]
        cmd += ["--rows", str(rows), "--max-tokens", str(max_tokens)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.slots = json.loads(self._line())["ready"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the Spark worker process ended")
            if line.startswith("{"):
                return line

    def run(self) -> tuple[float, list[str]]:
        """Run the job once; its seconds and answers."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        out = json.loads(self._line())
        return float(out["seconds"]), list(out["texts"])

    def close(self) -> None:
        """Stop the session and the process."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def measure(rows: int, max_tokens: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds of the three sides; rows/s per side and ratios to in-process."""
    import mlflow
    import pandas as pd

    from benchmarks.serve import _package_exact

    workdir = Path(tempfile.mkdtemp(prefix="fk-spark-bench-"))
    model_dir = _package_exact(workdir)
    reqs = requests(rows, max_tokens)
    start = time.perf_counter()
    model = mlflow.pyfunc.load_model(str(model_dir))
    load_seconds = time.perf_counter() - start
    frame = pd.DataFrame(reqs)

    def in_process() -> tuple[float, list[str]]:
        start = time.perf_counter()
        out = model.predict(frame)
        return time.perf_counter() - start, [r["choices"][0]["message"]["content"] for r in out]

    workers = {m: Worker(m, model_dir, rows, max_tokens) for m in MASTERS}
    sides = {"in-process": in_process, **{m: w.run for m, w in workers.items()}}
    try:
        for side in sides.values():  # warm-up: first JVM job, worker start-up, caches
            side()
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        answers: dict[str, list[str]] = {}
        stable = True
        for _ in range(rounds):
            for name in random.sample(list(sides), len(sides)):
                took, texts = sides[name]()
                seconds[name].append(took)
                stable = stable and answers.setdefault(name, texts) == texts
        equal = stable and all(answers[m] == answers["in-process"] for m in MASTERS)
    finally:
        for w in workers.values():
            w.close()
    rate = {name: [rows / s for s in secs] for name, secs in seconds.items()}
    ratios = {m: [a / b for a, b in zip(rate[m], rate["in-process"], strict=True)] for m in MASTERS}
    return {
        "rows": rows,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "load_seconds": load_seconds,
        "rate": {k: statistics.median(v) for k, v in rate.items()},
        "ratio": {k: statistics.median(v) for k, v in ratios.items()},
        "ratio_range": {k: (min(v), max(v)) for k, v in ratios.items()},
        "equal": equal,
        "slots": {m: w.slots for m, w in workers.items()},
    }


def render(result: dict[str, Any]) -> str:
    """The Markdown section between the spark-bench markers."""
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}; SmolLM2-135M-Instruct onnx-cpu (int4), {result['rows']} chat rows, "
        f"greedy, max_tokens={result['max_tokens']}, {result['rounds']} interleaved rounds (medians; "
        f"ratio range min-max over rounds). Spark jobs include each task's model load; the in-process "
        f"model was loaded once ({result['load_seconds']:.1f} s).",
        "",
        "| side | rows/s | vs in-process |",
        "|---|---:|---:|",
        f"| in-process `predict` (one call, {result['rows']} rows) | {result['rate']['in-process']:.2f} | 1 |",
    ]
    for m in MASTERS:
        low, high = result["ratio_range"][m]
        lines.append(
            f"| `spark_udf` on `{m}` ({result['slots'][m]} partition(s)) | {result['rate'][m]:.2f} | "
            f"**{result['ratio'][m]:.2f}x** ({low:.2f}-{high:.2f}) |"
        )
    lines += ["", f"Greedy answers from Spark equal in-process `predict`: {'yes' if result['equal'] else '**no**'}."]
    return "\n".join(lines)


def write(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path`` (append a Spark section if they are missing)."""
    text = path.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{START}\n{section}\n{END}{tail}"
    else:
        text = f"{text.rstrip()}\n\n## Spark batch generation\n\n{START}\n{section}\n{END}\n"
    path.write_text(text)


def main() -> None:
    """Command line: measure and print (or write) the section, or act as a Spark worker process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", type=Path, help="update this Markdown file between the spark-bench markers")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spark_worker(args.worker, args.model, args.rows, args.max_tokens)
        return
    result = measure(args.rows, args.max_tokens, args.rounds)
    section = render(result)
    print(section)
    print(json.dumps(result))
    if args.write:
        write(args.write, section)


if __name__ == "__main__":
    main()
