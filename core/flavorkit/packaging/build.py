"""A logged subprocess build with a content-keyed cache: how plugins run converters and exporters.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Converters (onnxruntime-genai's model builder, Optimum's ONNX export) import torch and
transformers and peak at several times a model's size, none of which should stay in the caller's
process, and they are slow and deterministic. :func:`cached_build` runs one as a subprocess whose
output goes to a log file (the last lines are quoted in the error when it fails, and the whole
log is kept beside the cache entry), and caches what it writes under
``<flavorkit cache>/<kind>/<key>``, the key being a digest of the recipe: the inputs' content,
the options, and the installed versions of the tools that do the work. Installing another
version of a tool therefore builds (and keeps) a separate entry instead of reusing the old one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flavorkit.errors import PackagingError
from flavorkit.packaging.cache import build_scratch, cache_root, cached_dir, content_key
from flavorkit.packaging.progress import step
from flavorkit.packaging.requirements import installed_version

__all__ = ["TAIL_LINES", "cached_build", "tool_versions"]

#: How many lines of a failed build's log are quoted in its error.
TAIL_LINES = 15


def tool_versions(distributions: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution (``"missing"`` for one that is not installed), for a recipe."""
    return {name: installed_version(name) or "missing" for name in distributions}


def _failed_log(kind: str, key: str) -> Path:
    return cache_root() / kind / f"{key}.failed.log"


def cached_build(
    kind: str,
    recipe: Mapping[str, Any],
    command: Callable[[Path, Path], Sequence[str]],
    *,
    title: str,
    failure: str,
    produced: Callable[[Path], bool],
    tools: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> Path:
    """Return ``<cache>/<kind>/<key>``, running ``command(out, scratch)`` in a subprocess to build it when absent.

    ``recipe`` holds what determines the output (inputs' digests, options); the installed versions
    of ``tools`` are added to it as ``"tools"``, and the key is :func:`~flavorkit.packaging.cache.content_key`
    of the whole. ``command`` gets the empty output folder and a scratch folder for temporary
    files (removed afterwards, and reclaimed if the build is killed) and returns the argument
    vector; stdout and stderr go to a log, and ``title`` is shown as a progress step. A build that
    exits non-zero, or after which ``produced(out)`` is false, raises :class:`PackagingError`
    starting with ``failure``, with the exit status and the log's last lines; the whole log is kept
    as ``<cache>/<kind>/<key>.failed.log`` (deleted by the next successful build) and the entry is
    not created, so nothing half-written is ever served from the cache.
    """
    full = dict(recipe)
    if tools:
        full["tools"] = tool_versions(tools)
    key = content_key(full)

    def build(out: Path) -> None:
        with build_scratch(out) as scratch:
            argv = [str(arg) for arg in command(out, scratch)]
            log = scratch / "build.log"
            with step(title), open(log, "w") as fh:
                proc = subprocess.run(
                    argv,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=None if env is None else dict(env),
                    check=False,
                )
            if proc.returncode == 0 and produced(out):
                return
            kept = _failed_log(kind, key)
            shutil.copyfile(log, kept)
            lines = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-TAIL_LINES:]
            status = f"exit {proc.returncode}" if proc.returncode else "exit 0 but it wrote no usable output"
            raise PackagingError(f"{failure} ({status}):\n" + "\n".join(lines) + f"\n(full log: {kept})")

    target = cached_dir(kind, key, build, recipe=full)
    stale = _failed_log(kind, key)
    if stale.exists():
        os.unlink(stale)
    return target
