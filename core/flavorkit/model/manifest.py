"""The sha256 manifest of a whole packaged model, written after MLflow saved it and verified at load.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

The manifest (``flavorkit_manifest.json`` at the model's root) lists every file of the model with
its size and sha256: the artifacts, the shipped code under ``code/``, the models-from-code file,
the requirement and environment files and the input examples. ``MLmodel`` is not listed as a file,
because MLflow rewrites its bookkeeping (run and model ids, timestamps); instead the manifest holds
the sha256 of the canonical JSON of the parts that decide what runs and how (``flavors``, which
holds the loader, the code folder, the artifacts and flavorkit's ``model_config``, plus
``signature`` and ``metadata``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flavorkit.errors import IntegrityError

__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "MLMODEL_FILE",
    "MLMODEL_KEYS",
    "REGISTRY_MARKER",
    "SIGNATURE_FILE",
    "UNLISTED",
    "FileEntry",
    "MLmodelDigest",
    "Manifest",
    "build_manifest",
    "hash_files",
    "mlmodel_digest",
    "model_files",
    "read_manifest",
    "sha256_file",
    "verify_model",
    "write_manifest",
]

MANIFEST_VERSION: Literal[2] = 2
MANIFEST_FILE = "flavorkit_manifest.json"
MLMODEL_FILE = "MLmodel"
#: The signature written by ``flavorkit.package(..., signing_key=...)`` (see :mod:`flavorkit.model.signing`).
SIGNATURE_FILE = "flavorkit.sig"
#: Written by MLflow next to MLmodel when a registered model (``models:/``) is downloaded.
REGISTRY_MARKER = "registered_model_meta"
#: Files at the model's root that the manifest does not list.
UNLISTED = frozenset({MLMODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE, REGISTRY_MARKER})
#: The parts of MLmodel the manifest's digest covers.
MLMODEL_KEYS = ("flavors", "signature", "metadata")
_CHUNK = 4 * 1024 * 1024
_HEX64 = r"^[0-9a-f]{64}$"


class FileEntry(BaseModel):
    """One listed file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    sha256: str = Field(pattern=_HEX64)
    size: int = Field(ge=0)


class MLmodelDigest(BaseModel):
    """The digest of MLmodel's canonical JSON, restricted to ``keys``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: tuple[str, ...]
    sha256: str = Field(pattern=_HEX64)


class Manifest(BaseModel):
    """The parsed ``flavorkit_manifest.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[2]
    algorithm: Literal["sha256"]
    files: dict[str, FileEntry]
    mlmodel: MLmodelDigest

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for rel in files:
            parts = PurePosixPath(rel).parts
            if not parts or rel.startswith("/") or "\\" in rel or ".." in parts or "." in parts:
                raise ValueError(f"{rel!r} is not a relative path inside the model")
        return files


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_bytecode_cache(rel: str) -> bool:
    """A ``__pycache__/*.pyc`` that importing the shipped code writes: under ``code/`` or at the root.

    Artifact folders are packaged as the backend returned them, caches included, and stay checked.
    """
    parts = PurePosixPath(rel).parts
    shipped = parts[0] == "code" or len(parts) == 2
    return shipped and len(parts) >= 2 and parts[-2] == "__pycache__" and rel.endswith(".pyc")


def model_files(model_dir: str | os.PathLike[str], *, skip_bytecode: bool = False) -> dict[str, Path]:
    """Every file of a packaged model but the unlisted root files: relative POSIX path -> path.

    With ``skip_bytecode``, ``__pycache__/*.pyc`` files (which Python writes into a writable model
    folder whenever it imports the shipped code) are left out too.
    """
    root = Path(model_dir)
    out = {}
    links = []
    # Never follow links: a packaged model holds none (MLflow copies real files), and following one
    # could hash a file outside the model or loop for ever on a hostile folder.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                links.append(f"{path.relative_to(root).as_posix()}: a symbolic link (a packaged model holds none)")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or rel in UNLISTED or (skip_bytecode and _is_bytecode_cache(rel)):
                continue
            out[rel] = path
    if links:
        raise IntegrityError(sorted(links))
    return out


def hash_files(files: Mapping[str, str | os.PathLike[str]]) -> dict[str, FileEntry]:
    """Size and sha256 of each file (or of each file under each folder), keyed ``<key>/<relative path>``."""
    out: dict[str, FileEntry] = {}
    for key, location in sorted(files.items()):
        root = Path(location)
        for path in _walk(root):
            rel = key if root.is_file() else f"{key}/{path.relative_to(root).as_posix()}"
            out[rel] = FileEntry(sha256=sha256_file(path), size=path.stat().st_size)
    return out


def mlmodel_digest(model_dir: str | os.PathLike[str], keys: tuple[str, ...] = MLMODEL_KEYS) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of MLmodel's ``keys``."""
    import yaml

    path = Path(model_dir) / MLMODEL_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise IntegrityError([f"{MLMODEL_FILE}: cannot be read: {exc}"]) from exc
    if not isinstance(data, dict):
        raise IntegrityError([f"{MLMODEL_FILE}: is not a mapping"])
    part = {k: data.get(k) for k in keys}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Hash every file of a saved model (and MLmodel's covered parts) into a manifest."""
    files = {rel: str(path) for rel, path in model_files(model_dir).items()}
    return Manifest(
        version=MANIFEST_VERSION,
        algorithm="sha256",
        files=hash_files(files),
        mlmodel=MLmodelDigest(keys=MLMODEL_KEYS, sha256=mlmodel_digest(model_dir)),
    )


def write_manifest(manifest: Manifest, model_dir: str | os.PathLike[str]) -> Path:
    """Write ``manifest`` as stable, human-readable JSON at the model's root; return its path."""
    path = Path(model_dir) / MANIFEST_FILE
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "top level"


def read_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read a model's manifest; :class:`IntegrityError` names a missing, unreadable or malformed one."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError(
            [f"{MANIFEST_FILE} cannot be read ({exc}); the model cannot be verified (package it again)"]
        ) from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [f"{MANIFEST_FILE} is malformed at {_where(e['loc'])}: {e['msg']}" for e in errors[:5]]
        raise IntegrityError(problems) from None


def verify_model(
    model_dir: str | os.PathLike[str],
    manifest: Manifest | None = None,
    *,
    skip_bytecode: bool = True,
    hash_contents: bool = True,
) -> Manifest:
    """Check a packaged model against its manifest; raise :class:`IntegrityError` naming each bad file.

    A changed, missing or extra file is named by its path relative to the model; a change to
    MLmodel's covered parts is named ``MLmodel``. ``skip_bytecode`` tolerates Python's byte-code
    caches (see :func:`model_files`). ``hash_contents=False`` compares names and sizes only, for
    a caller that has just verified every listed file's content another way (a signature).
    """
    if manifest is None:
        manifest = read_manifest(model_dir)
    actual = model_files(model_dir, skip_bytecode=skip_bytecode)
    problems = []
    for rel, entry in sorted(manifest.files.items()):
        found = actual.get(rel)
        if found is None or not found.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = found.stat().st_size
        if size != entry.size:
            problems.append(f"{rel}: size {size} differs from the manifest's {entry.size}")
        elif hash_contents and sha256_file(found) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest")
    problems += [f"{rel}: not in the manifest" for rel in sorted(set(actual) - set(manifest.files))]
    if mlmodel_digest(model_dir, manifest.mlmodel.keys) != manifest.mlmodel.sha256:
        covered = ", ".join(manifest.mlmodel.keys)
        problems.append(f"{MLMODEL_FILE}: its {covered} differ from the manifest's digest")
    if problems:
        raise IntegrityError(problems)
    return manifest
