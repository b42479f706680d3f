"""Packaging from a real Hugging Face Hub cache: relative symlinks from snapshots into blobs.

Every first-party backend packages a Hub id from the cache layout huggingface_hub writes
(``tests/hub_layout.py``), offline and online with the Hub unreachable, with and without a
``subfolder``; the packaged model holds real files (no links) and answers through MLflow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import flavorkit
from flavorkit.errors import ModelSourceError
from flavorkit.model.manifest import MANIFEST_FILE
from hub_layout import COMMIT, hub_cache, hub_env
from stacks import optimum_param

REPO = "acme/tiny-chat"
SUBFOLDER = "cpu_and_mobile/cpu-fp32"


@pytest.fixture(scope="session")
def tiny_optimum(tiny_hf: Path) -> Path:
    """The tiny checkpoint exported to ONNX with Optimum (cached by content)."""
    from flavorkit_hf.export import export_checkpoint

    return export_checkpoint(tiny_hf)


def _connection_error() -> type[Exception]:
    """The Hub client's "could not connect": requests' before huggingface_hub 1.0, httpx's after (httpx2 from 2.0)."""
    from importlib.metadata import version

    major = int(version("huggingface_hub").split(".")[0])
    if major == 0:
        import requests

        return requests.ConnectionError  # type: ignore[no-any-return]
    import importlib

    return importlib.import_module("httpx2" if major >= 2 else "httpx").ConnectError  # type: ignore[no-any-return]


def _predict(model_uri: str) -> dict[str, Any]:
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    out = model.predict({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert isinstance(out, list)
    return dict(out[0])


def _no_links(folder: Path) -> None:
    links = [p for p in folder.rglob("*") if p.is_symlink()]
    assert links == [], f"the packaged model holds symbolic links: {links}"


def _manifest_files(model_dir: Path) -> set[str]:
    return set(json.loads((model_dir / MANIFEST_FILE).read_text())["files"])


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online-unreachable"])
@pytest.mark.parametrize("subfolder", [None, SUBFOLDER], ids=["root", "subfolder"])
@pytest.mark.parametrize(
    ("backend", "fixture", "marker"),
    [
        ("onnx-cpu", "tiny_ort", "genai_config.json"),
        ("transformers", "tiny_hf", "config.json"),
        optimum_param(("optimum-onnx", "tiny_optimum", "model.onnx")),
    ],
)
def test_every_backend_packages_a_hub_id_from_the_cache(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backend: str,
    fixture: str,
    marker: str,
    subfolder: str | None,
    online: bool,
) -> None:
    source: Path = request.getfixturevalue(fixture)
    snapshot = hub_cache(tmp_path / "hub", REPO, source, subfolder)
    assert (snapshot / (subfolder or "") / marker).is_symlink()
    assert not os.readlink(snapshot / (subfolder or "") / marker).startswith("/"), "huggingface_hub links relatively"
    options = {"subfolder": subfolder} if subfolder else {}
    with hub_env(tmp_path / "hub", online=online):
        info = flavorkit.package(model=REPO, backend=backend, path=tmp_path / "m", options=options)
    model_dir = Path(info.model_uri)
    _no_links(model_dir)
    assert f"artifacts/model/{marker}" in _manifest_files(model_dir)
    out = _predict(info.model_uri)
    assert out["usage"]["completion_tokens"] <= 3
    assert out["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    ("backend", "options"),
    [
        pytest.param("onnx-cpu", {"precision": "fp32"}, id="onnx-cpu-builder"),
        optimum_param(("optimum-onnx", {}), id="optimum-export"),
    ],
)
def test_a_hub_checkpoint_is_converted_from_the_cache(
    tiny_hf: Path, tmp_path: Path, backend: str, options: dict[str, Any]
) -> None:
    """Conversions read the snapshot through its blob links (and reuse the content-keyed cache)."""
    hub_cache(tmp_path / "hub", REPO, tiny_hf, SUBFOLDER)
    with hub_env(tmp_path / "hub", online=False):
        info = flavorkit.package(
            model=REPO, backend=backend, path=tmp_path / "m", options={"subfolder": SUBFOLDER, **options}
        )
    _no_links(Path(info.model_uri))
    assert _predict(info.model_uri)["usage"]["completion_tokens"] <= 3


def test_a_snapshot_folder_given_as_a_local_path_is_packaged(tiny_ort: Path, tmp_path: Path) -> None:
    """The snapshot path itself (what snapshot_download returns) is a local source with blob links."""
    snapshot = hub_cache(tmp_path / "hub", REPO, tiny_ort)
    info = flavorkit.package(model=str(snapshot), backend="onnx-cpu", path=tmp_path / "m")
    _no_links(Path(info.model_uri))
    assert _predict(info.model_uri)["usage"]["completion_tokens"] <= 3


def test_a_revision_missing_from_the_cache_is_a_clear_error(tiny_ort: Path, tmp_path: Path) -> None:
    hub_cache(tmp_path / "hub", REPO, tiny_ort)
    with hub_env(tmp_path / "hub", online=True), pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=REPO, backend="onnx-cpu", path=tmp_path / "m", options={"revision": "v2"})
    assert err.value.source == f"{REPO} at v2"
    assert "not found in the local Hugging Face cache" in str(err.value)
    assert not (tmp_path / "m").exists()


def test_a_pinned_commit_is_served_from_the_cache(tiny_ort: Path, tmp_path: Path) -> None:
    hub_cache(tmp_path / "hub", REPO, tiny_ort)
    with hub_env(tmp_path / "hub", online=True):
        info = flavorkit.package(model=REPO, backend="onnx-cpu", path=tmp_path / "m", options={"revision": COMMIT})
    _no_links(Path(info.model_uri))


@pytest.mark.parametrize("online", [False, True], ids=["offline", "online-unreachable"])
def test_a_repo_missing_from_the_cache_says_why(tmp_path: Path, online: bool) -> None:
    """Online, huggingface_hub really tries the (closed) endpoint and then falls back to the cache."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    (tmp_path / "hub").mkdir()
    with hub_env(tmp_path / "hub", online=online), pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=REPO, backend="onnx-cpu", path=tmp_path / "m", options={"subfolder": SUBFOLDER})
    assert str(err.value) == (
        f"model source {REPO} (subfolder {SUBFOLDER!r}): not found in the local Hugging Face cache and downloading "
        "is disabled or impossible (HF_HUB_OFFLINE is set, or the Hub is unreachable); "
        f"there is no local folder {Path(REPO).resolve()} either; pass a local path instead"
    )
    cause = err.value.__cause__
    assert isinstance(cause, LocalEntryNotFoundError)
    assert isinstance(cause.__cause__, _connection_error() if online else OfflineModeIsEnabled)
    assert isinstance(cause.__cause__, OfflineModeIsEnabled) is not online
    assert not (tmp_path / "m").exists()
