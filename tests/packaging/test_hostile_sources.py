"""Hostile model sources: symbolic links that lead out of the source are refused, never followed.

A source folder is staged into the package as real files (``flavorkit.packaging.sources.stage_tree``); a link
that resolves outside the source root (or, in a Hub cache, outside that repo's ``blobs/``) stops
packaging with a :class:`ModelSourceError` naming the link and where it points, before any backend
reads, converts or copies a file.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import flavorkit
from flavorkit.backend.registry import get_registry
from flavorkit.errors import ModelSourceError, PackagingError
from hub_layout import COMMIT, hub_cache, hub_env
from plugin_fixtures import ECHO_BACKEND, make_distribution
from stacks import optimum_param

SECRET = "HF_TOKEN=hf_do_not_ship_me\n"
NEVER = "files from outside a model source are never packaged (copy the file into the source if the model needs it)"


def _outside(link: Path, real: Path, where: str) -> str:
    return f"model source {link}: symbolic link to {real} leads outside {where}; {NEVER}"


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file beside the model source that must never reach a package."""
    path = tmp_path / "secrets" / "token.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest.resolve()


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.flavorkit-*"))


# --- the finding: transformers copied a file from outside the source --------------------------------


@pytest.mark.parametrize("target", ["secret", "/etc/hostname"])
def test_transformers_refuses_a_file_link_out_of_the_source(
    tiny_hf: Path, tmp_path: Path, secret: Path, target: str
) -> None:
    outside = secret if target == "secret" else Path(target)
    if not outside.is_file():
        pytest.skip(f"{outside} does not exist here")
    src = _copy(tiny_hf, tmp_path / "src")
    (src / "notes.txt").symlink_to(outside)
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend="transformers", path=tmp_path / "m")
    assert err.value.source == src / "notes.txt"
    assert str(err.value) == _outside(src / "notes.txt", outside.resolve(), f"the model source {src}")
    _assert_nothing_written(tmp_path / "m")


def test_a_model_file_replaced_by_a_link_out_is_refused_even_when_valid(tiny_hf: Path, tmp_path: Path) -> None:
    """A tokenizer that would load fine is still refused when it lives outside the source."""
    src = _copy(tiny_hf, tmp_path / "src")
    elsewhere = tmp_path / "elsewhere" / "tokenizer.json"
    elsewhere.parent.mkdir()
    (src / "tokenizer.json").rename(elsewhere)
    (src / "tokenizer.json").symlink_to(os.path.relpath(elsewhere, src))
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend="transformers", path=tmp_path / "m")
    assert str(err.value) == _outside(src / "tokenizer.json", elsewhere, f"the model source {src}")


@pytest.mark.parametrize("backend", ["onnx-cpu", optimum_param()])
def test_conversions_refuse_a_checkpoint_with_a_link_out(
    tiny_hf: Path, tmp_path: Path, secret: Path, backend: str
) -> None:
    """The model builder and the Optimum exporter never get to read the outside file."""
    src = _copy(tiny_hf, tmp_path / "src")
    (src / "added_tokens.json").symlink_to(secret)
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend=backend, path=tmp_path / "m")
    assert str(err.value) == _outside(src / "added_tokens.json", secret, f"the model source {src}")
    _assert_nothing_written(tmp_path / "m")


def test_onnx_refuses_a_link_out_in_a_nested_folder(tiny_ort: Path, tmp_path: Path, secret: Path) -> None:
    src = _copy(tiny_ort, tmp_path / "src")
    (src / "extra" / "deep").mkdir(parents=True)
    (src / "extra" / "deep" / "token.txt").symlink_to(secret)
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend="onnx-cpu", path=tmp_path / "m")
    assert str(err.value) == _outside(src / "extra" / "deep" / "token.txt", secret, f"the model source {src}")
    _assert_nothing_written(tmp_path / "m")


@pytest.mark.parametrize("backend", ["onnx-cpu", "transformers"])
def test_a_folder_link_out_of_the_source_is_refused(
    tiny_hf: Path, tiny_ort: Path, tmp_path: Path, secret: Path, backend: str
) -> None:
    src = _copy(tiny_ort if backend == "onnx-cpu" else tiny_hf, tmp_path / "src")
    (src / "more").symlink_to(secret.parent, target_is_directory=True)
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend=backend, path=tmp_path / "m")
    assert str(err.value) == _outside(src / "more", secret.parent, f"the model source {src}")


def test_a_broken_link_is_refused(tiny_ort: Path, tmp_path: Path) -> None:
    src = _copy(tiny_ort, tmp_path / "src")
    (src / "gone.json").symlink_to("../nowhere/gone.json")
    with pytest.raises(ModelSourceError) as err:
        flavorkit.package(model=str(src), backend="onnx-cpu", path=tmp_path / "m")
    assert str(err.value) == f"model source {src / 'gone.json'}: broken symbolic link to ../nowhere/gone.json"


def test_a_folder_link_loop_is_refused(tiny_ort: Path, tmp_path: Path) -> None:
    from flavorkit.packaging.sources import check_links

    src = _copy(tiny_ort, tmp_path / "src")
    (src / "sub").mkdir()
    (src / "sub" / "again").symlink_to("..", target_is_directory=True)
    with pytest.raises(ModelSourceError) as err:
        check_links(src)
    assert str(err.value) == (
        f"model source {src / 'sub' / 'again'}: symbolic link to {src} loops back into a folder that contains it"
    )


def test_a_fifo_is_refused(tmp_path: Path) -> None:
    from flavorkit.packaging.sources import stage_tree

    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(ModelSourceError) as err:
        stage_tree(src, tmp_path / "out")
    assert str(err.value) == f"model source {src / 'pipe'}: not a regular file or folder (a device, FIFO or socket)"


# --- links that stay inside the source are fine ------------------------------------------------------


def test_links_inside_the_source_are_packaged_as_real_files(tiny_ort: Path, tmp_path: Path) -> None:
    src = _copy(tiny_ort, tmp_path / "src")
    (src / "shared").mkdir()
    (src / "tokenizer.json").rename(src / "shared" / "tokenizer.json")
    (src / "tokenizer.json").symlink_to("shared/tokenizer.json")
    # tokenizer_config.json: every model builder writes it (0.18 with transformers 5 writes no vocab.json).
    (src / "tokenizer_config.json").rename(src / "shared" / "tokenizer_config.json")
    (src / "tokenizer_config.json").symlink_to(src / "shared" / "tokenizer_config.json")  # absolute, but inside
    (src / "alias").symlink_to("shared", target_is_directory=True)
    info = flavorkit.package(model=str(src), backend="onnx-cpu", path=tmp_path / "m")
    packaged = Path(info.model_uri) / "artifacts" / "model"
    assert [p for p in packaged.rglob("*") if p.is_symlink()] == []
    assert (packaged / "tokenizer.json").read_bytes() == (tiny_ort / "tokenizer.json").read_bytes()
    config = (tiny_ort / "tokenizer_config.json").read_bytes()
    assert (packaged / "alias" / "tokenizer_config.json").read_bytes() == config

    import mlflow

    out = mlflow.pyfunc.load_model(info.model_uri).predict({"messages": [{"role": "user", "content": "hi"}]})
    assert out[0]["choices"][0]["message"]["role"] == "assistant"


def test_a_subfolder_may_link_elsewhere_inside_its_source(tiny_hf: Path, tmp_path: Path) -> None:
    """With ``subfolder``, the source is the whole folder given, not only the subfolder."""
    repo = tmp_path / "repo"
    _copy(tiny_hf, repo / "weights")
    sub = repo / "variants" / "chat"
    sub.mkdir(parents=True)
    for path in (repo / "weights").iterdir():
        (sub / path.name).symlink_to(os.path.relpath(path, sub))
    info = flavorkit.package(
        model=str(repo), backend="transformers", path=tmp_path / "m", options={"subfolder": "variants/chat"}
    )
    assert [p for p in Path(info.model_uri).rglob("*") if p.is_symlink()] == []


def test_staging_hard_links_and_checks_every_entry(tmp_path: Path) -> None:
    from flavorkit.packaging.sources import check_links, stage_tree

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "w.bin").write_bytes(b"weights")
    (src / "top.json").write_text("{}")
    (src / ".hidden").write_text("x")
    (src / "link.json").symlink_to("top.json")
    assert check_links(src) == 1
    out = stage_tree(src, tmp_path / "out", keep=lambda p: not p.name.startswith("."))
    staged = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert staged == ["a", "a/w.bin", "link.json", "top.json"]
    assert not (out / "link.json").is_symlink()
    assert (out / "a" / "w.bin").stat().st_ino == (src / "a" / "w.bin").stat().st_ino  # a hard link, not a copy
    flat = stage_tree(src, tmp_path / "flat", recursive=False)
    assert sorted(p.name for p in flat.iterdir()) == [".hidden", "link.json", "top.json"]
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    skipped = stage_tree(src, tmp_path / "skipped", keep=lambda p: p.name != ".git")
    assert not (skipped / ".git").exists(), "a folder keep() rejects is skipped whole"


# --- inside a Hub cache, links into that repo's blobs (and only those) are allowed -------------------


def _snapshot_where(snapshot: Path) -> str:
    return f"the model source {snapshot} and its Hugging Face cache blobs {snapshot.parent.parent / 'blobs'}"


def test_a_hub_snapshot_link_out_of_the_blobs_is_refused(tiny_ort: Path, tmp_path: Path, secret: Path) -> None:
    snapshot = hub_cache(tmp_path / "hub", "acme/tiny", tiny_ort).resolve()
    (snapshot / "token.txt").symlink_to(os.path.relpath(secret, snapshot))
    with hub_env(tmp_path / "hub", online=False), pytest.raises(ModelSourceError) as err:
        flavorkit.package(model="acme/tiny", backend="onnx-cpu", path=tmp_path / "m")
    assert str(err.value) == _outside(snapshot / "token.txt", secret, _snapshot_where(snapshot))
    _assert_nothing_written(tmp_path / "m")


def test_a_hub_snapshot_link_into_another_repos_blobs_is_refused(tiny_ort: Path, tmp_path: Path) -> None:
    other = hub_cache(tmp_path / "hub", "acme/other", tiny_ort).resolve()
    snapshot = hub_cache(tmp_path / "hub", "acme/tiny", tiny_ort).resolve()
    stolen = (other / "genai_config.json").resolve()
    (snapshot / "genai_config.json").unlink()
    (snapshot / "genai_config.json").symlink_to(os.path.relpath(stolen, snapshot))
    with hub_env(tmp_path / "hub", online=False), pytest.raises(ModelSourceError) as err:
        flavorkit.package(model="acme/tiny", backend="onnx-cpu", path=tmp_path / "m")
    assert str(err.value) == _outside(snapshot / "genai_config.json", stolen, _snapshot_where(snapshot))


def test_a_hub_blob_that_is_itself_a_link_out_is_refused(tiny_ort: Path, tmp_path: Path, secret: Path) -> None:
    """Links are resolved to the end: a blob pointing elsewhere does not launder the target."""
    snapshot = hub_cache(tmp_path / "hub", "acme/tiny", tiny_ort).resolve()
    blob = (snapshot / "chat_template.jinja").resolve()
    blob.unlink()
    blob.symlink_to(secret)
    with hub_env(tmp_path / "hub", online=False), pytest.raises(ModelSourceError) as err:
        flavorkit.package(model="acme/tiny", backend="transformers", path=tmp_path / "m")
    assert str(err.value) == _outside(snapshot / "chat_template.jinja", secret, _snapshot_where(snapshot))


def test_resolve_model_dir_reports_the_hub_roots(tiny_ort: Path, tmp_path: Path) -> None:
    from flavorkit.packaging.sources import ModelDir, check_links, resolve_model_dir

    snapshot = hub_cache(tmp_path / "hub", "acme/tiny", tiny_ort, "onnx/cpu").resolve()
    with hub_env(tmp_path / "hub", online=False):
        found = resolve_model_dir("acme/tiny", subfolder="onnx/cpu")
    assert found == ModelDir(path=snapshot / "onnx" / "cpu", root=snapshot, blobs=snapshot.parent.parent / "blobs")
    assert snapshot.name == COMMIT
    local = resolve_model_dir(tiny_ort)
    assert local == ModelDir(path=tiny_ort.resolve(), root=tiny_ort.resolve(), blobs=None)
    inside = resolve_model_dir(snapshot / "onnx" / "cpu")  # a snapshot folder given as a local path
    assert inside.blobs == snapshot.parent.parent / "blobs"
    assert check_links(inside) == len([p for p in tiny_ort.rglob("*") if p.is_file()])


LEAKY_BACKEND = ECHO_BACKEND.replace(
    """        (out / "config.txt").write_text(str(source))""",
    """        (out / "config.txt").write_text(str(source))
        (out / "extra.txt").symlink_to(source)  # a third-party backend that links its source file in""",
)


def test_a_third_party_artifact_folder_linking_outside_is_refused(
    secret: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(tmp_path / "site", "fk-leaky", {"fk_leaky": LEAKY_BACKEND}, {"leaky": "fk_leaky:backend"})
    monkeypatch.syspath_prepend(str(root))
    get_registry(refresh=True)
    try:
        out = tmp_path / "pkg"
        with pytest.raises(PackagingError, match=r"backend 'leaky' returned artifact 'echo' at ") as info:
            flavorkit.package(str(secret), "leaky", path=out)
        assert f"symbolic link to {secret}" in str(info.value)
        assert not out.exists()
        assert not list(tmp_path.glob(".pkg.flavorkit-*")), "the staging folder is gone"
    finally:
        sys.modules.pop("fk_leaky", None)
        monkeypatch.undo()
        get_registry(refresh=True)
