"""Resolve a model source (a local folder, or a Hugging Face Hub repo id) to a local directory.

Backends call :func:`resolve_local_dir` from their ``artifacts`` hook so that every backend treats
paths, Hub ids, subfolders and revisions the same way, with the same errors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from flavorkit.errors import BackendUnavailable, ModelSourceError

__all__ = ["looks_like_hub_id", "resolve_local_dir"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_hub_id(source: str) -> bool:
    """True for ``owner/name`` strings that are not existing local paths."""
    return bool(_HUB_ID.match(source)) and not Path(source).exists()


def resolve_local_dir(
    source: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> Path:
    """Return a readable local directory for ``source``, downloading from the Hub when needed.

    Local paths must exist and be readable directories. A Hub id is fetched with
    ``huggingface_hub.snapshot_download`` (only ``subfolder`` when given, filtered by
    ``allow_patterns``), which honours ``HF_HUB_OFFLINE`` and the local Hub cache.
    """
    text = os.fspath(source)
    if not text:
        raise ModelSourceError(repr(text), "an empty model path was given")
    subfolder = _clean_subfolder(subfolder)
    path = Path(text).expanduser()
    if path.exists() or not looks_like_hub_id(text):
        return _local(path, subfolder)
    return _from_hub(text, subfolder=subfolder, revision=revision, allow_patterns=allow_patterns)


def _clean_subfolder(subfolder: str | None) -> str | None:
    """A relative subfolder without leading or trailing slashes that cannot climb out of its source."""
    if subfolder is None:
        return None
    cleaned = subfolder.replace("\\", "/").strip("/")
    if not cleaned or any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ModelSourceError(subfolder, "subfolder must be a relative path inside the model source, without '..'")
    return cleaned


def _local(path: Path, subfolder: str | None) -> Path:
    if not path.exists():
        raise ModelSourceError(path, "no such file or directory")
    target = path / subfolder if subfolder else path
    if subfolder and not target.resolve().is_relative_to(path.resolve()):
        raise ModelSourceError(target, f"subfolder {subfolder!r} leads outside {path} (through a symbolic link)")
    if not target.exists():
        raise ModelSourceError(target, f"subfolder {subfolder!r} does not exist in {path}")
    if not target.is_dir():
        raise ModelSourceError(target, "expected a directory holding the model files")
    if not os.access(target, os.R_OK | os.X_OK):
        raise ModelSourceError(target, "directory is not readable (check its permissions)")
    return target.resolve()


def _from_hub(
    repo_id: str, *, subfolder: str | None, revision: str | None, allow_patterns: Sequence[str] | None
) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as exc:
        raise BackendUnavailable(
            "hub", "downloading from the Hugging Face Hub needs huggingface_hub", "pip install huggingface_hub"
        ) from exc
    patterns: list[str] | None = None
    if subfolder:
        base = subfolder
        patterns = [f"{base}/{p}" for p in (allow_patterns or ["*"])]
    elif allow_patterns:
        patterns = list(allow_patterns)
    where = (
        f"{repo_id}" + (f" (subfolder {subfolder!r})" if subfolder else "") + (f" at {revision}" if revision else "")
    )
    try:
        root = Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as exc:
        raise ModelSourceError(
            where,
            "not found in the local Hugging Face cache and downloading is disabled or impossible "
            "(HF_HUB_OFFLINE is set, or the Hub is unreachable); pass a local path instead",
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelSourceError(where, f"not found on the Hugging Face Hub: {exc}") from exc
    except OSError as exc:
        raise ModelSourceError(where, f"download failed: {exc}") from exc
    return _local(root, subfolder)
