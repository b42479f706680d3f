"""sha256 manifests of packaged artifacts, written at packaging time and verified at load."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flavorkit.errors import IntegrityError

__all__ = ["MANIFEST_VERSION", "build_manifest", "read_manifest", "sha256_file", "verify_manifest", "write_manifest"]

MANIFEST_VERSION = 1
_CHUNK = 4 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def build_manifest(artifacts: Mapping[str, str | os.PathLike[str]]) -> dict[str, Any]:
    """Hash every file of every artifact; keys are ``<artifact>/<relative path>``."""
    files: dict[str, dict[str, Any]] = {}
    for name, location in sorted(artifacts.items()):
        root = Path(location)
        for path in _files(root):
            rel = name if root.is_file() else f"{name}/{path.relative_to(root).as_posix()}"
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}


def write_manifest(manifest: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a manifest as stable, human-readable JSON."""
    Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a manifest, raising :class:`IntegrityError` if it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntegrityError([f"manifest {path} cannot be read: {exc}"]) from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise IntegrityError([f"manifest {path} is malformed"])
    return data


def verify_manifest(manifest: Mapping[str, Any], artifacts: Mapping[str, str | os.PathLike[str]]) -> None:
    """Check packaged artifacts against ``manifest``; raise :class:`IntegrityError` naming each bad file."""
    actual: dict[str, Path] = {}
    for name, location in artifacts.items():
        root = Path(location)
        if not root.exists():
            continue
        for path in _files(root):
            rel = name if root.is_file() else f"{name}/{path.relative_to(root).as_posix()}"
            actual[rel] = path
    problems = []
    expected: Mapping[str, Mapping[str, Any]] = manifest["files"]
    for rel, entry in sorted(expected.items()):
        found = actual.get(rel)
        if found is None:
            problems.append(f"{rel}: missing")
            continue
        size = found.stat().st_size
        if size != entry.get("size"):
            problems.append(f"{rel}: size {size} differs from the manifest's {entry.get('size')}")
        elif sha256_file(found) != entry.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest")
    problems += [f"{rel}: not in the manifest" for rel in sorted(set(actual) - set(expected))]
    if problems:
        raise IntegrityError(problems)
