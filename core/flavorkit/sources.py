"""Resolve a model source (a local folder, or a Hugging Face Hub repo id) to a local directory.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Backends call :func:`resolve_model_dir` from their ``artifacts`` hook so that every backend treats
paths, Hub ids, subfolders and revisions the same way, with the same errors, then stage the folder
into their work dir with :func:`stage_tree` (or check it with :func:`check_links` before a converter
reads it in place), so that no file from outside the source is ever packaged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from flavorkit.errors import BackendUnavailable, ModelSourceError
from flavorkit.source_tree import ModelDir, check_links, model_dir, stage_tree

__all__ = [
    "ModelDir",
    "check_links",
    "looks_like_hub_id",
    "model_dir",
    "resolve_local_dir",
    "resolve_model_dir",
    "stage_tree",
]

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

    The folder may hold symbolic links (a Hub snapshot always does): stage it with
    :func:`stage_tree`, or use :func:`resolve_model_dir`, which also says where its links may lead.
    """
    return resolve_model_dir(source, subfolder=subfolder, revision=revision, allow_patterns=allow_patterns).path


def resolve_model_dir(
    source: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
) -> ModelDir:
    """Resolve ``source`` to a :class:`ModelDir`: the model folder and the roots its links may lead into.

    Local paths must exist and be readable directories; their root is the folder given (so a
    ``subfolder`` may link elsewhere inside it). A Hub id is fetched with
    ``huggingface_hub.snapshot_download`` (only ``subfolder`` when given, filtered by
    ``allow_patterns``), which honours ``HF_HUB_OFFLINE`` and falls back to the local Hub cache when
    the Hub is unreachable; its root is the snapshot, and its links may also lead into the repo's
    ``blobs/``.
    """
    text = os.fspath(source)
    if not text:
        raise ModelSourceError(repr(text), "an empty model path was given")
    subfolder = _clean_subfolder(subfolder)
    path = Path(text).expanduser()
    if path.exists() or not looks_like_hub_id(text):
        return model_dir(_local(path, subfolder), root=path)
    patterns = _hub_patterns(subfolder, allow_patterns)
    snapshot = _from_hub(text, revision=revision, allow_patterns=patterns, where=_where(text, subfolder, revision))
    return model_dir(_local(snapshot, subfolder), root=snapshot)


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


def _hub_patterns(subfolder: str | None, allow_patterns: Sequence[str] | None) -> list[str] | None:
    if subfolder:
        return [f"{subfolder}/{p}" for p in (allow_patterns or ["*"])]
    return list(allow_patterns) if allow_patterns else None


def _where(repo_id: str, subfolder: str | None, revision: str | None) -> str:
    return repo_id + (f" (subfolder {subfolder!r})" if subfolder else "") + (f" at {revision}" if revision else "")


def _from_hub(repo_id: str, *, revision: str | None, allow_patterns: list[str] | None, where: str) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision``, downloaded or found in the local Hub cache."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as exc:
        raise BackendUnavailable(
            "hub", "downloading from the Hugging Face Hub needs huggingface_hub", "pip install huggingface_hub"
        ) from exc
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns))
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
