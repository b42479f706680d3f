"""Resolve a model source (a local folder, or a Hugging Face Hub repo id) to a local directory.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Backends call :func:`resolve_model_dir` from their ``artifacts`` hook so that every backend treats
paths, Hub ids, subfolders and revisions the same way, with the same errors, then stage the folder
into their work dir with :func:`stage_tree` (or check it with :func:`check_links` before a converter
reads it in place), so that no file from outside the source is ever packaged.

Why links are checked: a model source may hold symbolic links. A Hugging Face Hub cache is made of
them (each ``snapshots/<commit>/<file>`` is a relative link into the repo's ``blobs/``), and a user's folder
may link a shared tokenizer or a folder of weights. Two things go wrong if they are passed on as they
are: MLflow refuses to copy a link whose target is outside the artifact folder, and, worse, a link to
a file outside the source (``/etc/hostname``, a token beside the checkpoint) would be read, packaged
and listed in the manifest without a word.

So every backend's ``artifacts`` hook stages a source folder with :func:`stage_tree`: each entry is
checked first (every link is resolved to its final target, which must lie inside the source root,
or in the Hub repo's own ``blobs/`` for a Hub snapshot), then the files are hard-linked (copied
where hard links are impossible) into a fresh folder holding only real files. :func:`check_links`
runs the same check without staging, for inputs a converter reads in place.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flavorkit.errors import BackendUnavailable, ModelSourceError

__all__ = [
    "ModelDir",
    "check_links",
    "looks_like_hub_id",
    "model_dir",
    "resolve_local_dir",
    "resolve_model_dir",
    "stage_tree",
]

_HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
_NEVER = "files from outside a model source are never packaged (copy the file into the source if the model needs it)"


@dataclass(frozen=True)
class ModelDir:
    """A local model folder, the source root its links may lead into, and a Hub repo's blob store.

    ``path`` is the folder holding the model files (a ``subfolder`` of the source, or the source
    itself); ``root`` is the whole source the user named (a local folder or a Hub snapshot);
    ``blobs`` is the ``blobs/`` folder of the Hub cache repo when ``root`` is a Hub snapshot.
    All three are resolved (absolute, without links).
    """

    path: Path
    root: Path
    blobs: Path | None = None

    def allows(self, real: Path) -> bool:
        """True when the resolved path ``real`` lies inside the source root or the repo's blobs."""
        return real.is_relative_to(self.root) or (self.blobs is not None and real.is_relative_to(self.blobs))

    def describe(self) -> str:
        """Where links may lead, for error messages."""
        text = f"the model source {self.root}"
        if self.blobs is not None:
            text += f" and its Hugging Face cache blobs {self.blobs}"
        return text


def _hub_blobs(root: Path) -> Path | None:
    """The repo's ``blobs/`` when ``root`` lies in a Hub cache snapshot (``models--*/snapshots/<commit>``)."""
    for folder in (root, *root.parents):
        repo = folder.parent.parent
        if folder.parent.name == "snapshots" and repo.name.startswith(_HUB_REPO_PREFIXES):
            blobs = repo / "blobs"
            return blobs.resolve() if blobs.is_dir() else None
    return None


def model_dir(folder: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None) -> ModelDir:
    """A :class:`ModelDir` for a local ``folder`` whose links may lead anywhere inside ``root`` (default: itself).

    A folder inside a Hugging Face Hub cache snapshot may also link into that repo's ``blobs/``.
    """
    path = Path(folder).resolve()
    base = Path(root).resolve() if root is not None else path
    if not path.is_relative_to(base):
        raise ModelSourceError(path, f"is not inside its model source {base}")
    return ModelDir(path=path, root=base, blobs=_hub_blobs(base))


def _as_model_dir(source: ModelDir | str | os.PathLike[str]) -> ModelDir:
    return source if isinstance(source, ModelDir) else model_dir(source)


def _walk(
    md: ModelDir, *, recursive: bool, keep: Callable[[Path], bool] | None = None
) -> Iterator[tuple[Path, Path, bool]]:
    """Yield ``(shown path, resolved path, is_dir)`` below ``md.path``, checking every entry on the way.

    The shown path is the one under ``md.path`` (what error messages name); the resolved path is what
    a link finally points at. Raises :class:`ModelSourceError` for a link leading outside
    ``md``'s roots, a broken link, a folder link back into one of its own parents, or a special file.
    """

    def visit(folder: Path, ancestors: tuple[Path, ...]) -> Iterator[tuple[Path, Path, bool]]:
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise ModelSourceError(folder, f"cannot list the folder: {exc.strerror or exc}") from exc
        for name in names:
            shown = folder / name
            if keep is not None and not keep(shown):
                continue
            real = shown
            if shown.is_symlink():
                real = Path(os.path.realpath(shown))
                if not os.path.exists(real):
                    raise ModelSourceError(shown, f"broken symbolic link to {os.readlink(shown)}")
                if not md.allows(real):
                    raise ModelSourceError(shown, f"symbolic link to {real} leads outside {md.describe()}; {_NEVER}")
            try:
                mode = os.stat(real).st_mode
            except OSError as exc:
                raise ModelSourceError(shown, f"cannot read: {exc.strerror or exc}") from exc
            if stat.S_ISDIR(mode):
                real = Path(os.path.realpath(shown))
                if real in ancestors:
                    raise ModelSourceError(shown, f"symbolic link to {real} loops back into a folder that contains it")
                yield shown, real, True
                if recursive:
                    yield from visit(shown, (*ancestors, real))
            elif stat.S_ISREG(mode):
                yield shown, real, False
            else:
                raise ModelSourceError(shown, "not a regular file or folder (a device, FIFO or socket)")

    yield from visit(md.path, (md.path,))


def check_links(source: ModelDir | str | os.PathLike[str]) -> int:
    """Check every entry below ``source`` (recursively) and return how many symbolic links it holds.

    Raises :class:`~flavorkit.errors.ModelSourceError` naming the first link that leads outside
    the source (and where it points), a broken link, a link loop or a special file. Use it before a
    converter reads a folder in place; :func:`stage_tree` runs it itself.
    """
    md = _as_model_dir(source)
    return sum(1 for shown, _, _ in _walk(md, recursive=True) if shown.is_symlink())


def stage_tree(
    source: ModelDir | str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    keep: Callable[[Path], bool] | None = None,
    recursive: bool = True,
) -> Path:
    """Stage ``source`` into ``dest`` as real files (hard links where possible, else copies).

    Every entry of the source is checked first, as by :func:`check_links`, so nothing is staged
    from a source with a link leading outside it. ``keep(path)`` (the path as found under the
    source) selects what is staged; a folder it rejects is skipped whole. ``recursive=False``
    stages only the top-level files. Links that stay inside the source become real files (a folder
    link becomes a folder), so MLflow never sees a link. Returns ``dest``.
    """
    md = _as_model_dir(source)
    check_links(md)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    for shown, real, is_dir in list(_walk(md, recursive=recursive, keep=keep)):
        target = out / shown.relative_to(md.path)
        if is_dir:
            if recursive:
                target.mkdir(parents=True, exist_ok=True)
            continue
        try:
            os.link(real, target)
        except OSError:
            shutil.copy2(real, target)
    return out


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
    # "models/phi3-int4" reads as a Hub id too; when its first folder exists here, it is a path.
    if path.exists() or not looks_like_hub_id(text) or path.parent.is_dir():
        return model_dir(_local(path, subfolder), root=path)
    patterns = _hub_patterns(subfolder, allow_patterns)
    # Every Hub id is also a relative path: a Hub error says that no such folder exists either.
    where = _where(text, subfolder, revision)
    also = f"; there is no local folder {path.resolve()} either"
    snapshot = _from_hub(text, revision=revision, allow_patterns=patterns, where=where, also=also)
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
        raise ModelSourceError(path, f"no such folder: {path.resolve()}")
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


def _from_hub(
    repo_id: str, *, revision: str | None, allow_patterns: list[str] | None, where: str, also: str = ""
) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision``, downloaded or found in the local Hub cache.

    ``also`` ends each error message (what else was tried).
    """
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
            f"(HF_HUB_OFFLINE is set, or the Hub is unreachable){also}; pass a local path instead",
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelSourceError(where, f"not found on the Hugging Face Hub{also}: {exc}") from exc
    except OSError as exc:
        raise ModelSourceError(where, f"download failed{also}: {exc}") from exc
