"""docs/tutorial.md runs as written: every block in order, in one empty folder, its shown output compared.

Python blocks run as scripts of their own (each is complete); a ``flavorkit serve`` block starts
the real server in the background (on a free port in place of 8000) until the page is done; other
shell blocks run with bash. A block followed by "prints" and a ``text`` block must print exactly that.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```(python|bash)\n(.*?)```(?:\n\nprints\n\n```text\n(.*?)```)?", re.DOTALL)

pytestmark = pytest.mark.slow


def _blocks() -> list[tuple[str, str, str | None]]:
    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serving(command: str, cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """Run the page's ``flavorkit serve`` line in the background until the block ends."""
    words = shlex.split(command.replace("\\\n", " "))
    assignments = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    argv = [w for w in words if w not in {f"{k}={v}" for k, v in assignments.items()}]
    argv[0] = str(Path(sys.executable).with_name("flavorkit"))
    port = argv[argv.index("--port") + 1]
    log = (cwd / "serve.log").open("w")
    proc = subprocess.Popen(argv, cwd=cwd, env={**env, **assignments}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (cwd / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_every_block_of_the_tutorial_runs_and_prints_what_the_page_shows(smollm2_ort: Path, tmp_path: Path) -> None:
    # smollm2_ort converts with the page's options, so step 2 takes the conversion from the cache.
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # a new user's: MLflow's defaults
    env.update(HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    workdir = tmp_path / "tutorial"
    workdir.mkdir()
    blocks = [(kind, code.replace("8000", port), shown) for kind, code, shown in _blocks()]
    assert [kind for kind, _, _ in blocks] == ["python", "python", "bash", "python", "bash"]
    with ExitStack() as stack:  # the server started mid-page stops when the page is done, or fails
        for kind, code, shown in blocks:
            if kind == "bash" and "flavorkit serve" in code:
                stack.enter_context(_serving(code, workdir, env))
                continue
            argv = [sys.executable, "-c", code] if kind == "python" else ["bash", "-c", code]
            run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=workdir, timeout=900)
            assert run.returncode == 0, (code, run.stderr[-3000:])
            if shown is not None:
                assert run.stdout == shown, code
            if kind == "bash":  # the curl call: the same answer as the openai client's
                answer = json.loads(run.stdout)
                assert answer["object"] == "chat.completion" and answer["model"] == "smollm2-chat"
                assert answer["choices"][0]["message"]["content"] == blocks[3][2].strip()  # type: ignore[union-attr]
