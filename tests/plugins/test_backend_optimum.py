"""The ``optimum-onnx`` backend on the tiny local Llama: export and cache, sources, requirements, decoding."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import flavorkit
from flavorkit.backend.registry import get_backend
from flavorkit.errors import BackendUnavailable, InvalidRequest, ModelSourceError
from flavorkit.model.manifest import sha256_file
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.types import GenerationRequest
from helpers import PROMPTS, chat, content, load_engine
from stacks import needs_optimum

pytestmark = needs_optimum


@pytest.fixture(scope="session")
def tiny_onnx(tiny_hf: Path) -> Path:
    """The tiny checkpoint exported by Optimum (cached by content in the flavorkit cache)."""
    from flavorkit_hf.export import export_checkpoint

    return export_checkpoint(tiny_hf)


@pytest.fixture(scope="module")
def tiny_opt(tiny_onnx: Path) -> Iterator[LoadedModel]:
    model = load_engine("optimum-onnx", tiny_onnx)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny_opt_dir(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("opt") / "tiny-optimum"
    flavorkit.package(model=str(tiny_onnx), backend="optimum-onnx", path=path, generation={"temperature": 0.0})
    return path


def test_checkpoint_is_exported_once_with_progress(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLAVORKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLAVORKIT_PROGRESS", "1")
    first = tmp_path / "first"
    flavorkit.package(model=str(tiny_hf), backend="optimum-onnx", path=first)
    err = capfd.readouterr().err
    assert "Exporting" in err and "done in" in err
    entries = [p for p in (tmp_path / "cache" / "optimum-onnx").iterdir() if p.is_dir()]
    assert len(entries) == 1
    recipe = json.loads(entries[0].with_name(entries[0].name + ".json").read_text())
    assert recipe["task"] == "text-generation-with-past"

    second = tmp_path / "second"
    flavorkit.package(model=str(tiny_hf), backend="optimum-onnx", path=second)
    assert "Exporting" not in capfd.readouterr().err  # served from the cache
    onnx = Path("artifacts") / "model" / "model.onnx"
    assert sha256_file(first / onnx) == sha256_file(second / onnx)
    assert not list((second / "artifacts" / "model").glob("*.safetensors"))


def test_export_folder_packages_with_minimal_pinned_requirements(tiny_opt_dir: Path) -> None:
    from importlib.metadata import version

    from mlflow.models import Model

    staged = tiny_opt_dir / "artifacts" / "model"
    for name in ("model.onnx", "config.json", "tokenizer.json", "generation_config.json"):
        assert (staged / name).is_file(), name
    reqs = (tiny_opt_dir / "requirements.txt").read_text().split()
    for dist in ("optimum-onnx", "optimum", "onnxruntime", "onnx", "transformers", "torch"):
        # Pinned to the installed release, without a local label such as torch's "+cpu".
        assert f"{dist}=={Version(version(dist)).public}" in reqs
    names = {r.split("==")[0].lower() for r in reqs}
    assert not names & {"accelerate", "torchvision", "onnxruntime-genai", "scipy", "scikit-learn"}
    meta = Model.load(str(tiny_opt_dir)).metadata["flavorkit"]["backend_metadata"]
    assert meta["provider"] == "CPUExecutionProvider"
    assert meta["onnx_file"] == "model.onnx" and meta["position_ids"] is True


def test_unusable_sources_fail_clearly(tiny_hf: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    def package(source: Any) -> None:
        flavorkit.package(model=source, backend="optimum-onnx", path=tmp_path / "out")

    genai = tmp_path / "genai"
    genai.mkdir()
    (genai / "genai_config.json").write_text("{}")
    shutil.copy(tiny_onnx / "model.onnx", genai / "model.onnx")
    with pytest.raises(ModelSourceError, match="onnx-cpu"):
        package(genai)

    no_past = tmp_path / "no-past"
    shutil.copytree(tiny_onnx, no_past, ignore=shutil.ignore_patterns("*.onnx"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["logits"])],
        "no_past",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, ["batch", "seq"])],
    )
    onnx.save(helper.make_model(graph), str(no_past / "model.onnx"))
    with pytest.raises(ModelSourceError, match="text-generation-with-past"):
        package(no_past)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match="neither ONNX files nor a transformers checkpoint"):
        package(empty)
    with pytest.raises(ModelSourceError, match="path or Hub id"):
        package(object())
    assert not (tmp_path / "out").exists()


def test_execution_provider_option(tiny_onnx: Path) -> None:
    import onnxruntime as ort

    be = get_backend("optimum-onnx")
    with pytest.raises(InvalidRequest) as info:
        be.validate_options({"provider": "GPU"})
    assert info.value.field == "options.provider"
    assert be.validate_options({})["provider"] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here; the missing-provider error cannot be shown")
    with pytest.raises(BackendUnavailable, match="CPUExecutionProvider"):
        be.load({"model": str(tiny_onnx)}, be.validate_options({"provider": "CUDAExecutionProvider"}))


def test_pyfunc_stream_equals_predict(tiny_opt_dir: Path) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(str(tiny_opt_dir))
    for text in PROMPTS[:3]:
        request = chat(text, max_tokens=20)
        response = model.predict(request)[0]
        chunks = list(model.predict_stream(request))
        assert len(chunks) > 3
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content(response)
        assert chunks[-1]["choices"][0]["finish_reason"] == response["choices"][0]["finish_reason"]
        assert chunks[-1]["usage"] == response["usage"]


def test_greedy_tokens_match_transformers(tiny_hf: Path, tiny_opt: LoadedModel) -> None:
    tf = load_engine("transformers", tiny_hf)
    for text in PROMPTS:
        messages = [{"role": "user", "content": text}]
        prompt = tf.backend.encode(tf.handle, messages)
        assert tiny_opt.backend.encode(tiny_opt.handle, messages) == prompt
        request = GenerationRequest(prompt_ids=prompt, max_tokens=20)
        assert tiny_opt.handle.token_ids(request) == tf.handle.token_ids(request)


def one_batch(model: LoadedModel) -> LoadedModel:
    """Batch every request together whatever its length, to test the padded batch itself."""
    from flavorkit_hf.engine import GPU_COST

    model.handle.cost = GPU_COST
    return model


def test_batch_equals_single_requests(tiny_opt: LoadedModel) -> None:
    one_batch(tiny_opt)
    requests = [chat(p, max_tokens=m) for p, m in zip(PROMPTS, [7, 24, 15, 24, 9], strict=True)]
    singles = [tiny_opt.predict(r)[0] for r in requests]
    before = tiny_opt.handle.stats["batches"]
    for one, many in zip(singles, tiny_opt.predict(requests), strict=True):
        assert many["choices"] == one["choices"]
        assert many["usage"] == one["usage"]
    assert tiny_opt.handle.stats["batches"] == before + 1


def test_exact_mode_replays_rows_alone_identically(tiny_onnx: Path) -> None:
    model = one_batch(load_engine("optimum-onnx", tiny_onnx, max_batch_size=4))
    # Private knob, on purpose: random weights give no near tie on demand; an infinite tolerance
    # makes every greedy step one, the only way to drive the replay path.
    model.handle.tie_tolerance = float("inf")
    requests = [chat(p, max_tokens=10) for p in PROMPTS[:4]]
    singles = [model.predict(r)[0]["choices"] for r in requests]
    assert [r["choices"] for r in model.predict(requests)] == singles
    assert model.handle.stats["replays"] == len(requests)
    assert model.handle.stats["replay_mismatch"] == 0


def test_sampling_is_seeded(tiny_opt: LoadedModel) -> None:
    def sample(text: str, **settings: Any) -> str:
        return content(tiny_opt.predict(chat(text, max_tokens=16, **settings))[0])

    seeded = sample(PROMPTS[1], temperature=0.8, seed=7)
    assert sample(PROMPTS[1], temperature=0.8, seed=7) == seeded
    assert sample(PROMPTS[1], temperature=0.8, seed=8) != seeded
    batch = tiny_opt.predict(
        [
            chat(PROMPTS[0], max_tokens=16, temperature=0.8, seed=1),
            chat(PROMPTS[1], max_tokens=16, temperature=0.8, seed=7),
        ]
    )
    assert content(batch[1]) == seeded
    assert sample(PROMPTS[1], temperature=2.0, top_k=1, seed=4) == sample(PROMPTS[1], temperature=0.0)
