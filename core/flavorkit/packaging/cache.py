"""A content-keyed cache under ``~/.cache/flavorkit`` for converted models.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Conversions (GGUF to transformers, transformers to ORT-genai or ONNX) are slow and deterministic,
so their output is stored under a key derived from the input files' sha256 and the recipe. Entries
are built in a temporary sibling and renamed into place, under a file lock, so concurrent or
interrupted builds never leave a half-written entry, and the build folders of killed builds are
deleted by the next build (see ``reclaim_interrupted_builds``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from flavorkit.model.manifest import sha256_file
from flavorkit.settings import env_path

__all__ = [
    "CACHE_ENV",
    "build_scratch",
    "cache_root",
    "cached_dir",
    "content_key",
    "reclaim_interrupted_builds",
    "tree_digest",
    "try_lock",
]

CACHE_ENV = "FLAVORKIT_CACHE"


def cache_root() -> Path:
    """``$FLAVORKIT_CACHE``, else ``$XDG_CACHE_HOME/flavorkit``, else ``~/.cache/flavorkit``."""
    configured = env_path(CACHE_ENV)
    if configured is not None:
        return configured
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
def _locked(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path``; yields False (without waiting) when ``wait=False`` and it is held.

    Windows has no flock: there the lock is not taken (yields True), so concurrent builds of one
    entry are not serialised and no interrupted build is ever reclaimed as abandoned.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        yield wait
        return
    import fcntl

    with open(lock_path, "a") as fh:
        if wait:
            fcntl.flock(fh, fcntl.LOCK_EX)
        elif not try_lock(fh.fileno()):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def try_lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False while another holder has it (and on Windows)."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _tmp_key(name: str) -> str | None:
    """The key of a build folder ``.<key>.tmp-<hex>``; None for any other name."""
    if not name.startswith("."):
        return None
    key, sep, suffix = name[1:].rpartition(".tmp-")
    if not sep or not key or len(suffix) != 8 or any(c not in "0123456789abcdef" for c in suffix):
        return None
    return key


def reclaim_interrupted_builds(root: Path | None = None) -> list[Path]:
    """Delete the build folders that killed conversions left under the cache; return them.

    A build folder ``<kind>/.<key>.tmp-<hex>`` is only ever written while its builder holds
    ``<kind>/.<key>.lock``, so one whose lock is free (taken here without waiting) has no builder
    left. Folders for keys being built right now, and anything without such a lock file, stay.
    """
    root = cache_root() if root is None else root
    removed: list[Path] = []
    try:
        kinds = [Path(e.path) for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for kind in kinds:
        stale: dict[str, list[Path]] = {}
        with suppress(OSError), os.scandir(kind) as entries:
            for entry in entries:
                key = _tmp_key(entry.name)
                if key is not None and entry.is_dir(follow_symlinks=False):
                    stale.setdefault(key, []).append(Path(entry.path))
        for key, folders in stale.items():
            lock = kind / f".{key}.lock"
            if not lock.is_file() or lock.is_symlink():
                continue
            with _locked(lock, wait=False) as free:
                if free:
                    for folder in folders:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed.append(folder)
    return removed


@contextmanager
def build_scratch(out: Path) -> Iterator[Path]:
    """A scratch folder beside the build folder ``out`` of :func:`cached_dir`, removed afterwards.

    It is named like a build folder of the same key, so a build killed mid-way leaves nothing that
    the next :func:`reclaim_interrupted_builds` does not delete; tools' scratch never goes to TMPDIR.
    """
    key = _tmp_key(out.name)
    if key is None:
        raise ValueError(f"{out} is not a cache build folder")
    scratch = out.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    reclaim_interrupted_builds()  # before taking this key's lock, so its own leftovers go too
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
