"""The manifest's format and its checks in detail: canonical digests, malformed manifests, byte-code caches.

These work on small model folders written here, not on the session's packaged models: mutmut
credits a session fixture's packaging to the first test that asks for it, so checks that read a
shared model were never run against the mutants of the code that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flavorkit.errors import IntegrityError
from flavorkit.model.config import PackagedConfig, PluginRef
from flavorkit.model.loading import resolve_backend, verify_packaged
from flavorkit.model.manifest import (
    MANIFEST_FILE,
    FileEntry,
    Manifest,
    MLmodelDigest,
    build_manifest,
    hash_files,
    mlmodel_digest,
    model_files,
    read_manifest,
    verify_model,
    write_manifest,
)

# An MLmodel with a non-ASCII value, nested keys out of order, and a YAML timestamp (which
# safe_load turns into a datetime, so the canonical JSON needs its ``default=str``).
MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.pyfunc.model
    env: {conda: conda.yaml}
  flavorkit: {backend: onnx-cpu, model_name: "café"}
metadata:
  built: 2026-11-25 12:00:00
signature:
  inputs: '[{"type": "string"}]'
utc_time_created: '2026-11-25 12:00:00.000000'
"""


def _model(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "artifacts" / "weights").mkdir(parents=True)
    (root / "artifacts" / "weights" / "w.bin").write_bytes(b"\x00\x01weights")
    (root / "code").mkdir()
    (root / "code" / "plugin.py").write_text("x = 1\n", encoding="utf-8")
    (root / "MLmodel").write_text(MLMODEL, encoding="utf-8")
    write_manifest(build_manifest(root), root)
    return root


def test_the_mlmodel_digest_keeps_its_canonical_form(tmp_path: Path) -> None:
    # Packaged models carry digests of this exact form (sorted keys, no spaces, UTF-8 kept as is,
    # timestamps as text): a change to it would make every existing model fail verification.
    root = _model(tmp_path)
    expected = hashlib.sha256(
        '{"flavors":{"flavorkit":{"backend":"onnx-cpu","model_name":"café"},'
        '"python_function":{"env":{"conda":"conda.yaml"},"loader_module":"mlflow.pyfunc.model"}},'
        '"metadata":{"built":"2026-11-25 12:00:00"},'
        '"signature":{"inputs":"[{\\"type\\": \\"string\\"}]"}}'.encode()
    ).hexdigest()
    assert mlmodel_digest(root) == expected
    assert mlmodel_digest(root, ("flavors",)) != expected


def test_an_mlmodel_that_cannot_be_read_or_is_not_a_mapping_is_named(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as exc:
        mlmodel_digest(tmp_path)
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith("MLmodel: cannot be read: ")
    (tmp_path / "MLmodel").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(IntegrityError) as exc:
        mlmodel_digest(tmp_path)
    assert exc.value.problems == ["MLmodel: is not a mapping"]


def test_the_manifest_is_written_as_stable_readable_json(tmp_path: Path) -> None:
    manifest = Manifest(
        version=2,
        algorithm="sha256",
        files={"b": FileEntry(sha256="1" * 64, size=3), "a": FileEntry(sha256="2" * 64, size=1)},
        mlmodel=MLmodelDigest(keys=("flavors",), sha256="3" * 64),
    )
    path = write_manifest(manifest, tmp_path)
    assert path == tmp_path / MANIFEST_FILE
    assert path.read_bytes().decode("utf-8") == (
        "{\n"
        '  "algorithm": "sha256",\n'
        '  "files": {\n'
        '    "a": {\n'
        f'      "sha256": "{"2" * 64}",\n'
        '      "size": 1\n'
        "    },\n"
        '    "b": {\n'
        f'      "sha256": "{"1" * 64}",\n'
        '      "size": 3\n'
        "    }\n"
        "  },\n"
        '  "mlmodel": {\n'
        '    "keys": [\n'
        '      "flavors"\n'
        "    ],\n"
        f'    "sha256": "{"3" * 64}"\n'
        "  },\n"
        '  "version": 2\n'
        "}\n"
    )
    assert read_manifest(tmp_path) == manifest


def test_hashing_an_artifact_folder_follows_its_links_as_mlflow_copies_them(tmp_path: Path) -> None:
    # Backends hand over folders that may link into a cache (a Hub snapshot); MLflow copies the
    # linked content, so the manifest must list it under the folder's key.
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "f.txt").write_text("hi", encoding="utf-8")
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "sub").symlink_to(real / "sub", target_is_directory=True)
    assert sorted(hash_files({"weights": folder})) == ["weights/sub/f.txt"]


def test_only_caches_of_the_shipped_code_are_skipped(tmp_path: Path) -> None:
    root = _model(tmp_path)
    (root / "code" / "__pycache__").mkdir()
    (root / "code" / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"pyc")
    (root / "artifacts" / "weights" / "stray.pyc").write_bytes(b"pyc")
    assert "artifacts/weights/stray.pyc" in model_files(root, skip_bytecode=True)
    assert "code/__pycache__/plugin.cpython-311.pyc" not in model_files(root, skip_bytecode=True)
    assert "code/__pycache__/plugin.cpython-311.pyc" in model_files(root)  # what packaging lists


def test_verification_tolerates_byte_code_caches_by_default(tmp_path: Path) -> None:
    root = _model(tmp_path)
    (root / "code" / "__pycache__").mkdir()
    (root / "code" / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"pyc")
    verify_model(root)
    with pytest.raises(IntegrityError) as exc:
        verify_model(root, skip_bytecode=False)
    assert exc.value.problems == ["code/__pycache__/plugin.cpython-311.pyc: not in the manifest"]


def test_the_mlmodel_check_uses_the_keys_the_manifest_recorded(tmp_path: Path) -> None:
    root = _model(tmp_path)
    manifest = read_manifest(root)
    narrow = manifest.model_copy(
        update={"mlmodel": MLmodelDigest(keys=("flavors",), sha256=mlmodel_digest(root, ("flavors",)))}
    )
    verify_model(root, narrow)
    (root / "MLmodel").write_text(MLMODEL.replace("café", "cafe"), encoding="utf-8")
    with pytest.raises(IntegrityError) as exc:
        verify_model(root)
    assert exc.value.problems == ["MLmodel: its flavors, signature, metadata differ from the manifest's digest"]


def test_a_manifest_that_is_not_an_object_is_malformed_at_top_level(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text("[]", encoding="utf-8")
    with pytest.raises(IntegrityError) as exc:
        read_manifest(tmp_path)
    assert exc.value.problems == [
        f"{MANIFEST_FILE} is malformed at top level: Input should be a valid dictionary or instance of Manifest"
    ]


def test_a_badly_malformed_manifest_names_its_first_five_problems(tmp_path: Path) -> None:
    bad = {"version": 3, "algorithm": "md5", "files": {"../x": 1, "y": {"sha256": "no"}}, "mlmodel": {}, "extra": 1}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(IntegrityError) as exc:
        read_manifest(tmp_path)
    assert len(exc.value.problems) == 5
    assert exc.value.problems[0] == f"{MANIFEST_FILE} is malformed at version: Input should be 2"


def test_an_installed_but_unavailable_backend_gives_way_to_the_shipped_object() -> None:
    # onnx-cuda is installed (an entry point) but its CUDA runtime is not; a model packaged with
    # another object under that id still loads that object, checked for its own runtime.
    config = PackagedConfig(
        flavorkit_version="0",
        spec_version=1,
        backend="onnx-cuda",
        plugin=PluginRef(object="flavorkit_onnxgenai.plugin:cpu"),
        task="llm/v1/chat",
    )
    backend = resolve_backend(config)
    assert (backend.name, backend.object_path) == ("onnx-cuda", "flavorkit_onnxgenai.plugin:cpu")


def test_verify_packaged_is_strict_unless_told(tmp_path: Path) -> None:
    # ``flavorkit verify`` semantics by default: a byte-code cache is a file the manifest lacks.
    root = _model(tmp_path)
    (root / "code" / "__pycache__").mkdir()
    (root / "code" / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"pyc")
    with pytest.raises(IntegrityError) as exc:
        verify_packaged(root)
    assert exc.value.problems == ["code/__pycache__/plugin.cpython-311.pyc: not in the manifest"]
    assert verify_packaged(root, strict=False) == read_manifest(root)
