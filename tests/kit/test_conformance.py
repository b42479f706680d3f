"""Dogfooding: the conformance kit on every first-party backend, and `flavorkit check` from the command line.

Each class below is the whole kit for one backend: every clause is a test here, so a backend that
breaks the contract fails this suite with the clause's name.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from flavorkit.testing import CLAUSES
from kit_suites import FirstPartySuite

pytest_plugins = ["flavorkit.testing.plugin"]


class TestOnnxCpu(FirstPartySuite):
    """onnx-cpu on the tiny ORT-genai model, with a context long enough for the tool clauses."""

    backend = "onnx-cpu"
    sources = ("tiny_ort_long",)


class TestOnnxCpuFromCheckpoint(FirstPartySuite):
    """onnx-cpu on the tiny transformers checkpoint: artifacts() converts it (fp32) at packaging time.

    Its 256-token context is too short for the generic tool prompt: guided_tool_choice skips, saying so.
    """

    backend = "onnx-cpu"
    options: ClassVar[dict[str, str]] = {"precision": "fp32"}
    sources = ("tiny_ort", "tiny_hf")  # tiny_ort first: the conversion is then a cache hit


class TestTransformers(FirstPartySuite):
    """transformers on the tiny checkpoint, with a context long enough for the tool clauses."""

    backend = "transformers"
    sources = ("tiny_hf_long",)


class TestOptimumOnnx(FirstPartySuite):
    """optimum-onnx on the tiny checkpoint (exported to ONNX at packaging time; skipped where optimum cannot run)."""

    backend = "optimum-onnx"
    sources = ("tiny_hf",)


def test_flavorkit_check_command_line(tiny_ort_long: Path, tmp_path: Path) -> None:
    """`flavorkit check onnx-cpu --model PATH --json R` passes, prints the table and writes the report."""
    report = tmp_path / "report.json"
    model = str(tiny_ort_long)
    cmd = [sys.executable, "-m", "flavorkit.cli", "check", "onnx-cpu", "--model", model, "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {
        line.split()[0]: line.split()[1]
        for line in proc.stdout.splitlines()
        if line.split()[:1] in [[c] for c in CLAUSES]
    }
    # gpu: onnx-cpu needs none; guided_refused: it declares guided_decoding, so that clause is for others.
    assert rows == {name: ("skipped" if name in ("gpu", "guided_refused") else "passed") for name in CLAUSES}
    assert "32 passed, 0 failed, 2 skipped, 0 xfailed" in proc.stdout
    # A live line per clause while it runs: count, outcome, the clause's time and the time so far.
    progress = re.findall(r"^  \[(\d+)/(\d+)\] (\w+): (\w+) \(\d+\.\d s; \d+:\d\d elapsed\)$", proc.stdout, re.M)
    assert [int(done) for done, _, _, _ in progress] == list(range(1, len(CLAUSES) + 1))
    assert {total for _, total, _, _ in progress} == {str(len(CLAUSES))}
    assert {clause: outcome for _, _, clause, outcome in progress} == rows
    assert proc.stdout.index("  [1/") < proc.stdout.index("distribution:"), "progress comes before the table"
    data = json.loads(report.read_text())
    assert data["ok"] is True and data["version"] == 1
    assert data["backends"][0]["name"] == "onnx-cpu" and data["backends"][0]["model"] == model
    assert {c["clause"]: c["outcome"] for c in data["clauses"]} == rows
