"""Model sources: local folders, subfolders, and Hub ids resolved through a local Hugging Face cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flavorkit
from flavorkit.errors import ModelSourceError
from flavorkit.packaging.sources import looks_like_hub_id, resolve_local_dir
from hub_layout import closed_endpoint, hub_cache

SUBFOLDER = "cpu_and_mobile/cpu-fp32"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("microsoft/Phi-3-mini-4k-instruct-onnx", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("./models/phi3", False),
        ("/abs/path", False),
        ("models/phi3/int4", False),
        ("just-a-name", False),
    ],
)
def test_hub_ids_are_told_apart_from_paths(text: str, expected: bool) -> None:
    assert looks_like_hub_id(text) is expected


def test_an_existing_local_owner_slash_name_folder_wins_over_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert not looks_like_hub_id("org/model")
    assert resolve_local_dir("org/model") == (tmp_path / "org" / "model").resolve()


def test_local_subfolder(tiny_ort: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_ort, tmp_path / "repo" / SUBFOLDER)
    assert resolve_local_dir(tmp_path / "repo", subfolder=SUBFOLDER) == (tmp_path / "repo" / SUBFOLDER).resolve()
    with pytest.raises(ModelSourceError, match="subfolder 'cpu_and_mobile/missing' does not exist"):
        resolve_local_dir(tmp_path / "repo", subfolder="cpu_and_mobile/missing")
    info = flavorkit.package(
        model=str(tmp_path / "repo"), backend="onnx-cpu", path=tmp_path / "m", options={"subfolder": SUBFOLDER}
    )
    assert Path(info.model_uri, "MLmodel").is_file()


def _package_in_subprocess(
    source: str, cache: Path, out: Path, subfolder: str, *, online: bool = False, backend: str = "onnx-cpu"
) -> subprocess.CompletedProcess[str]:
    """Package and predict in a fresh interpreter, with huggingface_hub configured by real environment variables.

    Offline sets ``HF_HUB_OFFLINE=1``; online unsets it (and ``TRANSFORMERS_OFFLINE``, which implies
    it) and points ``HF_ENDPOINT`` at a closed loopback port, so the Hub is tried and unreachable.
    """
    code = f"""
import json, flavorkit, mlflow
info = flavorkit.package(model={source!r}, backend={backend!r}, path={str(out)!r},
                         options={{"subfolder": {subfolder!r}}}, generation={{"temperature": 0}})
m = mlflow.pyfunc.load_model(info.model_uri)
print(json.dumps(m.predict({{"messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 3}})))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    if online:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(name, None)
        env["HF_ENDPOINT"] = closed_endpoint()
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online-unreachable"])
def test_hub_repo_id_plus_subfolder_from_the_local_hub_cache(tiny_ort: Path, tmp_path: Path, online: bool) -> None:
    """The cache holds relative links from the snapshot into blobs/, as huggingface_hub writes it."""
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny-chat-onnx", tiny_ort, SUBFOLDER)
    proc = _package_in_subprocess("acme/tiny-chat-onnx", cache, tmp_path / "m", SUBFOLDER, online=online)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out[0]["usage"]["completion_tokens"] <= 3
    packaged = tmp_path / "m" / "artifacts" / "model"
    assert sorted(p.name for p in packaged.iterdir()) == sorted(p.name for p in tiny_ort.iterdir())
    assert [p for p in packaged.rglob("*") if p.is_symlink()] == []


def test_transformers_hub_id_with_the_hub_unreachable(tiny_hf: Path, tmp_path: Path) -> None:
    """Without HF_HUB_OFFLINE, packaging and loading a transformers model from the cache never needs the Hub."""
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny-chat", tiny_hf, "chat")
    proc = _package_in_subprocess("acme/tiny-chat", cache, tmp_path / "m", "chat", online=True, backend="transformers")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])[0]["usage"]["completion_tokens"] <= 3
    packaged = tmp_path / "m" / "artifacts" / "model"
    assert (packaged / "model.safetensors").read_bytes() == (tiny_hf / "model.safetensors").read_bytes()
    assert [p for p in packaged.rglob("*") if p.is_symlink()] == []


def test_a_mistyped_path_whose_first_folder_exists_is_no_such_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'models/phi3-int4' reads as a Hub id too, but with a local models/ folder it is a path."""
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as exc:
        resolve_local_dir("models/phi3-int4")
    missing = tmp_path.resolve() / "models" / "phi3-int4"
    assert str(exc.value) == f"model source models/phi3-int4: no such folder: {missing}"


def test_a_hub_id_missing_offline_also_says_there_is_no_such_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as exc:
        resolve_local_dir("acme/phi3-int4")
    assert "not found in the local Hugging Face cache" in str(exc.value)
    assert f"there is no local folder {tmp_path.resolve() / 'acme' / 'phi3-int4'} either" in str(exc.value)


def test_unknown_hub_id_offline_is_a_clear_error(tiny_ort: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny-chat-onnx", tiny_ort, SUBFOLDER)
    proc = _package_in_subprocess("acme/not-downloaded", cache, tmp_path / "m", SUBFOLDER)
    assert proc.returncode != 0
    assert "ModelSourceError" in proc.stderr
    assert "acme/not-downloaded" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("subfolder", ["../outside", "a/../../outside", "/etc", ".."])
def test_subfolder_cannot_leave_the_source(tmp_path: Path, subfolder: str) -> None:
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    if subfolder == "/etc":
        # A leading slash is stripped: it names src/etc, which does not exist.
        with pytest.raises(ModelSourceError, match="does not exist"):
            resolve_local_dir(tmp_path / "src", subfolder=subfolder)
        return
    with pytest.raises(ModelSourceError, match="inside the model source"):
        resolve_local_dir(tmp_path / "src", subfolder=subfolder)


def test_subfolder_through_a_symlink_out_of_the_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "src" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(ModelSourceError, match="leads outside"):
        resolve_local_dir(tmp_path / "src", subfolder="link")
