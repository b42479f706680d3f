"""One tokenizer loader for both Hugging Face backends: packaging checks and model loading fail alike.

A checkpoint whose tokenizer cannot be loaded is a :class:`ModelSourceError` naming the folder and
the tokenizer, whether it is found while packaging (``transformers``: the checkpoint check;
``optimum-onnx``: the export check) or while loading a packaged model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import flavorkit
from flavorkit.errors import ModelSourceError
from stacks import needs_optimum


@pytest.fixture
def broken_tokenizer(tiny_hf: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint with an unreadable tokenizer.json."""
    folder = tmp_path / "broken"
    shutil.copytree(tiny_hf, folder)
    (folder / "tokenizer.json").write_text("{ this is not a tokenizer", encoding="utf-8")
    return folder


def test_load_tokenizer_names_the_folder(broken_tokenizer: Path, tiny_hf: Path) -> None:
    from flavorkit_hf.common import load_tokenizer

    assert load_tokenizer(tiny_hf, trust_remote_code=False).convert_tokens_to_ids("<|im_end|>") > 0
    with pytest.raises(ModelSourceError, match="the tokenizer cannot be loaded") as info:
        load_tokenizer(broken_tokenizer, trust_remote_code=False)
    assert info.value.source == broken_tokenizer


def test_packaging_a_checkpoint_with_a_broken_tokenizer_fails_before_writing(
    broken_tokenizer: Path, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    with pytest.raises(ModelSourceError, match="the tokenizer cannot be loaded"):
        flavorkit.package(model=str(broken_tokenizer), backend="transformers", path=out)
    assert not out.exists()


def test_loading_a_checkpoint_with_a_broken_tokenizer_fails_alike(broken_tokenizer: Path) -> None:
    from flavorkit_hf.runtime import load_transformers

    with pytest.raises(ModelSourceError, match="the tokenizer cannot be loaded") as info:
        load_transformers(str(broken_tokenizer), {})
    assert str(broken_tokenizer) in str(info.value)


@needs_optimum
def test_packaging_an_onnx_export_with_a_broken_tokenizer_fails_before_writing(tiny_hf: Path, tmp_path: Path) -> None:
    from flavorkit_hf.export import export_checkpoint

    folder = tmp_path / "export"
    shutil.copytree(export_checkpoint(tiny_hf), folder)
    (folder / "tokenizer.json").write_text("{ this is not a tokenizer", encoding="utf-8")
    out = tmp_path / "model"
    with pytest.raises(ModelSourceError, match="the tokenizer cannot be loaded") as info:
        flavorkit.package(model=str(folder), backend="optimum-onnx", path=out)
    assert str(folder) in str(info.value)
    assert not out.exists()
