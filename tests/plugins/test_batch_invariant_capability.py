"""Which options of the first-party backends declare ``batch_invariant`` (spec 5's ``capabilities(options)``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flavorkit.backend.registry import get_registry
from flavorkit.types import Capability


@pytest.mark.parametrize(
    ("backend", "batching", "declared"),
    [
        ("onnx-cpu", None, True),
        ("onnx-cpu", "exact", True),
        ("onnx-cpu", "sequential", True),
        ("onnx-cpu", "auto", False),
        ("transformers", None, True),
        ("transformers", "exact", True),
        ("transformers", "sequential", True),
        ("transformers", "padded", False),
    ],
)
def test_batch_invariant_follows_the_batching_option(backend: str, batching: str | None, declared: bool) -> None:
    entry = get_registry().get(backend)
    options = entry.validate_options({} if batching is None else {"batching": batching})
    assert (Capability.BATCH_INVARIANT in entry.capabilities(options)) is declared
    assert Capability.BATCHING in entry.capabilities(options)


def test_listing_and_old_models_options() -> None:
    """No options (listing backends): the defaults; stored options without ``batching``: an old model's ``auto``."""
    onnx = get_registry().get("onnx-cpu")
    assert Capability.BATCH_INVARIANT in onnx.capabilities()
    assert Capability.BATCH_INVARIANT not in onnx.capabilities({"precision": "int4"})


@pytest.mark.parametrize(("batching", "declared"), [("auto", False), ("exact", True)])
def test_a_loaded_model_declares_what_its_packaged_options_give(
    tiny_ort: Path, tmp_path: Path, batching: str, declared: bool
) -> None:
    import mlflow

    import flavorkit

    flavorkit.package(model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", options={"batching": batching})
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "m")).unwrap_python_model()._model
    assert (Capability.BATCH_INVARIANT in loaded.capabilities) is declared
