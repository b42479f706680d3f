"""Raw text-generation prompts (spec version 4): a prompt is continued exactly as given, never templated.

``text-generation`` (pyfunc ``{"prompt": ...}``) tokenizes the prompt with the backend's
``encode_text`` hook, as OpenAI's completions, vLLM and a hand-written MLflow wrapper do, so a prompt
that already holds a chat template's markers is not wrapped a second time. Models packaged before
(configuration version 1, no ``prompt_format``) keep wrapping the prompt in the chat template.
The references are the runtimes alone: onnxruntime-genai's and transformers' greedy continuations
of exactly the tokenized prompt.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

import flavorkit
from flavorkit.backend.registry import get_backend
from flavorkit.model.manifest import build_manifest, write_manifest
from flavorkit.runtime.loaded import LoadedModel
from helpers import content, raw_onnx_greedy_text
from stacks import optimum_param

#: The issue's example: a prompt written by hand in a (Phi-3 style) chat format, to be continued as is.
PHI3_PROMPT = "<|system|>You are a stand-up comedian.<|end|><|user|>Tell me a joke about atom<|end|><|assistant|>"
#: The same conversation in the tiny model's own (ChatML) format: what its template renders for MESSAGES.
MESSAGES = [
    {"role": "system", "content": "You are a stand-up comedian."},
    {"role": "user", "content": "Tell me a joke about atom"},
]
CHATML_PROMPT = (
    "<|im_start|>system\nYou are a stand-up comedian.<|im_end|>\n"
    "<|im_start|>user\nTell me a joke about atom<|im_end|>\n<|im_start|>assistant\n"
)
PLAIN = "Once upon a time"
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Path:
    """The tiny ORT model packaged for text-generation (greedy), with this flavorkit's defaults."""
    path = tmp_path_factory.mktemp("raw") / "tiny-text"
    flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=path, task="text-generation", generation={"temperature": 0.0}
    )
    return path


def _config(model: Path) -> dict[str, Any]:
    return yaml.safe_load((model / "MLmodel").read_text())["flavors"]["python_function"]["config"]  # type: ignore[no-any-return]


def test_text_generation_is_packaged_raw_and_chat_with_the_template(text_model: Path, tiny_model_dir: Path) -> None:
    assert _config(text_model)["config_version"] == 2
    assert _config(text_model)["prompt_format"] == "raw"
    assert _config(tiny_model_dir)["prompt_format"] == "chat_template"


@pytest.mark.parametrize("prompt", [PLAIN, CHATML_PROMPT, PHI3_PROMPT])
def test_the_answer_is_the_runtimes_greedy_continuation_of_exactly_the_prompt(
    text_model: Path, tiny_ort: Path, prompt: str
) -> None:
    model = mlflow.pyfunc.load_model(str(text_model))
    expected, _ended = raw_onnx_greedy_text(tiny_ort, prompt, MAX_TOKENS)
    assert model.predict({"prompt": prompt, "max_tokens": MAX_TOKENS}) == [expected]
    assert "".join(model.predict_stream({"prompt": prompt, "max_tokens": MAX_TOKENS})) == expected


def test_a_prompt_in_the_models_own_chat_format_answers_as_the_chat_model_does(
    text_model: Path, tiny_pyfunc: Any
) -> None:
    """Not templated twice: the hand-written ChatML prompt is exactly what the chat template renders."""
    text = mlflow.pyfunc.load_model(str(text_model)).predict({"prompt": CHATML_PROMPT, "max_tokens": MAX_TOKENS})[0]
    answer = tiny_pyfunc.predict({"messages": MESSAGES, "max_tokens": MAX_TOKENS})[0]
    assert text == content(answer)


@pytest.mark.parametrize("backend", ["onnx-cpu", "transformers", optimum_param()])
def test_encode_text_is_the_tokenizers_plain_encoding_not_the_template(
    backend: str, tiny_hf: Path, tiny_ort: Path
) -> None:
    from transformers import AutoTokenizer

    be = get_backend(backend)
    arts = {"model": str(tiny_ort if backend == "onnx-cpu" else tiny_hf)}
    if backend == "optimum-onnx":
        from flavorkit_hf.export import export_checkpoint

        arts = {"model": str(export_checkpoint(tiny_hf))}
    handle = be.load(arts, be.validate_options({}))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf))
        for prompt in (PLAIN, CHATML_PROMPT, PHI3_PROMPT):
            assert be.encode_text(handle, prompt) == tokenizer(prompt)["input_ids"], prompt
        # The model's template renders MESSAGES as CHATML_PROMPT: the same ids, whichever way they come.
        assert be.encode_text(handle, CHATML_PROMPT) == be.encode(handle, MESSAGES)
        # Wrapping the hand-written prompt in the template again (what text-generation did before spec 4)
        # puts a second set of markers around it.
        for prompt in (CHATML_PROMPT, PHI3_PROMPT):
            wrapped = be.encode(handle, [{"role": "user", "content": prompt}])
            raw = be.encode_text(handle, prompt)
            assert wrapped != raw and len(wrapped) > len(raw)
            assert tokenizer.decode(wrapped).startswith("<|im_start|>user\n" + prompt[:12])
    finally:
        be.unload(handle)


def test_transformers_continues_the_prompt_as_transformers_generate_does(tiny_hf: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    be = get_backend("transformers")
    model = LoadedModel(
        be,
        be.load({"model": str(tiny_hf)}, be.validate_options({})),
        task="text-generation",
        defaults={"temperature": 0},
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf))
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_hf))
    try:
        for prompt in (PLAIN, PHI3_PROMPT):
            ids = tokenizer(prompt, return_tensors="pt")
            with torch.no_grad():
                out = reference.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
            expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            assert model.predict({"prompt": prompt, "max_tokens": MAX_TOKENS}) == [expected], prompt
    finally:
        model.close()


def test_a_model_packaged_before_spec_4_keeps_templating_its_prompts(
    text_model: Path, tiny_pyfunc: Any, tmp_path: Path
) -> None:
    """Configuration version 1 has no prompt_format: its text-generation prompt is one user message, as before."""
    old = Path(shutil.copytree(text_model, tmp_path / "old"))
    mlmodel = yaml.safe_load((old / "MLmodel").read_text())
    config = mlmodel["flavors"]["python_function"]["config"]
    del config["prompt_format"]
    config["config_version"] = 1
    mlmodel["flavors"]["flavorkit"]["config_version"] = 1
    mlmodel["flavors"]["flavorkit"]["spec_version"] = 3
    del mlmodel["metadata"]["flavorkit"]["prompt_format"]
    (old / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    write_manifest(build_manifest(old), old)  # sealed as the packager sealed it: verification stays on

    model = mlflow.pyfunc.load_model(str(old))
    assert model.unwrap_python_model().loaded.raw_prompts is False
    prompt = "Tell me a joke about atom"
    templated = model.predict({"prompt": prompt, "max_tokens": MAX_TOKENS})
    chat = tiny_pyfunc.predict({"messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS})
    assert templated == [content(chat[0])]
    new = mlflow.pyfunc.load_model(str(text_model))
    assert new.unwrap_python_model().loaded.raw_prompts is True


def test_a_raw_prompt_counts_its_own_tokens_against_the_context(text_model: Path) -> None:
    from flavorkit.errors import InvalidRequest

    loaded = mlflow.pyfunc.load_model(str(text_model)).unwrap_python_model().loaded
    ids = loaded.backend.encode_text(loaded.handle, PLAIN)
    budget = loaded.info.context_length - len(ids)
    with pytest.raises(InvalidRequest) as exc:
        loaded.predict({"prompt": PLAIN, "max_tokens": budget + 1})
    assert exc.value.allowed == f"at most {budget} for this prompt"
    assert len(loaded.predict({"prompt": PLAIN, "max_tokens": 1})) == 1
