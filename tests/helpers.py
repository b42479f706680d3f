"""Small request/response helpers shared by the test modules."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flavorkit.backend.registry import get_backend
from flavorkit.runtime.loaded import BatchEvent, LoadedModel, PreparedRequest

#: The example third-party backend's project folder.
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flavorkit-llamacpp"


def require_example_backend() -> None:
    """Skip the calling test module unless the example backend is installed (CI must have it)."""
    if importlib.util.find_spec("flavorkit_llamacpp") is None:
        hint = f'CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install -e {EXAMPLE}'
        if os.environ.get("CI"):
            raise RuntimeError(f"CI must install the example backend ({hint}); `make venv` does")
        pytest.skip(f"the example backend is not installed: {hint}", allow_module_level=True)


def check_events(prepared: Sequence[PreparedRequest], keys: Sequence[int], events: Sequence[BatchEvent]) -> None:
    """Assert that the events of each request (by key) carry exactly its text, finish reasons and tokens."""
    for key, p in zip(keys, prepared, strict=True):
        for j in range(p.n):
            mine = [e for e in events if e.request == key and e.choice == j]
            assert "".join(e.text for e in mine) == p.texts()[j]
            assert [e.finish_reason for e in mine if e.finish_reason] == [p.finish_reasons()[j]]
        assert sum(e.tokens for e in events if e.request == key) == p.usage()["completion_tokens"]


#: Prompts of different lengths and scripts, for batch and streaming tests.
PROMPTS = [
    "Hi",
    "Summarise: packaging a model means writing down everything needed to run it again.",
    "Unicode: café, Zürich, 日本 🙂",
    "Tell me about batching and streaming in two short sentences, please.",
    "7",
]


def chat(text: str, **settings: Any) -> dict[str, Any]:
    """A one-message chat request with optional generation settings."""
    return {"messages": [{"role": "user", "content": text}], **settings}


#: Requests with different settings (n, stop strings, a seeded sample, max_tokens=1) that must not
#: disturb each other when they share a batch or join a running one.
MIXED_REQUESTS: list[dict[str, Any]] = [
    chat("Hi", max_tokens=12),
    chat("Summarise: packaging a model.", max_tokens=5, n=2),
    chat("Unicode: café, Zürich", max_tokens=20, stop=["e"]),
    chat("7", max_tokens=30, temperature=0.8, seed=3),
    chat("Tell me about batching.", max_tokens=1),
]


def content(response: dict[str, Any], i: int = 0) -> str:
    """The text of choice ``i`` of a chat completion."""
    return str(response["choices"][i]["message"]["content"])


def joined(chunks: list[dict[str, Any]]) -> str:
    """The text of a list of chat.completion.chunk dicts, concatenated."""
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def load_engine(backend: str, folder: Path, **options: Any) -> LoadedModel:
    """A backend handle wrapped in the core contract, as a packaged model would be (minus MLflow)."""
    be = get_backend(backend)
    handle = be.load({"model": str(folder)}, be.validate_options(options))
    return LoadedModel(be, handle, defaults={"temperature": 0.0})


def require_java(what: str) -> None:
    """Skip (an error under CI=1) unless a Java runtime is found: ``what`` (Spark, pyspark) needs Java 17."""
    import shutil

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        if os.environ.get("CI"):
            raise RuntimeError("CI must have a Java runtime (17) for the pyspark tests")
        pytest.skip(f"no Java runtime: {what} needs Java 17")


def raw_onnx_greedy(folder: Path, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, bool]:
    """onnxruntime-genai alone, no flavorkit: the greedy answer to ``messages`` and whether EOS ended it.

    The reference for the SmolLM2 tests: what a 135M int4 model answers depends on the CPU's kernels
    (one machine says "Madrid", another "El Salvador"), but the wrapper must give exactly the raw answer.
    """
    return _raw_onnx(folder, max_tokens, messages=messages)


def raw_onnx_greedy_text(folder: Path, text: str, max_tokens: int) -> tuple[str, bool]:
    """onnxruntime-genai alone: the greedy continuation of ``tokenizer.encode(text)`` (no template); EOS flag."""
    return _raw_onnx(folder, max_tokens, text=text)


def _raw_onnx(
    folder: Path, max_tokens: int, *, messages: list[dict[str, str]] | None = None, text: str | None = None
) -> tuple[str, bool]:
    import json

    import onnxruntime_genai as og

    from flavorkit_onnxgenai.runtime import set_cpu_threads

    config = og.Config(str(folder))
    set_cpu_threads(config)  # as the onnx backends do: int4 kernels may round differently with other threads
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    if text is None:
        text = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    ids = tokenizer.encode(text)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    eos_ids = json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"]
    eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
    stream = tokenizer.create_stream()
    pieces: list[str] = []
    ended = False
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        if token in eos:
            ended = True
            break
        pieces.append(stream.decode(token))
    return "".join(pieces), ended
