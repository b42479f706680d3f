"""The ``transformers`` backend on the tiny local Llama: sources, options, streaming, batching, sampling.

Mechanics are checked on the tiny checkpoint (random weights, so texts are gibberish but every code
path is real); SmolLM2 parity and agreement live in test_backend_parity.py.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

import flavorkit
from flavorkit.backend.registry import get_backend
from flavorkit.errors import InvalidRequest, ModelSourceError
from flavorkit.model.manifest import sha256_file
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.types import GenerationRequest
from helpers import PROMPTS, chat, content, joined, load_engine
from stacks import optimum_unavailable


@pytest.fixture(scope="module")
def tiny_tf(tiny_hf: Path) -> Iterator[LoadedModel]:
    model = load_engine("transformers", tiny_hf)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tiny_tf_dir(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tf") / "tiny-transformers"
    flavorkit.package(model=str(tiny_hf), backend="transformers", path=path, generation={"temperature": 0.0})
    return path


@pytest.fixture()
def count_weight_loads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts PreTrainedModel.from_pretrained calls (the real method still runs)."""
    from transformers import PreTrainedModel

    calls = {"n": 0}
    original = PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))
    return calls


# -- discovery and packaging -----------------------------------------------------------------------


def test_backends_listed_without_importing_runtimes() -> None:
    code = (
        "import sys, json, flavorkit\n"
        "rows = {b['name']: b for b in flavorkit.backends(refresh=True)}\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnxruntime') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'tf': rows['transformers']['available'],"
        " 'opt': rows['optimum-onnx']['available']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    # optimum-onnx is listed as unavailable (not broken) where transformers 5 is installed.
    assert result == {"heavy": [], "tf": True, "opt": optimum_unavailable() is None}


def test_path_source_is_staged_without_loading_weights(
    tiny_hf: Path, tmp_path: Path, count_weight_loads: dict[str, int]
) -> None:
    path = tmp_path / "m"
    flavorkit.package(model=str(tiny_hf), backend="transformers", path=path)
    assert count_weight_loads["n"] == 0
    staged = path / "artifacts" / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (staged / name).is_file(), name
    assert sha256_file(staged / "model.safetensors") == sha256_file(tiny_hf / "model.safetensors")
    reqs = (path / "requirements.txt").read_text().split()
    from importlib.metadata import version

    for dist in ("transformers", "torch", "accelerate"):
        # Pinned to the installed release, without a local label such as torch's "+cpu".
        assert f"{dist}=={Version(version(dist)).public}" in reqs
    assert not any(r.lower().startswith("torchvision") for r in reqs)


def test_pipeline_source(
    tiny_hf: Path, tmp_path: Path, tiny_tf: LoadedModel, count_weight_loads: dict[str, int]
) -> None:
    import mlflow
    import transformers
    from mlflow.models import Model

    pipe = transformers.pipeline("text-generation", model=str(tiny_hf))
    loads_for_pipeline = count_weight_loads["n"]
    path = tmp_path / "from-pipeline"
    flavorkit.package(model=pipe, backend="transformers", path=path, generation={"temperature": 0.0})
    assert count_weight_loads["n"] == loads_for_pipeline  # packaging saved the pipeline, it loaded nothing
    meta = Model.load(str(path)).metadata["flavorkit"]["backend_metadata"]
    assert meta["source"] == "pipeline"
    assert meta["model_type"] == "llama"
    model = mlflow.pyfunc.load_model(str(path))
    request = chat(PROMPTS[1], max_tokens=12)
    answer = model.predict(request)[0]
    assert answer["choices"] == tiny_tf.predict(request)[0]["choices"]
    assert answer["model"] == tiny_hf.name, "named after the pipeline's model, not the staging folder"


def test_subfolder_option(tiny_hf: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_hf, tmp_path / "repo" / "checkpoint")
    path = tmp_path / "m"
    flavorkit.package(
        model=str(tmp_path / "repo"), backend="transformers", path=path, options={"subfolder": "checkpoint"}
    )
    assert (path / "artifacts" / "model" / "model.safetensors").is_file()
    with pytest.raises(ModelSourceError, match="subfolder 'nope' does not exist"):
        flavorkit.package(
            model=str(tmp_path / "repo"), backend="transformers", path=tmp_path / "n", options={"subfolder": "nope"}
        )


def test_unusable_sources_fail_clearly(tiny_hf: Path, tmp_path: Path) -> None:
    def package(source: Any) -> None:
        flavorkit.package(model=source, backend="transformers", path=tmp_path / "out")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        package(empty)

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_hf / "config.json", no_weights)
    with pytest.raises(ModelSourceError, match="no weights found"):
        package(no_weights)

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_hf, truncated)
    data = (tiny_hf / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError, match="unreadable safetensors"):
        package(truncated)

    encoder = tmp_path / "encoder-decoder"
    encoder.mkdir()
    (encoder / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(ModelSourceError, match="not a causal language model"):
        package(encoder)

    with pytest.raises(ModelSourceError, match=f"no such folder: {tmp_path.resolve() / 'missing'}$"):
        package(tmp_path / "missing")
    with pytest.raises(ModelSourceError, match="not found in the local Hugging Face cache"):
        package("flavorkit-tests/not-a-cached-repo")
    with pytest.raises(ModelSourceError, match=r"transformers\.Pipeline"):
        package(42)
    assert not (tmp_path / "out").exists()


def _custom_code_checkpoint(tiny_hf: Path, dest: Path) -> Path:
    shutil.copytree(tiny_hf, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(
        model_type="flavorkit_custom_llama",
        architectures=["CustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    )
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\n\n"
        "class CustomConfig(LlamaConfig):\n"
        "    model_type = 'flavorkit_custom_llama'\n"
    )
    (dest / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\n"
        "from .configuration_custom import CustomConfig\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n"
        "    config_class = CustomConfig\n"
    )
    return dest


def test_remote_code_needs_explicit_trust(tiny_hf: Path, tmp_path: Path, tiny_tf: LoadedModel) -> None:
    source = _custom_code_checkpoint(tiny_hf, tmp_path / "custom")
    with pytest.raises(ModelSourceError) as info:
        flavorkit.package(model=str(source), backend="transformers", path=tmp_path / "refused")
    assert 'options={"trust_remote_code": True}' in str(info.value)
    assert "modeling_custom.CustomForCausalLM" in str(info.value)
    assert not (tmp_path / "refused").exists()

    path = tmp_path / "trusted"
    options = {"trust_remote_code": True}
    flavorkit.package(model=str(source), backend="transformers", path=path, options=options)
    staged = path / "artifacts" / "model"
    assert (staged / "modeling_custom.py").is_file()
    model = load_engine("transformers", staged, **options)
    assert type(model.handle.model).__name__ == "CustomForCausalLM"
    request = chat(PROMPTS[0], max_tokens=10)
    assert model.predict(request)[0]["choices"] == tiny_tf.predict(request)[0]["choices"]


def test_options_are_validated(tiny_hf: Path, tmp_path: Path) -> None:
    cases = {
        "options.torch_dtype": {"torch_dtype": "float8"},
        "options.device": {"device": "gpu0"},
        "options.max_batch_size": {"max_batch_size": 0},
        "options.batching": {"batching": "continuous"},
        "options.precision": {"precision": "int4"},
    }
    for field, options in cases.items():
        with pytest.raises(InvalidRequest) as info:
            flavorkit.package(model=str(tiny_hf), backend="transformers", path=tmp_path / "x", options=options)
        assert info.value.field == field
    schema = get_backend("transformers").option_model()
    assert schema is not None
    defaults = schema().model_dump()
    assert defaults["trust_remote_code"] is False
    assert defaults["device"] == "cpu"
    assert defaults["batching"] == "exact"


# -- streaming -------------------------------------------------------------------------------------


def test_pyfunc_stream_equals_predict(tiny_tf_dir: Path) -> None:
    import mlflow

    model = mlflow.pyfunc.load_model(str(tiny_tf_dir))
    for text in PROMPTS[:3]:
        request = chat(text, max_tokens=20)
        response = model.predict(request)[0]
        chunks = list(model.predict_stream(request))
        assert len(chunks) > 3  # streamed, not one final chunk
        assert joined(chunks) == content(response)
        assert chunks[-1]["choices"][0]["finish_reason"] == response["choices"][0]["finish_reason"]
        assert chunks[-1]["usage"] == response["usage"]


def test_generate_yields_one_delta_per_token(tiny_tf: LoadedModel) -> None:
    be, handle = tiny_tf.backend, tiny_tf.handle
    prompt = be.encode(handle, [{"role": "user", "content": PROMPTS[1]}])
    deltas = list(be.generate(handle, [GenerationRequest(prompt_ids=prompt, max_tokens=9)]))
    assert sum(d.tokens for d in deltas) == 9
    assert all(d.tokens == 1 for d in deltas if d.text == "" or d.finish_reason)
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["length"]
    ids = handle.token_ids(GenerationRequest(prompt_ids=prompt, max_tokens=9))
    assert len(ids) == 9
    expected = handle.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "".join(d.text for d in deltas) == expected


# -- batching --------------------------------------------------------------------------------------


def one_batch(model: LoadedModel) -> LoadedModel:
    """Batch every request together whatever its length, to test the padded batch itself.

    The default cost model keeps prompts of very different lengths apart (tests/runtime/test_length_batching.py).
    """
    from flavorkit_hf.engine import GPU_COST

    model.handle.cost = GPU_COST
    return model


def _batch_vs_single(model: LoadedModel, requests: list[dict[str, Any]]) -> None:
    one_batch(model)
    singles = [model.predict(r)[0] for r in requests]
    before = model.handle.stats["batches"]
    batch = model.predict(requests)
    for one, many in zip(singles, batch, strict=True):
        assert many["choices"] == one["choices"]
        assert many["usage"] == one["usage"]
    assert model.handle.stats["batches"] > before


def test_batch_equals_single_requests(tiny_tf: LoadedModel) -> None:
    requests = [chat(p, max_tokens=m) for p, m in zip(PROMPTS, [5, 24, 17, 24, 9], strict=True)]
    _batch_vs_single(tiny_tf, requests)


def test_exact_mode_replays_rows_alone_identically(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf)
    # Private knob, on purpose: a near tie cannot be produced on demand with random weights, and an
    # infinite tolerance (every greedy step is a near tie) is the only way to drive the replay path.
    model.handle.tie_tolerance = float("inf")
    requests = [chat(p, max_tokens=12) for p in PROMPTS[:4]]
    _batch_vs_single(model, requests)
    assert model.handle.stats["replays"] == len(requests)
    assert model.handle.stats["replay_mismatch"] == 0


def test_rows_leaving_a_batch_mid_way_are_finished_exactly(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf)
    handle = model.handle
    # Treat the 4th step of every row as a near tie: each row leaves the batch with 3 tokens already
    # emitted, which the single-request path must replay before it continues. Private knob, on
    # purpose: no public input makes a row leave mid-way at a chosen step.
    handle._near_tie = lambda row, logits: len(row.generated) == 3
    requests = [chat(p, max_tokens=14) for p in PROMPTS[:4]]
    _batch_vs_single(model, requests)
    assert handle.stats["replays"] == len(requests)
    assert handle.stats["replay_mismatch"] == 0


def test_generate_honours_cancellation_between_steps(tiny_tf: LoadedModel) -> None:
    be, handle = tiny_tf.backend, one_batch(tiny_tf).handle
    prompts = [be.encode(handle, [{"role": "user", "content": p}]) for p in PROMPTS[:3]]

    single = GenerationRequest(prompt_ids=prompts[0], max_tokens=30)
    before = handle.stats["forward"]
    seen = 0
    for _delta in be.generate(handle, [single]):
        seen += 1
        if seen == 2:
            single.cancelled = True
    assert seen == 2  # nothing after the cancellation, and the generator ended by itself
    assert handle.stats["forward"] - before == 2

    rows = [GenerationRequest(prompt_ids=p, max_tokens=30) for p in prompts]
    before = handle.stats["rows"]
    counts = [0, 0, 0]
    finishes: list[str | None] = [None, None, None]
    for delta in be.generate(handle, rows):
        counts[delta.index] += delta.tokens
        finishes[delta.index] = delta.finish_reason or finishes[delta.index]
        if delta.index == 1 and counts[1] == 2:
            rows[1].cancelled = True
    assert counts[1] == 2 and finishes[1] is None  # dropped silently, as the core expects
    assert counts[0] == counts[2] == 30 and finishes[0] == finishes[2] == "length"
    # The cancelled row left the batch: 2 rows computed per step instead of 3 after it.
    assert handle.stats["rows"] - before == 3 * 2 + 2 * 28


def test_batching_modes(tiny_hf: Path) -> None:
    requests = [chat(p, max_tokens=6) for p in PROMPTS[:3]]
    sequential = load_engine("transformers", tiny_hf, batching="sequential")
    sequential.predict(requests)
    assert sequential.handle.stats["batches"] == 0
    assert sequential.handle.stats["forward"] == 3 * 6

    padded = one_batch(load_engine("transformers", tiny_hf, batching="padded", max_batch_size=2))
    # Private knob: proves that padded mode ignores near ties, which no public input can force.
    padded.handle.tie_tolerance = float("inf")
    padded.predict(requests)
    assert padded.handle.stats["batches"] == 1  # groups of two: one batch and one single request
    assert padded.handle.stats["replays"] == 0

    half = load_engine("transformers", tiny_hf, torch_dtype="bfloat16")
    assert str(half.handle.model.dtype) == "torch.bfloat16"
    singles = [half.predict(r)[0]["choices"] for r in requests]
    assert [r["choices"] for r in half.predict(requests)] == singles
    assert half.handle.stats["batches"] == 0  # 16-bit drift cannot be bounded: exact decodes alone


def test_max_tokens_is_a_hard_limit_per_row(tiny_tf: LoadedModel) -> None:
    limits = [1, 4, 11]
    responses = tiny_tf.predict([chat(PROMPTS[i], max_tokens=m) for i, m in enumerate(limits)])
    for response, limit in zip(responses, limits, strict=True):
        used = response["usage"]["completion_tokens"]
        finish = response["choices"][0]["finish_reason"]
        assert used <= limit
        assert (finish == "length") == (used == limit)


def test_cancelled_requests_stop_decoding(tiny_tf: LoadedModel) -> None:
    full = content(tiny_tf.predict(chat(PROMPTS[1], max_tokens=40))[0])
    stop = full[:3]
    other = chat(PROMPTS[3], max_tokens=40)
    before = tiny_tf.handle.stats["rows"]
    alone = tiny_tf.predict(other)[0]["usage"]["completion_tokens"]
    rows_alone = tiny_tf.handle.stats["rows"] - before
    # In a batch with a longer request, so the core keeps reading the stream: only the core's
    # cancellation (not the stream being closed) can make the engine drop the stopped row.
    before = tiny_tf.handle.stats["rows"]
    stopped, kept = tiny_tf.predict([chat(PROMPTS[1], max_tokens=40, stop=[stop]), other])
    assert content(stopped) == ""
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert kept["usage"]["completion_tokens"] == alone
    assert tiny_tf.handle.stats["rows"] - before <= rows_alone + 4  # not + 40: the stopped row left the batch


def test_generation_never_touches_the_network(tiny_tf: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access during generation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    requests = [chat(PROMPTS[1], max_tokens=16, stop=["e", "\n"]), chat(PROMPTS[3], max_tokens=16, stop="the")]
    responses = tiny_tf.predict(requests)
    assert "e" not in content(responses[0]) and "\n" not in content(responses[0])
    assert "the" not in content(responses[1])
    chunks = list(tiny_tf.predict_stream(requests[1]))
    assert "the" not in joined(chunks)


# -- sampling --------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_honours_top_k_top_p(tiny_tf: LoadedModel) -> None:
    def sample(**settings: Any) -> str:
        return content(tiny_tf.predict(chat(PROMPTS[1], max_tokens=16, **settings))[0])

    seeded = sample(temperature=0.9, seed=11)
    assert sample(temperature=0.9, seed=11) == seeded
    assert sample(temperature=0.9, seed=12) != seeded
    batch = tiny_tf.predict(
        [
            chat(PROMPTS[0], max_tokens=16, temperature=0.9, seed=5),
            chat(PROMPTS[1], max_tokens=16, temperature=0.9, seed=11),
        ]
    )
    assert content(batch[1]) == seeded  # a row's seed does not depend on its batch neighbours

    greedy = sample(temperature=0.0)
    assert sample(temperature=1.5, top_k=1, seed=3) == greedy
    assert sample(temperature=1.5, top_p=1e-6, seed=3) == greedy

    response = tiny_tf.predict(chat(PROMPTS[1], max_tokens=16, temperature=1.0, n=3, seed=21))[0]
    texts = [content(response, i) for i in range(3)]
    assert len(set(texts)) > 1
    again = tiny_tf.predict(chat(PROMPTS[1], max_tokens=16, temperature=1.0, n=3, seed=21))[0]
    assert [content(again, i) for i in range(3)] == texts
