"""A graph ONNX Runtime would refuse is caught at packaging, with the cause, not at load time.

Found on an H100: the model builders of onnxruntime-genai 0.15.2 and 0.18.0 write an ``fp32``
model for ``cuda`` whose graph declares ``present.*`` outputs that no node produces, and ONNX
Runtime refuses to load it ("Graph output (present.0.key) does not exist in the graph"). The
builder runs on the CPU, so both cases are tested here on both stacks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import flavorkit
from flavorkit.errors import ModelSourceError, PackagingError


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty flavorkit cache, so what a failed conversion leaves behind can be listed."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLAVORKIT_CACHE", str(cache))
    return cache


def test_the_builders_fp32_cuda_model_is_refused_naming_precision_outputs_and_fix(
    tiny_hf: Path, private_cache: Path
) -> None:
    from flavorkit_onnxgenai.convert import convert_checkpoint

    with pytest.raises(PackagingError) as info:
        convert_checkpoint(tiny_hf, precision="fp32", execution_provider="cuda")
    message = str(info.value)
    assert "wrote an invalid model for precision 'fp32' on 'cuda'" in message
    assert "(present.0.key, present.1.key, present.0.value, present.1.value)" in message
    assert "on cuda: 'fp16' or 'int4'" in message
    # Nothing is cached: the next packaging runs the builder again rather than serve the bad graph.
    assert [p.name for p in (private_cache / "onnx-genai").iterdir() if not p.name.startswith(".")] == []


def test_the_builders_fp16_cuda_model_is_sound(tiny_hf: Path, private_cache: Path) -> None:
    from flavorkit_onnxgenai.convert import convert_checkpoint, unproduced_outputs

    folder = convert_checkpoint(tiny_hf, precision="fp16", execution_provider="cuda")
    assert unproduced_outputs(folder) == []


def _with_bogus_output(source: Path, target: Path) -> Path:
    """A copy of an ORT-genai folder whose graph declares one more output, ``bogus``, that nothing produces."""
    import onnx

    shutil.copytree(source, target)
    model = onnx.load(str(target / "model.onnx"), load_external_data=False)
    model.graph.output.append(onnx.helper.make_tensor_value_info("bogus", onnx.TensorProto.FLOAT, [1]))
    onnx.save(model, str(target / "model.onnx"))
    return target


def test_unproduced_outputs_names_exactly_the_dangling_ones(tiny_ort: Path, tmp_path: Path) -> None:
    from flavorkit_onnxgenai.convert import unproduced_outputs

    assert unproduced_outputs(tiny_ort) == []
    assert unproduced_outputs(_with_bogus_output(tiny_ort, tmp_path / "bad")) == ["bogus"]


def test_a_prebuilt_folder_onnx_runtime_refuses_loads_as_a_model_source_error(tiny_ort: Path, tmp_path: Path) -> None:
    import mlflow

    # Packaging does not load the model (a cuda model may be packaged on a machine without a GPU);
    # loading it names the model file's problem instead of calling the backend unavailable.
    info = flavorkit.package(
        model=str(_with_bogus_output(tiny_ort, tmp_path / "bad")), backend="onnx-cpu", path=tmp_path / "m"
    )
    with pytest.raises(ModelSourceError) as raised:
        mlflow.pyfunc.load_model(info.model_uri)
    message = str(raised.value)
    assert message.startswith(f"model source {tmp_path / 'm' / 'artifacts'}/")
    assert ": ONNX Runtime cannot load its model file: Load model from " in message
    assert "Graph output (bogus) does not exist in the graph" in message


def test_a_bad_build_cached_before_the_check_existed_is_refused_too(
    tiny_hf: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flavorkit_onnxgenai import convert

    # An older flavorkit cached the builder's output unchecked: stand that in by switching the check off.
    with monkeypatch.context() as m:
        m.setattr(convert, "unproduced_outputs", lambda folder: [])
        stale = convert.convert_checkpoint(tiny_hf, precision="fp32", execution_provider="cuda")
    assert (stale / "genai_config.json").is_file()
    with pytest.raises(PackagingError, match=r"wrote an invalid model for precision 'fp32' on 'cuda'"):
        convert.convert_checkpoint(tiny_hf, precision="fp32", execution_provider="cuda")


@pytest.mark.parametrize(
    ("message", "defect"),
    [
        ("Load model from m.onnx failed:graph.cc:1617 This is an invalid model. Graph output (x) does not exist", True),
        ("Load model from m.onnx failed:This is an invalid model. In Node, Error No Op registered for Foo", False),
        ("Load model from m.onnx failed:Unsupported model IR version: 11, max supported IR version: 10", False),
        ("Load model from m.onnx failed:This is an invalid model. opset 25 is under development", False),
        ("Failed to load library libonnxruntime_providers_cuda.so", False),
    ],
)
def test_only_a_malformed_graph_blames_the_folder(message: str, defect: bool) -> None:
    """A runtime older than the model (operator, IR version, opset) stays 'backend unavailable'."""
    from flavorkit_onnxgenai.runtime import _graph_defect

    assert _graph_defect(message) is defect
