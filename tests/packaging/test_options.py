"""Backend options that reach the runtime, and Hub ids resolved from a local Hugging Face cache.

Every option here is checked by its effect on the loaded runtime (the og handle, the torch model,
the onnxruntime session), not only by its acceptance. Hub ids are served offline from a minimal
cache laid out as huggingface_hub writes it (``models--owner--name/refs`` and ``snapshots``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

import flavorkit
from flavorkit.backend.registry import get_backend
from flavorkit.errors import InvalidRequest, ModelSourceError
from flavorkit.runtime.loaded import LoadedModel
from helpers import chat, content
from stacks import needs_optimum

MAIN = "a" * 40
V1 = "b" * 40


def _hub_cache(root: Path, repo_id: str, snapshots: dict[str, tuple[Path, list[str]]]) -> Path:
    """A Hugging Face cache holding ``repo_id`` with one snapshot per commit; returns the cache root.

    ``snapshots`` maps a commit hash to (source folder, refs naming it). Files are plain copies:
    huggingface_hub reads a snapshot folder whatever its files are (symlinks to blobs or not).
    """
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for commit, (source, refs) in snapshots.items():
        shutil.copytree(source, repo / "snapshots" / commit)
        for ref in refs:
            (repo / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty local Hub cache that snapshot_download reads (offline)."""
    import huggingface_hub.constants as hf

    root = tmp_path / "hf-cache"
    root.mkdir()
    # HF_HUB_CACHE is read once, when huggingface_hub is imported (long before this test); the module
    # constant is what snapshot_download consults at call time, so that is what is pointed here.
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    yield root


def _loaded(path: Path | str) -> LoadedModel:
    model: LoadedModel = mlflow.pyfunc.load_model(str(path)).unwrap_python_model().loaded
    return model


# -- onnx-cpu ---------------------------------------------------------------------------------------


def test_onnx_batching_sequential_gives_the_same_answers(tiny_ort: Path, tmp_path: Path, tiny_pyfunc: Any) -> None:
    info = flavorkit.package(
        model=str(tiny_ort),
        backend="onnx-cpu",
        path=tmp_path / "seq",
        generation={"temperature": 0.0},
        options={"batching": "sequential", "provider_options": {"session.intra_op.allow_spinning": "0"}},
    )
    model = mlflow.pyfunc.load_model(info.model_uri)
    loaded: LoadedModel = model.unwrap_python_model().loaded
    assert loaded.handle.batching == "sequential"
    rows = [chat("Hello", max_tokens=6), chat("Write a haiku about the sea.", max_tokens=9)]
    assert [content(r) for r in model.predict(rows)] == [content(r) for r in tiny_pyfunc.predict(rows)]
    assert _loaded(info.model_uri).handle.batching == "sequential"
    assert _loaded_options(info.model_uri) == {
        "batching": "sequential",
        "provider_options": {"session.intra_op.allow_spinning": "0"},
    }


def _loaded_options(uri: str) -> dict[str, Any]:
    from mlflow.models import Model

    config = Model.load(uri).flavors["python_function"]["config"]
    return {k: v for k, v in config["options"].items() if v not in (None, {}, "auto", "int4")}


def test_onnx_option_errors_name_the_option() -> None:
    be = get_backend("onnx-cpu")
    for options, field in (
        ({"batching": "parallel"}, "options.batching"),
        ({"provider_options": {"device_id": 0}}, "options.provider_options.device_id"),
        ({"revision": 5}, "options.revision"),
        ({"providers": ["cpu"]}, "options.providers"),
        ({"intra_op_num_threads": 0}, "options.intra_op_num_threads"),
    ):
        with pytest.raises(InvalidRequest) as exc:
            be.validate_options(options)
        assert exc.value.field == field, (options, exc.value.field)


def test_onnx_threads_default_to_the_usable_cores_and_an_option_sets_them(tiny_ort: Path) -> None:
    import os

    from flavorkit.sdk import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))  # no CPU quota on the test machines
    be = get_backend("onnx-cpu")
    answers = []
    for options in ({}, {"intra_op_num_threads": 1}):
        model = LoadedModel(be, be.load({"model": str(tiny_ort)}, be.validate_options(options)))
        answers.append(content(model.predict(chat("Hello", max_tokens=6, temperature=0))[0]))
        model.close()
    assert answers[0] == answers[1]


def _os_threads() -> int:
    """This process's OS threads (ONNX Runtime's pool of N intra-op threads adds N - 1, plus one of its own)."""
    import os

    return len(os.listdir("/proc/self/task"))


def test_flavorkit_threads_overrides_the_packaged_onnx_threads(tiny_ort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from flavorkit.errors import SettingsError

    be = get_backend("onnx-cpu")
    options = be.validate_options({"intra_op_num_threads": 1})

    def threads_added(env: str | None) -> int:
        if env is None:
            monkeypatch.delenv("FLAVORKIT_THREADS", raising=False)
        else:
            monkeypatch.setenv("FLAVORKIT_THREADS", env)
        before = _os_threads()
        handle = be.load({"model": str(tiny_ort)}, options)
        added = _os_threads() - before
        be.unload(handle)
        del handle
        gc.collect()
        return added

    packaged = threads_added(None)
    assert threads_added("4") - packaged == 3  # four threads per step instead of the packaged one
    assert threads_added("") == packaged  # empty is unset: the packaged option holds
    with pytest.raises(SettingsError) as exc:
        threads_added("0")
    assert str(exc.value) == "FLAVORKIT_THREADS: '0' is out of range (allowed: whole number, from 1 to 1024)"


def test_transformers_num_threads_sets_torch_threads_and_flavorkit_threads_wins(
    tiny_hf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    be = get_backend("transformers")
    saved = torch.get_num_threads()
    monkeypatch.delenv("FLAVORKIT_THREADS", raising=False)
    try:
        handle = be.load({"model": str(tiny_hf)}, be.validate_options({"num_threads": 1}))
        assert torch.get_num_threads() == 1
        be.unload(handle)
        monkeypatch.setenv("FLAVORKIT_THREADS", "2")
        handle = be.load({"model": str(tiny_hf)}, be.validate_options({"num_threads": 1}))
        assert torch.get_num_threads() == 2
        be.unload(handle)
        with pytest.raises(InvalidRequest) as exc:
            be.validate_options({"num_threads": 0})
        assert exc.value.field == "options.num_threads"
    finally:
        torch.set_num_threads(saved)


def test_onnx_from_a_hub_id_and_revision(hub: Path, tiny_ort: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "v1-source"
    shutil.copytree(tiny_ort, renamed)
    (renamed / "marker.txt").write_text("revision v1")
    _hub_cache(hub, "fk-test/tiny-ort", {MAIN: (tiny_ort, ["main"]), V1: (renamed, ["v1"])})
    main_model = flavorkit.package(model="fk-test/tiny-ort", backend="onnx-cpu", path=tmp_path / "main")
    v1_model = flavorkit.package(
        model="fk-test/tiny-ort", backend="onnx-cpu", path=tmp_path / "v1", options={"revision": "v1"}
    )
    assert not list(Path(main_model.model_uri).rglob("marker.txt"))
    assert [p.read_text() for p in Path(v1_model.model_uri).rglob("marker.txt")] == ["revision v1"]
    assert _loaded(v1_model.model_uri).model_name == "fk-test/tiny-ort"
    with pytest.raises(ModelSourceError) as exc:
        flavorkit.package(model="fk-test/tiny-ort", backend="onnx-cpu", path=tmp_path / "x", options={"revision": "v9"})
    assert "fk-test/tiny-ort at v9" in str(exc.value)
    assert not (tmp_path / "x").exists()


# -- transformers -----------------------------------------------------------------------------------


def test_transformers_from_a_hub_id_with_revision_device_and_attention(
    hub: Path, tiny_hf: Path, tmp_path: Path
) -> None:
    _hub_cache(hub, "fk-test/tiny-llama", {MAIN: (tiny_hf, ["main", "v1"])})
    info = flavorkit.package(
        model="fk-test/tiny-llama",
        backend="transformers",
        path=tmp_path / "m",
        generation={"temperature": 0.0},
        options={"revision": "v1", "device": "cpu", "attn_implementation": "eager"},
    )
    loaded = _loaded(info.model_uri)
    assert loaded.model_name == "fk-test/tiny-llama"
    assert str(loaded.handle.device) == "cpu"
    assert loaded.handle.model.config._attn_implementation == "eager"
    answer = loaded.predict(chat("Hello", max_tokens=4))[0]
    assert answer["usage"]["completion_tokens"] <= 4


def test_transformers_hub_id_missing_from_the_cache_is_named(hub: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as exc:
        flavorkit.package(model="fk-test/absent", backend="transformers", path=tmp_path / "m")
    assert str(exc.value).startswith("model source fk-test/absent: not found in the local Hugging Face cache")


def test_transformers_attention_and_device_errors_name_the_option() -> None:
    be = get_backend("transformers")
    assert be.validate_options({"device": "cuda:1", "attn_implementation": "sdpa"})["device"] == "cuda:1"
    for options, field in (
        ({"attn_implementation": "flash"}, "options.attn_implementation"),
        ({"device": "gpu"}, "options.device"),
        ({"trust_remote_code": "yes please"}, "options.trust_remote_code"),
    ):
        with pytest.raises(InvalidRequest) as exc:
            be.validate_options(options)
        assert exc.value.field == field


# -- optimum-onnx -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tiny_hf: Path) -> Path:
    from flavorkit_hf.export import export_checkpoint

    return export_checkpoint(tiny_hf)


@needs_optimum
def test_optimum_session_options_reach_onnxruntime(tiny_export: Path, tmp_path: Path) -> None:
    source = tmp_path / "two-files"
    shutil.copytree(tiny_export, source)
    shutil.copy(source / "model.onnx", source / "decoder.onnx")
    (source / "model.onnx").rename(source / "other.onnx")
    with pytest.raises(ModelSourceError) as exc:
        flavorkit.package(model=str(source), backend="optimum-onnx", path=tmp_path / "m")
    assert "cannot tell which ONNX file to load (decoder.onnx, other.onnx); set options file_name" in str(exc.value)
    info = flavorkit.package(
        model=str(source),
        backend="optimum-onnx",
        path=tmp_path / "m",
        generation={"temperature": 0.0},
        options={
            "file_name": "decoder.onnx",
            "intra_op_num_threads": 1,
            "provider_options": {"arena_extend_strategy": "kSameAsRequested"},
        },
    )
    loaded = _loaded(info.model_uri)
    session = loaded.handle.model.model
    assert Path(session._model_path).name == "decoder.onnx"
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FLAVORKIT_THREADS", "2")  # flavorkit serve --threads 2, over the packaged option
        assert _loaded(info.model_uri).handle.model.model.get_session_options().intra_op_num_threads == 2
    # The CPU provider reports no provider options back; the GPU test reads device_id from a CUDA session.
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert loaded.predict(chat("Hello", max_tokens=3))[0]["usage"]["completion_tokens"] <= 3


@needs_optimum
def test_optimum_option_errors_name_the_option() -> None:
    be = get_backend("optimum-onnx")
    for options, field in (
        ({"intra_op_num_threads": 0}, "options.intra_op_num_threads"),
        ({"provider": "GPU"}, "options.provider"),
        ({"file_name": 3}, "options.file_name"),
        ({"device": "cpu"}, "options.device"),
    ):
        with pytest.raises(InvalidRequest) as exc:
            be.validate_options(options)
        assert exc.value.field == field
