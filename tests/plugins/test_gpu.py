"""GPU backends on a CUDA device: onnx-cuda (conformance kit and predict), transformers and optimum on cuda.

Marked ``gpu``. Each test skips, with the reason, where no CUDA device or no CUDA build of the
runtime is present (CI has neither), so the same file runs for real on a GPU machine:
``pytest -m gpu tests/plugins/test_gpu.py`` after ``pip install onnxruntime-genai-cuda onnxruntime-gpu``
and a CUDA build of torch.
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest

import flavorkit
from flavorkit.runtime.loaded import LoadedModel
from helpers import chat, content, joined
from stacks import needs_optimum

pytestmark = pytest.mark.gpu


def _installed(distribution: str) -> bool:
    try:
        md.version(distribution)
    except md.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def cuda() -> None:
    """Skip unless a CUDA device is visible to torch."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver (nvidia-smi not found)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip(f"torch {torch.__version__} sees no CUDA device (a CPU build, or no GPU)")


def _needs(distribution: str) -> None:
    if not _installed(distribution):
        pytest.skip(f"{distribution} is not installed (pip install {distribution})")


def _loaded(uri: str) -> LoadedModel:
    model: LoadedModel = mlflow.pyfunc.load_model(uri).unwrap_python_model().loaded
    return model


@pytest.fixture(scope="module")
def tiny_ort_cuda(cuda: None, tiny_hf: Path) -> Path:
    """The tiny checkpoint built by the model builder for the CUDA execution provider, in fp16.

    Not fp32: the builder's fp32 graph for cuda does not load (tests/plugins/test_onnx_graph_check.py).
    """
    _needs("onnxruntime-genai-cuda")
    from flavorkit_onnxgenai.convert import convert_checkpoint

    return convert_checkpoint(tiny_hf, precision="fp16", execution_provider="cuda")


def test_onnx_cuda_passes_the_conformance_kit(tiny_ort_cuda: Path, tmp_path: Path) -> None:
    from flavorkit.testing.check import run_check

    report = tmp_path / "report.json"
    assert run_check("onnx-cuda", str(tiny_ort_cuda), json_path=report) == 0
    import json

    data = json.loads(report.read_text())
    outcomes = {c["clause"]: c["outcome"] for c in data["clauses"]}
    assert data["ok"] is True and data["summary"]["failed"] == 0
    assert outcomes["gpu"] == "passed", outcomes


def test_onnx_cuda_predicts_and_streams(tiny_ort_cuda: Path, tmp_path: Path) -> None:
    info = flavorkit.package(
        model=str(tiny_ort_cuda),
        backend="onnx-cuda",
        path=tmp_path / "m",
        generation={"temperature": 0.0},
        options={"provider_options": {"device_id": "0"}},
    )
    model = mlflow.pyfunc.load_model(info.model_uri)
    request = chat("Write a haiku about the sea.", max_tokens=12)
    answer = model.predict(request)[0]
    assert answer["usage"]["completion_tokens"] <= 12
    assert joined(list(model.predict_stream(request))) == content(answer)
    batch = model.predict([request, chat("Hello", max_tokens=5)])
    assert content(batch[0]) == content(answer), "greedy rows equal their single answer on the GPU too"


def test_transformers_on_cuda(cuda: None, tiny_hf: Path, tmp_path: Path) -> None:
    info = flavorkit.package(
        model=str(tiny_hf),
        backend="transformers",
        path=tmp_path / "m",
        generation={"temperature": 0.0},
        options={"device": "cuda"},
    )
    loaded = _loaded(info.model_uri)
    assert loaded.handle.device.type == "cuda"
    assert next(loaded.handle.model.parameters()).device.type == "cuda"
    request = chat("Hello", max_tokens=8)
    answer = loaded.predict(request)[0]
    assert answer["usage"]["completion_tokens"] <= 8
    assert joined(list(loaded.predict_stream(request))) == content(answer)
    sampled: Any = loaded.predict(chat("Hello", max_tokens=8, temperature=1.0, seed=3))[0]
    again: Any = loaded.predict(chat("Hello", max_tokens=8, temperature=1.0, seed=3))[0]
    assert content(sampled) == content(again), "seeded sampling repeats on the GPU"


@needs_optimum
def test_optimum_on_cuda_with_provider_options(cuda: None, tiny_hf: Path, tmp_path: Path) -> None:
    _needs("onnxruntime-gpu")
    from flavorkit_hf.export import export_checkpoint

    info = flavorkit.package(
        model=str(export_checkpoint(tiny_hf)),
        backend="optimum-onnx",
        path=tmp_path / "m",
        generation={"temperature": 0.0},
        options={"provider": "CUDAExecutionProvider", "provider_options": {"device_id": "0"}},
    )
    loaded = _loaded(info.model_uri)
    session = loaded.handle.model.model
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    assert session.get_provider_options()["CUDAExecutionProvider"]["device_id"] == "0"
    assert loaded.predict(chat("Hello", max_tokens=4))[0]["usage"]["completion_tokens"] <= 4


def test_onnx_cuda_serves_the_openai_client_with_continuous_batching(tiny_ort_cuda: Path, tmp_path: Path) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("prometheus_client")
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from flavorkit.serve import create_app
    from serve_fixtures import metric, running

    path = tmp_path / "tiny-cuda"
    flavorkit.package(model=str(tiny_ort_cuda), backend="onnx-cuda", path=path, generation={"temperature": 0.0})
    prompts = [f"Question {i}: tell me about batching" + " please" * i for i in range(6)]
    with running(create_app(str(path))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)

        def ask(prompt: str) -> str:
            reply = client.chat.completions.create(
                model="tiny-cuda", messages=[{"role": "user", "content": prompt}], max_tokens=24
            )
            return reply.choices[0].message.content or ""

        alone = [ask(p) for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            together = list(pool.map(ask, prompts))
        chunks = client.chat.completions.create(
            model="tiny-cuda", messages=[{"role": "user", "content": prompts[0]}], max_tokens=24, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
        with urllib.request.urlopen(f"{url}/metrics") as response:
            text = response.read().decode()
    assert together == alone, "greedy answers do not depend on what else is in the batch"
    assert streamed == alone[0]
    batched = metric(text, "flavorkit_batch_size_count") - metric(text, "flavorkit_batch_size_bucket", le="1.0")
    assert batched >= 1, "the concurrent requests shared a backend batch"
