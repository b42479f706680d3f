"""One contract for ``onnx-cpu``, ``transformers`` and ``optimum-onnx``, checked on SmolLM2-135M-Instruct.

(Plus a tiny GPT-2, whose learned absolute positions make any position-id mistake in padded
batches visible, which RoPE models like Llama hide: a constant position shift leaves RoPE's
attention scores unchanged.)

The same checkpoint feeds all three: transformers directly, Optimum's ONNX export (fp32, made once
per session and cached) and onnxruntime-genai int4 (the ``smollm2_ort`` fixture). Prompts must
tokenize identically everywhere; transformers and Optimum (both fp32) must agree token for token;
every backend must stream exactly what it returns, batch exactly what it decodes alone, and never
emit a stop string.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

import flavorkit
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.types import GenerationRequest
from helpers import content
from stacks import needs_optimum, optimum_param, optimum_unavailable

pytestmark = pytest.mark.slow

# optimum-onnx skips where it cannot run (transformers 5: tests/stacks.py); the others are compared there.
BACKENDS = ("transformers", optimum_param(), "onnx-cpu")
HF_BACKENDS = ("transformers", optimum_param())

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of Spain?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three prime numbers."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
    [{"role": "user", "content": "Translate 'good morning' into French, Spanish and German."}],
    [{"role": "user", "content": "Say 'café', 'Zürich' and 'naïve', then write Japan in Japanese (日本) and add 🙂."}],
]
UNICODE = CONVERSATIONS[4]


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 (learned absolute position embeddings) with the tiny ChatML tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf))
    tokenizer.save_pretrained(str(out))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    torch.manual_seed(99)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_hf: Path) -> Path:
    """SmolLM2 exported once by Optimum (fp32, with past key values), cached by content."""
    from flavorkit_hf.export import export_checkpoint

    return export_checkpoint(smollm2_hf)


@pytest.fixture(scope="module")
def models(
    request: pytest.FixtureRequest, smollm2_hf: Path, smollm2_ort: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """SmolLM2 packaged with each backend that can run here (greedy by default), loaded back through mlflow.pyfunc."""
    import mlflow

    root = tmp_path_factory.mktemp("smollm2")
    sources = {"transformers": smollm2_hf, "onnx-cpu": smollm2_ort}
    if optimum_unavailable() is None:
        request.getfixturevalue("smollm2_onnx")  # the export, cached by content
        sources["optimum-onnx"] = smollm2_hf
    loaded = {}
    for backend, source in sources.items():
        path = root / backend
        flavorkit.package(
            model=str(source),
            backend=backend,
            path=path,
            generation={"temperature": 0.0, "max_tokens": 48},
            model_name="SmolLM2-135M-Instruct",
        )
        loaded[backend] = mlflow.pyfunc.load_model(str(path))
    return loaded


def core(model: Any) -> LoadedModel:
    """The flavorkit LoadedModel behind a pyfunc model (backend, handle)."""
    inner = model.unwrap_python_model().loaded
    assert isinstance(inner, LoadedModel)
    return inner


@contextlib.contextmanager
def one_batch(model: Any) -> Iterator[Any]:
    """Batch every request together whatever its length, to test the padded batch itself.

    The default cost model keeps prompts of very different lengths apart (tests/runtime/test_length_batching.py).
    """
    from flavorkit_hf.engine import GPU_COST

    handle = core(model).handle
    planned, handle.cost = handle.cost, GPU_COST
    try:
        yield model
    finally:
        handle.cost = planned


def stream_pieces(model: Any, request: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    chunks = list(model.predict_stream(request))
    return [c["choices"][0]["delta"].get("content", "") for c in chunks], chunks


def all_equal(values: dict[str, Any]) -> bool:
    """Every backend's value equals the transformers backend's (which every stack has)."""
    return all(value == values["transformers"] for value in values.values())


def test_same_signature_response_shape_and_errors(models: dict[str, Any]) -> None:
    signatures = {b: m.metadata.get_input_schema().to_dict() for b, m in models.items()}
    assert all_equal(signatures)
    outputs = {b: m.metadata.get_output_schema().to_dict() for b, m in models.items()}
    assert all_equal(outputs)

    request = {"messages": CONVERSATIONS[0], "max_tokens": 4}
    shapes = set()
    for model in models.values():
        response = model.predict(request)[0]
        shapes.add((tuple(sorted(response)), tuple(sorted(response["choices"][0])), tuple(sorted(response["usage"]))))
        assert response["model"] == "SmolLM2-135M-Instruct"
    assert len(shapes) == 1

    bad = [
        ({"messages": []}, "messages"),
        # -1.0, not -1: MLflow's schema refuses an int for a double column before flavorkit sees it.
        ({"messages": CONVERSATIONS[0], "temperature": -1.0}, "temperature"),
        ({"messages": CONVERSATIONS[0], "max_tokens": 100_000}, "max_tokens"),
        ({"messages": CONVERSATIONS[0], "n": 0}, "n"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ]
    for request, field in bad:
        errors = set()
        for model in models.values():
            with pytest.raises(MlflowException) as info:
                model.predict(request)
            assert info.value.error_code == "INVALID_PARAMETER_VALUE"
            assert f"invalid request: field {field!r}: " in info.value.message
            errors.add(info.value.message)
        assert len(errors) == 1, errors


def test_prompt_token_ids_identical_across_backends(models: dict[str, Any]) -> None:
    for messages in CONVERSATIONS:
        ids = {b: core(m).backend.encode(core(m).handle, messages) for b, m in models.items()}
        assert all_equal(ids), messages
        opener = core(models["transformers"]).handle.tokenizer.encode("<|im_start|>assistant\n")
        assert ids["transformers"][-len(opener) :] == opener  # ends with the generation prompt


@needs_optimum
def test_fp32_transformers_and_optimum_agree_on_first_20_tokens(models: dict[str, Any]) -> None:
    tf, opt = core(models["transformers"]), core(models["optimum-onnx"])
    for messages in CONVERSATIONS:
        prompt = tf.backend.encode(tf.handle, messages)
        request = GenerationRequest(prompt_ids=prompt, max_tokens=20)
        tokens = tf.handle.token_ids(request)
        assert len(tokens) >= 5
        assert opt.handle.token_ids(request) == tokens, messages


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_equals_predict_with_multibyte_text(models: dict[str, Any], backend: str) -> None:
    model = models[backend]
    request = {"messages": UNICODE, "max_tokens": 48}
    response = model.predict(request)[0]
    pieces, chunks = stream_pieces(model, request)
    assert "".join(pieces) == content(response)
    assert len([p for p in pieces if p]) > 5
    assert any(ord(ch) > 0x7F for ch in content(response))  # premise: the answer has multi-byte characters
    # No half character is streamed; only a character cut by max_tokens ends the answer, as U+FFFD.
    assert "\ufffd" not in "".join(pieces).rstrip("\ufffd")
    if content(response).endswith("\ufffd"):
        assert response["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == response["usage"]
    assert chunks[-1]["choices"][0]["finish_reason"] == response["choices"][0]["finish_reason"]


@pytest.mark.parametrize("backend", HF_BACKENDS)
def test_multibyte_characters_split_over_tokens_stream_cleanly(models: dict[str, Any], backend: str) -> None:
    loaded = core(models[backend])
    tokenizer = loaded.handle.tokenizer
    # The answer's token ids, replayed through the backend's own detokenizer, one token at a time.
    prompt = loaded.backend.encode(loaded.handle, UNICODE)
    ids = loaded.handle.token_ids(GenerationRequest(prompt_ids=prompt, max_tokens=48))
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    split = [t for t in ids if "\ufffd" in tokenizer.decode([t])]
    assert split, f"premise: the answer {text!r} should contain a character spread over several tokens"
    deltas = list(loaded.backend.generate(loaded.handle, [GenerationRequest(prompt_ids=prompt, max_tokens=48)]))
    assert "".join(d.text for d in deltas) == text
    assert all("\ufffd" not in d.text for d in deltas)


@pytest.mark.parametrize("backend", HF_BACKENDS)
def test_end_of_sequence_is_one_silent_token(models: dict[str, Any], backend: str) -> None:
    loaded = core(models[backend])
    messages = CONVERSATIONS[0]
    prompt = loaded.backend.encode(loaded.handle, messages)
    deltas = list(loaded.backend.generate(loaded.handle, [GenerationRequest(prompt_ids=prompt, max_tokens=40)]))
    last = deltas[-1]
    assert (last.text, last.tokens, last.finish_reason) == ("", 1, "stop")
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert all(d.tokens == 1 for d in deltas)  # no held-back text to flush in a plain ASCII answer
    text = "".join(d.text for d in deltas)
    assert text.strip() and "<|" not in text  # answered, and no special token leaked as text
    response = models[backend].predict({"messages": messages})
    assert response[0]["usage"]["completion_tokens"] == len(deltas)
    assert response[0]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_string_straddling_chunks_is_never_emitted(models: dict[str, Any], backend: str) -> None:
    model = models[backend]
    request = {"messages": CONVERSATIONS[3], "max_tokens": 40}
    full = content(model.predict(request)[0])
    pieces, _chunks = stream_pieces(model, request)
    # A stop string made of the end of one chunk and the start of the next.
    start = 0
    stop = ""
    for i in range(1, len(pieces) - 1):
        start += len(pieces[i - 1])
        left, right = pieces[i - 1].strip(), pieces[i].strip()
        if len(left) >= 2 and len(right) >= 2:
            candidate = pieces[i - 1][-2:] + pieces[i][:2]
            if full.find(candidate) == start - 2:
                stop = candidate
                break
    assert stop, pieces
    cut = full[: full.index(stop)]
    pieces, chunks = stream_pieces(model, {**request, "stop": [stop]})
    assert all(stop not in p for p in pieces)
    assert "".join(pieces) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    response = model.predict({**request, "stop": stop})[0]
    assert content(response) == cut and stop not in content(response)


@pytest.mark.parametrize("backend", HF_BACKENDS)
def test_batch_equals_single_requests(models: dict[str, Any], backend: str) -> None:
    with one_batch(models[backend]) as model:
        _batch_equals_single_requests(model, backend)


def _batch_equals_single_requests(model: Any, backend: str) -> None:
    requests = [{"messages": m, "max_tokens": 24} for m in CONVERSATIONS]
    started = time.perf_counter()
    singles = [model.predict(r)[0] for r in requests]
    sequential = time.perf_counter() - started
    stats = core(model).handle.stats
    before = stats["batches"]
    started = time.perf_counter()
    batch = model.predict(requests)
    batched = time.perf_counter() - started
    for one, many in zip(singles, batch, strict=True):
        assert many["choices"] == one["choices"]
        assert many["usage"] == one["usage"]
    assert stats["batches"] == before + 1
    assert stats["replay_mismatch"] == 0
    print(f"{backend}: 5 requests x 24 tokens: sequential {sequential:.2f}s, batched {batched:.2f}s")


@pytest.mark.parametrize("backend", HF_BACKENDS)
def test_absolute_positions_batch_exactly(tiny_gpt2: Path, tmp_path: Path, backend: str) -> None:
    import mlflow

    path = tmp_path / backend
    flavorkit.package(model=str(tiny_gpt2), backend=backend, path=path, generation={"temperature": 0.0})
    texts = ["Hi", "Summarise: packaging a model means writing everything down.", "7", "café, Zürich, 日本 🙂 and more"]
    requests = [{"messages": [{"role": "user", "content": t}], "max_tokens": 16} for t in texts]
    with one_batch(mlflow.pyfunc.load_model(str(path))) as model:
        singles = [model.predict(r)[0] for r in requests]
        assert len({content(r) for r in singles}) == len(texts)
        batch = model.predict(requests)
        for one, many in zip(singles, batch, strict=True):
            assert many["choices"] == one["choices"]
            assert many["usage"] == one["usage"]
        assert core(model).handle.stats["batches"] == 1
