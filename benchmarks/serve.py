"""``flavorkit serve`` against ``mlflow models serve`` on the same packaged model, side by side.

Both servers run at once on loopback, each in its own process, serving SmolLM2-135M-Instruct
packaged with onnx-cpu (ORT-genai int4). Each round sends the same workload to each server, in a
random order: ``C`` concurrent clients, each sending its share of the requests one after another
(greedy, ``max_tokens`` fixed, different prompts). Throughput is completion tokens (from the
answers' usage) per second of wall time; the figure is the median of per-round ratios.

    python -m benchmarks.serve --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.run import BATCH

BIN = Path(sys.executable).parent
FK_CMD = [sys.executable, "-m", "flavorkit.cli", "serve"]
ML_CMD = [str(BIN / "mlflow"), "models", "serve", "-m"]
START, END = "<!-- serve-bench:start -->", "<!-- serve-bench:end -->"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _start(cmd: list[str], base: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(cmd)}") from None
            time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _package(workdir: Path) -> Path:
    import flavorkit
    from flavorkit import smollm2
    from flavorkit.quickstart import ONNX_OPTIONS
    from flavorkit_onnxgenai.convert import convert_checkpoint

    ort = convert_checkpoint(
        smollm2.checkpoint(),
        precision=str(ONNX_OPTIONS["precision"]),
        builder_options=dict(ONNX_OPTIONS["builder_options"]),
    )
    path = workdir / "smollm2-chat"
    flavorkit.package(model=str(ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    return path


def _workload(send: Callable[[list[dict[str, str]]], int], clients: int, requests: int) -> float:
    """Completion tokens per second for ``requests`` requests spread over ``clients`` threads."""
    prompts = [BATCH[i % len(BATCH)] for i in range(requests)]
    shares = [prompts[i::clients] for i in range(clients)]

    def client(share: list[list[dict[str, str]]]) -> int:
        return sum(send(p) for p in share)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(client, shares))
    return tokens / (time.perf_counter() - start)


def _ttft(base: str, max_tokens: int) -> float:
    """Seconds from sending a streamed request to its first content chunk (the rest is read, too)."""
    body = {"model": "smollm2-chat", "messages": BATCH[1], "max_tokens": max_tokens, "stream": True}
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            if first is None and line.startswith(b"data: {"):
                delta = json.loads(line[len(b"data: ") :])["choices"][0]["delta"]
                if delta.get("content"):
                    first = time.perf_counter() - start
    assert first is not None, "no content chunk"
    return first


def _late_arrival(base: str, rounds: int, long_tokens: int) -> tuple[list[float], list[float]]:
    """TTFT when idle, and TTFT of a request sent while 4 long streams are running."""
    idle, late = [], []
    for _ in range(rounds):
        idle.append(_ttft(base, 16))
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(_ttft, base, long_tokens) for _ in range(4)]
            time.sleep(0.5)  # the four are decoding
            late.append(_ttft(base, 16))
            for f in running:
                f.result()
    return idle, late


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (or write) the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--requests", type=int, default=16, help="requests per round at each concurrency")
    parser.add_argument("--write", type=Path, help="update this markdown file between the serve-bench markers")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = _package(Path(tmp))
        fk_port, ml_port = _free_port(), _free_port()
        fk_base, ml_base = f"http://127.0.0.1:{fk_port}", f"http://127.0.0.1:{ml_port}"
        procs = [
            _start(
                [*FK_CMD, str(model), "--port", str(fk_port), "--max-batch", "8", "--log-level", "warning"],
                fk_base,
            ),
            _start(
                [*ML_CMD, str(model), "-h", "127.0.0.1", "-p", str(ml_port), "--env-manager", "local"],
                ml_base,
            ),
        ]
        try:

            def flavorkit_send(messages: list[dict[str, str]]) -> int:
                body = {"model": "smollm2-chat", "messages": messages, "max_tokens": args.max_tokens}
                return int(_post(f"{fk_base}/v1/chat/completions", body)["usage"]["completion_tokens"])

            def mlflow_send(messages: list[dict[str, str]]) -> int:
                body = {"messages": messages, "max_tokens": args.max_tokens}
                return int(_post(f"{ml_base}/invocations", body)[0]["usage"]["completion_tokens"])

            for send in (flavorkit_send, mlflow_send):  # warm-up
                _workload(send, 2, 2)
            rows = []
            for clients in args.clients:
                fk, ml, ratio = [], [], []
                for r in range(args.rounds):
                    order = [("fk", flavorkit_send), ("ml", mlflow_send)]
                    random.shuffle(order)
                    got = {name: _workload(send, clients, args.requests) for name, send in order}
                    fk.append(got["fk"])
                    ml.append(got["ml"])
                    ratio.append(got["fk"] / got["ml"])
                    print(f"clients={clients} round {r + 1}: flavorkit {got['fk']:.1f} tok/s, mlflow {got['ml']:.1f}")
                q = statistics.quantiles(ratio, n=4) if len(ratio) > 1 else [ratio[0]] * 3
                rows.append(
                    f"| {clients} | {statistics.median(ml):.1f} | {statistics.median(fk):.1f} | "
                    f"**{statistics.median(ratio):.2f}x** ({q[0]:.2f}-{q[2]:.2f}) |"
                )
            idle, late = _late_arrival(fk_base, args.rounds, 256)
            print(f"late arrival: idle TTFT {idle}, late TTFT {late}")
        finally:
            for proc in procs:
                _stop(proc)

    body = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}; SmolLM2-135M-Instruct packaged with onnx-cpu (ORT-genai int4), "
            f"greedy, max_tokens={args.max_tokens}, {args.requests} requests per round, {args.rounds} interleaved "
            "rounds; `flavorkit serve --max-batch 8` against `mlflow models serve --env-manager local`, both on "
            "loopback. Ratios are medians of per-round ratios, with the interquartile range.",
            "",
            "| concurrent clients | mlflow models serve tokens/s | flavorkit serve tokens/s | ratio |",
            "|---:|---:|---:|---:|",
            *rows,
            "",
            "| flavorkit serve, time to first token | idle | during 4 streams of 256 tokens | ratio (target <= 4x) |",
            "|---|---:|---:|---:|",
            f"| median of {args.rounds} | {statistics.median(idle) * 1000:.0f} ms | "
            f"{statistics.median(late) * 1000:.0f} ms | **{statistics.median(late) / statistics.median(idle):.1f}x** |",
        ]
    )
    print(body)
    if args.write:
        text = args.write.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            text = head + START + "\n" + body + "\n" + END + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n## flavorkit serve vs mlflow models serve\n\n{START}\n{body}\n{END}\n"
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
