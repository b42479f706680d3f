"""Stage a model source folder into the packaging work dir as real files, refusing links that lead out.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A model source may hold symbolic links: a Hugging Face Hub cache is made of them (each
``snapshots/<commit>/<file>`` is a relative link into the repo's ``blobs/``), and a user's folder
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
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flavorkit.errors import ModelSourceError

__all__ = ["ModelDir", "check_links", "model_dir", "stage_tree"]

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
