"""Version shims that keep both stacks working: the KV-cache keyword and the model builder's transformers.

The suite runs on transformers 4.57 with onnxruntime-genai 0.15.2 and on transformers 5 with
onnxruntime-genai 0.18 (DEVELOPERS.md, "Two stacks"); these tests pass on both.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from flavorkit.errors import BackendUnavailable
from flavorkit.types import GenerationRequest
from helpers import chat, content, load_engine
from plugin_fixtures import install, isolated_site
from stacks import transformers_major


def test_transformers_decodes_without_cache_deprecation_warnings(
    tiny_hf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """transformers 5 renamed ``past_key_values`` to ``cache`` and warns on the old name: the engine uses the new."""
    model = load_engine("transformers", tiny_hf)
    try:
        prompt = model.backend.encode(model.handle, [{"role": "user", "content": "hello there"}])
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            tokens = model.handle.token_ids(GenerationRequest(prompt_ids=prompt, max_tokens=6))
            batch = model.predict([chat("one", max_tokens=4), chat("a longer second prompt", max_tokens=4)])
        assert len(tokens) >= 1 and len(batch) == 2 and all(isinstance(content(a), str) for a in batch)
        noise = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
        assert [m for m in noise if "past_key_values" in m or "cache_params" in m] == []
        assert model.handle.cache_argument == ("cache" if transformers_major() >= 5 else "past_key_values")
    finally:
        model.close()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    yield from isolated_site(tmp_path, monkeypatch, [])


def test_a_0_16_builder_with_transformers_4_is_refused_with_the_fix(
    tiny_hf: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 0.16+ model builder imports transformers 5 classes: refused before any conversion, with both fixes."""
    from flavorkit_onnxgenai.convert import builder_problem, convert_checkpoint

    monkeypatch.setenv("FLAVORKIT_CACHE", str(site / "cache"))
    install(site, monkeypatch, "onnxruntime-genai", modules={}, version="0.18.0")
    install(site, monkeypatch, "transformers", modules={}, version="4.57.6")
    assert builder_problem() == (
        "the model builder of onnxruntime-genai 0.18.0 needs transformers 5 (installed: 4.57.6)",
        "pip install 'transformers>=5'  (or, to stay on transformers 4: pip install 'onnxruntime-genai==0.15.2')",
    )
    with pytest.raises(BackendUnavailable) as exc:
        convert_checkpoint(tiny_hf, precision="fp32")
    assert exc.value.name == "onnx"
    assert exc.value.install_hint is not None and exc.value.install_hint.startswith("pip install 'transformers>=5'")
    assert not (site / "cache").exists()


@pytest.mark.parametrize(("builder", "transformers"), [("0.15.2", "4.57.6"), ("0.18.0", "5.24.0")])
def test_the_tested_builder_pairings_run(
    site: Path, monkeypatch: pytest.MonkeyPatch, builder: str, transformers: str
) -> None:
    from flavorkit_onnxgenai.convert import builder_problem

    install(site, monkeypatch, "onnxruntime-genai", modules={}, version=builder)
    install(site, monkeypatch, "transformers", modules={}, version=transformers)
    assert builder_problem() is None
