"""The hook spec's rule for a model without a chat template, on every first-party backend.

Packaging it for chat is refused (``artifacts`` raises ``ModelSourceError`` naming ``chat_template``
and the fix), before any conversion; a handle loaded from such a folder anyway refuses to encode
(``BackendError``) instead of inventing a prompt format. A base model without a template packages
for ``text-generation`` (spec version 4), whose prompts are plain text (``encode_text``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest

import flavorkit
from flavorkit.backend.registry import get_backend
from flavorkit.errors import BackendError, ModelSourceError
from helpers import raw_onnx_greedy_text
from stacks import needs_optimum, optimum_param

MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store."""


def without_template(folder: Path, dest: Path) -> Path:
    """A copy of a model folder with its chat template removed from every tokenizer file."""
    shutil.copytree(folder, dest)
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    (dest / "chat_template.json").unlink(missing_ok=True)
    config = dest / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data.pop("chat_template", None)
    config.write_text(json.dumps(data), encoding="utf-8")
    return dest


def assert_refused(exc: ModelSourceError, source: Path) -> None:
    text = str(exc)
    assert exc.source == source
    assert "chat_template" in text and "no chat template" in text
    assert "chat_template.jinja" in text and "instruction-tuned" in text, text


@pytest.fixture(scope="module")
def bare_hf(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return without_template(tiny_hf, tmp_path_factory.mktemp("bare") / "tiny-no-template")


@pytest.fixture(scope="module")
def bare_ort(tiny_ort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return without_template(tiny_ort, tmp_path_factory.mktemp("bare") / "ort-no-template")


@pytest.mark.parametrize("backend", ["transformers", optimum_param(), "onnx-cpu"])
def test_a_checkpoint_without_a_chat_template_is_refused_before_any_conversion(
    backend: str, bare_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("FLAVORKIT_CACHE", str(cache))  # a conversion would be cached here
    with pytest.raises(ModelSourceError) as info:
        get_backend(backend).artifacts(str(bare_hf), get_backend(backend).validate_options({}), str(work))
    assert_refused(info.value, bare_hf)
    assert not cache.exists() and list(work.iterdir()) == [], "nothing was converted or staged"


def test_an_ort_genai_folder_without_a_chat_template_is_refused(bare_ort: Path, tmp_path: Path) -> None:
    backend = get_backend("onnx-cpu")
    with pytest.raises(ModelSourceError) as info:
        backend.artifacts(str(bare_ort), backend.validate_options({}), str(tmp_path))
    assert_refused(info.value, bare_ort)


@needs_optimum
def test_an_optimum_export_without_a_chat_template_is_refused(tiny_hf: Path, tmp_path: Path) -> None:
    from flavorkit_hf.export import export_checkpoint

    bare = without_template(export_checkpoint(tiny_hf), tmp_path / "export-no-template")
    backend = get_backend("optimum-onnx")
    with pytest.raises(ModelSourceError) as info:
        backend.artifacts(str(bare), backend.validate_options({}), str(tmp_path / "work"))
    assert_refused(info.value, bare)


def test_the_template_in_tokenizer_config_alone_is_enough(tiny_hf: Path, tmp_path: Path) -> None:
    source = without_template(tiny_hf, tmp_path / "config-template")
    template = (tiny_hf / "chat_template.jinja").read_text(encoding="utf-8")
    config = source / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "chat_template": template}), encoding="utf-8")
    backend = get_backend("transformers")
    arts = backend.artifacts(str(source), backend.validate_options({}), str(tmp_path / "work"))
    assert arts.metadata["chat_template"] is True


@pytest.mark.parametrize(("backend", "fixture"), [("onnx-cpu", "bare_ort"), ("transformers", "bare_hf")])
def test_a_handle_without_a_chat_template_refuses_to_encode(
    backend: str, fixture: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    be = get_backend(backend)
    handle = be.load({"model": str(folder)}, be.validate_options({}))
    try:
        with pytest.raises(BackendError, match="has no chat template, so chat messages cannot be turned into a prompt"):
            be.encode(handle, MESSAGES)
    finally:
        be.unload(handle)


@pytest.mark.parametrize(("backend", "fixture"), [("onnx-cpu", "bare_ort"), ("transformers", "bare_hf")])
def test_a_base_model_without_a_template_packages_for_text_generation_and_is_refused_for_chat(
    backend: str, fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    with pytest.raises(ModelSourceError) as info:
        flavorkit.package(model=str(folder), backend=backend, path=tmp_path / "chat")
    assert_refused(info.value, folder)
    assert not (tmp_path / "chat").exists()

    flavorkit.package(
        model=str(folder),
        backend=backend,
        path=tmp_path / "text",
        task="text-generation",
        generation={"temperature": 0},
    )
    model = mlflow.pyfunc.load_model(str(tmp_path / "text"))
    answer = model.predict({"prompt": "Once upon a time", "max_tokens": 8})
    assert len(answer) == 1 and isinstance(answer[0], str)
    if backend == "onnx-cpu":
        assert answer == [raw_onnx_greedy_text(folder, "Once upon a time", 8)[0]]


@pytest.mark.parametrize("backend", ["transformers", optimum_param(), "onnx-cpu"])
def test_artifacts_for_text_generation_accept_a_checkpoint_without_a_template(
    backend: str, bare_hf: Path, tmp_path: Path
) -> None:
    be = get_backend(backend)
    arts = be.artifacts(str(bare_hf), be.validate_options({}), str(tmp_path), "text-generation")
    assert arts.files["model"]
