"""A content-keyed cache under ``~/.cache/flavorkit`` for converted models.

Conversions (GGUF to transformers, transformers to ORT-genai or ONNX) are slow and deterministic,
so their output is stored under a key derived from the input files' sha256 and the recipe. Entries
are built in a temporary sibling and renamed into place, under a file lock, so concurrent or
interrupted builds never leave a half-written entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flavorkit.manifest import sha256_file

__all__ = ["CACHE_ENV", "cache_root", "cached_dir", "content_key", "tree_digest"]

CACHE_ENV = "FLAVORKIT_CACHE"


def cache_root() -> Path:
    """``$FLAVORKIT_CACHE``, else ``$XDG_CACHE_HOME/flavorkit``, else ``~/.cache/flavorkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flavorkit"


def tree_digest(path: str | os.PathLike[str]) -> str:
    """sha256 over every file's relative path and content digest (a file or a whole directory)."""
    root = Path(path)
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if root.is_file() else file.relative_to(root).as_posix()
        digest.update(rel.encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def content_key(recipe: Mapping[str, Any]) -> str:
    """A short stable key for a recipe dict (inputs' digests, tool versions, options)."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_dir(kind: str, key: str, build: Callable[[Path], None], *, recipe: Mapping[str, Any] | None = None) -> Path:
    """Return ``<cache>/<kind>/<key>``, calling ``build(tmpdir)`` to create it when absent.

    ``build`` writes into an empty temporary directory, which is renamed into place only if
    ``build`` returns normally. Completion is recorded in a sibling ``<key>.json`` (with the
    ``recipe``), so the cached directory holds the build's output and nothing else.
    """
    target = cache_root() / kind / key
    marker = target.with_name(f"{key}.json")
    if marker.is_file() and target.is_dir():
        return target
    with _locked(target.with_name(f".{key}.lock")):
        if marker.is_file() and target.is_dir():
            return target
        tmp = target.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            if target.exists():
                shutil.rmtree(target)  # a leftover whose build was interrupted before its marker
            os.replace(tmp, target)
            marker.write_text(json.dumps(dict(recipe or {}), indent=2, sort_keys=True, default=str) + "\n")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
