"""``flavorkit serve`` against ``mlflow models serve`` on the same packaged model, side by side.

Both servers run at once on loopback, each in its own process, serving SmolLM2-135M-Instruct
packaged with onnx-cpu (ORT-genai int4). Each round sends the same workload to each server, in a
random order: ``C`` concurrent clients, each sending its share of the requests one after another
(greedy, ``max_tokens`` fixed, different prompts; at least one request per client). Throughput is
completion tokens (from the answers' usage) per second of wall time; the figure is the median of
per-round ratios. flavorkit's requests are streamed (usage from the ``include_usage`` chunk), so
each also gives a time to first token; ``mlflow models serve`` cannot stream, so its column is the
time to the whole answer.

Then, on flavorkit alone: the time to first token of a request that arrives while 4 long streams
run, against idle; and the decoding speed (tokens per second after the first token) of a request
sent just after 3 streaming clients disconnected mid-answer, against the same request on an idle
server, with the disconnects ``/metrics`` counted.

    python -m benchmarks.serve --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import http.client
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.run import BATCH

BIN = Path(sys.executable).parent
FK_CMD = [sys.executable, "-m", "flavorkit.cli", "serve"]
ML_CMD = [str(BIN / "mlflow"), "models", "serve", "-m"]
START, END = "<!-- serve-bench:start -->", "<!-- serve-bench:end -->"
NAME = "smollm2-chat"


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
    from flavorkit.demo import smollm2
    from flavorkit.demo.smollm2 import ONNX_OPTIONS
    from flavorkit_onnxgenai.convert import convert_checkpoint

    ort = convert_checkpoint(
        smollm2.checkpoint(),
        precision=str(ONNX_OPTIONS["precision"]),
        builder_options=dict(ONNX_OPTIONS["builder_options"]),
    )
    path = workdir / "smollm2-chat"
    flavorkit.package(model=str(ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0})
    return path


@dataclass
class Sent:
    """One request's outcome: completion tokens, seconds to the first token (or the whole answer), in all."""

    tokens: int
    first: float
    total: float


def _workload(send: Callable[[list[dict[str, str]]], Sent], clients: int, requests: int) -> tuple[float, list[Sent]]:
    """Completion tokens per second for ``requests`` requests spread over ``clients`` threads, and each outcome."""
    prompts = [BATCH[i % len(BATCH)] for i in range(requests)]
    shares = [prompts[i::clients] for i in range(clients)]

    def client(share: list[list[dict[str, str]]]) -> list[Sent]:
        return [send(p) for p in share]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sent = [one for share in pool.map(client, shares) for one in share]
    return sum(s.tokens for s in sent) / (time.perf_counter() - start), sent


def _stream(base: str, messages: list[dict[str, str]], max_tokens: int, close_after: int | None = None) -> Sent:
    """Send a streamed chat request; time its first content chunk and its end.

    With ``close_after``, the connection is closed after that many content chunks (a client that
    goes away mid-answer); ``tokens`` is then the number of chunks read.
    """
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=600)
    body = {
        "model": NAME,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    chunks = tokens = 0
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
        for line in resp:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[len(b"data: ") :])
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter() - start
                if close_after is not None and chunks >= close_after:
                    return Sent(chunks, first, time.perf_counter() - start)
    finally:
        conn.close()  # closes the socket: the server sees the client go away
    if first is None:
        raise RuntimeError("no content chunk")
    return Sent(tokens, first, time.perf_counter() - start)


def _ttft(base: str, max_tokens: int) -> float:
    """Seconds from sending a streamed request to its first content chunk (the rest is read, too)."""
    return _stream(base, BATCH[1], max_tokens).first


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


def _metrics(base: str) -> str:
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def _metric(text: str, line_start: str) -> float:
    """The value of the first Prometheus sample line starting with ``line_start`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


DISCONNECTS = 'flavorkit_cancelled_requests_total{reason="disconnect"}'


def _wait_idle(base: str, timeout: float = 120.0) -> None:
    """Wait until flavorkit has nothing queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        text = _metrics(base)
        if _metric(text, "flavorkit_active_requests") == 0 and _metric(text, "flavorkit_queue_depth") == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("flavorkit serve did not become idle")
        time.sleep(0.05)


def _decode_speed(sent: Sent) -> float:
    """Tokens per second after the first token."""
    return (sent.tokens - 1) / (sent.total - sent.first)


def _after_disconnects(
    base: str, rounds: int, long_tokens: int, tokens: int
) -> tuple[list[float], list[float], list[float]]:
    """Decoding speed idle and just after 3 clients left mid-stream, interleaved; disconnects /metrics saw."""
    idle, after, seen = [], [], []
    story = BATCH[0]
    for _ in range(rounds):
        for case in random.sample(["idle", "after"], 2):
            _wait_idle(base)
            if case == "idle":
                idle.append(_decode_speed(_stream(base, story, tokens)))
                continue
            before = _metrics(base)
            with ThreadPoolExecutor(3) as pool:  # three clients start long answers and leave after 4 chunks
                left = [pool.submit(_stream, base, BATCH[i + 2], long_tokens, 4) for i in range(3)]
                for f in left:
                    f.result()
            after.append(_decode_speed(_stream(base, story, tokens)))
            seen.append(_metric(_metrics(base), DISCONNECTS) - _metric(before, DISCONNECTS))
    return idle, after, seen


def _pct(values: list[float], p: int) -> float:
    """The ``p``-th percentile (inclusive method; the value itself for one sample)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (or write) the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per round at each concurrency (at least one per client)"
    )
    parser.add_argument("--long-tokens", type=int, default=256, help="max_tokens of the long streams")
    parser.add_argument("--decode-tokens", type=int, default=128, help="max_tokens of the decoding-speed request")
    parser.add_argument("--write", type=Path, help="update this markdown file between the serve-bench markers")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = _package(Path(tmp))
        fk_port, rq_port, ml_port = _free_port(), _free_port(), _free_port()
        fk_base, ml_base = f"http://127.0.0.1:{fk_port}", f"http://127.0.0.1:{ml_port}"
        rq_base = f"http://127.0.0.1:{rq_port}"
        procs = [
            _start(
                [*FK_CMD, str(model), "--port", str(fk_port), "--max-batch", "8", "--log-level", "warning"],
                fk_base,
            ),
            _start(  # the alternative: request-level batching (each batch runs to its end)
                [*FK_CMD, str(model), "--port", str(rq_port), "--max-batch", "8", "--batching", "request"],
                rq_base,
            ),
            _start(
                [*ML_CMD, str(model), "-h", "127.0.0.1", "-p", str(ml_port), "--env-manager", "local"],
                ml_base,
            ),
        ]
        try:

            def flavorkit_send(messages: list[dict[str, str]]) -> Sent:
                return _stream(fk_base, messages, args.max_tokens)

            def request_send(messages: list[dict[str, str]]) -> Sent:
                return _stream(rq_base, messages, args.max_tokens)

            def mlflow_send(messages: list[dict[str, str]]) -> Sent:
                body = {"messages": messages, "max_tokens": args.max_tokens}
                start = time.perf_counter()
                tokens = int(_post(f"{ml_base}/invocations", body)[0]["usage"]["completion_tokens"])
                took = time.perf_counter() - start
                return Sent(tokens, took, took)  # no streaming: the first token comes with the whole answer

            for send in (flavorkit_send, request_send, mlflow_send):  # warm-up
                _workload(send, 2, 2)
            rows, ttft_rows = [], []
            for clients in args.clients:
                fk, rq, ml, ratio, rq_ratio = [], [], [], [], []
                first: dict[str, list[float]] = {"fk": [], "rq": [], "ml": []}
                for r in range(args.rounds):
                    order = [("fk", flavorkit_send), ("rq", request_send), ("ml", mlflow_send)]
                    random.shuffle(order)
                    got = {}
                    for name, send in order:
                        got[name], sent = _workload(send, clients, max(args.requests, clients))
                        first[name] += [s.first for s in sent]
                    fk.append(got["fk"])
                    rq.append(got["rq"])
                    ml.append(got["ml"])
                    ratio.append(got["fk"] / got["ml"])
                    rq_ratio.append(got["rq"] / got["ml"])
                    print(
                        f"clients={clients} round {r + 1}: flavorkit {got['fk']:.1f} tok/s, "
                        f"request-level {got['rq']:.1f}, mlflow {got['ml']:.1f}"
                    )
                q = statistics.quantiles(ratio, n=4) if len(ratio) > 1 else [ratio[0]] * 3
                rows.append(
                    f"| {clients} | {statistics.median(ml):.1f} | {statistics.median(fk):.1f} | "
                    f"**{statistics.median(ratio):.2f}x** ({q[0]:.2f}-{q[2]:.2f}) | {statistics.median(rq):.1f} | "
                    f"{statistics.median(rq_ratio):.2f}x |"
                )
                ml_ms = [v * 1000 for v in first["ml"]]
                fk_ms = [v * 1000 for v in first["fk"]]
                rq_ms = [v * 1000 for v in first["rq"]]
                ttft_rows.append(
                    f"| {clients} | {_pct(ml_ms, 50):.0f} ms | {_pct(ml_ms, 95):.0f} ms | "
                    f"{_pct(fk_ms, 50):.0f} ms | {_pct(fk_ms, 95):.0f} ms | "
                    f"{_pct(rq_ms, 50):.0f} ms | {_pct(rq_ms, 95):.0f} ms | {len(fk_ms)} |"
                )
            idle, late = _late_arrival(fk_base, args.rounds, args.long_tokens)
            print(f"late arrival: idle TTFT {idle}, late TTFT {late}")
            rq_idle, rq_late = _late_arrival(rq_base, args.rounds, args.long_tokens)
            print(f"late arrival, request-level: idle TTFT {rq_idle}, late TTFT {rq_late}")
            speed_idle, speed_after, seen = _after_disconnects(
                fk_base, args.rounds, args.long_tokens, args.decode_tokens
            )
            print(f"after 3 disconnects: idle {speed_idle} tok/s, after {speed_after} tok/s, disconnects seen {seen}")
        finally:
            for proc in procs:
                _stop(proc)

    speed_ratio = [a / i for a, i in zip(speed_after, speed_idle, strict=True)]
    body = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}; SmolLM2-135M-Instruct packaged with onnx-cpu (ORT-genai int4), "
            f"greedy, max_tokens={args.max_tokens}, {args.requests} requests per round (at least one per client), "
            f"{args.rounds} interleaved rounds; `flavorkit serve --max-batch 8` against "
            "`mlflow models serve --env-manager local`, both on loopback. flavorkit's requests are streamed "
            "(`stream_options.include_usage`), MLflow's are not (it cannot stream). Ratios are medians of "
            "per-round ratios, with the interquartile range.",
            "",
            "| concurrent clients | mlflow models serve tokens/s | flavorkit serve tokens/s | ratio "
            "| `--batching request` tokens/s | its ratio |",
            "|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Time to first token over every request of those rounds. `mlflow models serve` cannot stream, so its "
            "columns are the time to the whole answer, which is when its client sees the first token.",
            "",
            "| concurrent clients | mlflow models serve p50 (whole answer) | p95 (whole answer) "
            "| flavorkit serve TTFT p50 | TTFT p95 | `--batching request` p50 | p95 | requests |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            *ttft_rows,
            "",
            f"| flavorkit serve, time to first token | idle | during 4 streams of {args.long_tokens} tokens "
            "| ratio (target <= 4x) |",
            "|---|---:|---:|---:|",
            f"| continuous (default), median of {args.rounds} | {statistics.median(idle) * 1000:.0f} ms | "
            f"{statistics.median(late) * 1000:.0f} ms | **{statistics.median(late) / statistics.median(idle):.1f}x** |",
            f"| `--batching request`, median of {args.rounds} | {statistics.median(rq_idle) * 1000:.0f} ms | "
            f"{statistics.median(rq_late) * 1000:.0f} ms | "
            f"{statistics.median(rq_late) / statistics.median(rq_idle):.1f}x |",
            "",
            f"Decoding speed (tokens/s after the first token, max_tokens={args.decode_tokens}) of a request sent "
            f"just after 3 clients closed their streams of {args.long_tokens} tokens after 4 chunks, against the "
            "same request on an idle server (interleaved); the last column is the increase of "
            f"`{DISCONNECTS}` in `/metrics` per round.",
            "",
            "| flavorkit serve, decoding speed | idle | after 3 disconnects | ratio (target >= 0.9x) "
            "| disconnects counted |",
            "|---|---:|---:|---:|---:|",
            f"| median of {args.rounds} | {statistics.median(speed_idle):.1f} tok/s | "
            f"{statistics.median(speed_after):.1f} tok/s | **{statistics.median(speed_ratio):.2f}x** | "
            f"{', '.join(f'{v:.0f}' for v in seen)} |",
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
