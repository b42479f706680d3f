"""Pinned pip requirements for packaged models.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from flavorkit.errors import PackagingError

__all__ = ["CORE_RUNTIME", "core_requirements", "installed_version", "merge_requirements", "pinned"]

#: What a packaged model needs at load time besides its backend: MLflow's pyfunc loader and
#: scoring server (mlflow-skinny with pandas and numpy: an onnx-cpu environment is 399 MB, against
#: 965 MB for the full mlflow with its tracking server and UI) and flavorkit's own code (shipped
#: inside the model), which imports pluggy, pydantic and packaging.
CORE_RUNTIME = ("mlflow-skinny", "pandas", "numpy", "pluggy", "pydantic", "packaging")


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return md.version(distribution)
    except md.PackageNotFoundError:
        return None


def pinned(distribution: str, *, extras: Iterable[str] = ()) -> str:
    """``name==installed_version`` for ``distribution``; fails clearly if it is not installed."""
    try:
        version = md.version(distribution)
    except md.PackageNotFoundError as exc:
        raise PackagingError(
            f"cannot pin {distribution!r}: it is not installed in this environment (pip install {distribution})"
        ) from exc
    extra = f"[{','.join(sorted(extras))}]" if extras else ""
    # Drop a local label (torch "2.13.0+cpu"): PyPI has no such file, and "==2.13.0" still matches
    # the local build where a wheel folder or index provides it.
    return f"{distribution}{extra}=={Version(version).public}"


def core_requirements() -> list[str]:
    """The pinned requirements of flavorkit's own runtime code."""
    return [pinned(d) for d in CORE_RUNTIME]


def merge_requirements(*groups: Iterable[str]) -> list[str]:
    """Concatenate requirement lists, dropping repeats and refusing conflicting pins of one name."""
    seen: dict[str, str] = {}
    for group in groups:
        for text in group:
            name = canonicalize_name(Requirement(text).name)
            if name in seen and seen[name] != text:
                raise PackagingError(f"conflicting requirements for {name}: {seen[name]!r} and {text!r}")
            seen.setdefault(name, text)
    return list(seen.values())
