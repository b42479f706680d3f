"""Pinned pip requirements for packaged models.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.
"""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

from flavorkit.errors import PackagingError

__all__ = [
    "CORE_RUNTIME",
    "core_requirements",
    "extra_requirements",
    "installed_version",
    "merge_requirements",
    "pinned",
]

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


#: Lower bounds before upper ones in a formatted specifier: ``>=0.15,<0.19`` reads as a range.
_OPERATOR_ORDER = {op: rank for rank, op in enumerate((">=", ">", "~=", "==", "===", "!=", "<=", "<"))}


def _readable(req: Requirement) -> str:
    """``req`` without its marker, its specifiers ordered lower bound first (metadata sorts them as text)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    if req.url:
        return f"{req.name}{extras} @ {req.url}"
    specs = sorted(req.specifier, key=lambda s: (_OPERATOR_ORDER.get(s.operator, 99), s.version))
    return req.name + extras + ",".join(str(s) for s in specs)


def extra_requirements(extra: str, *, distribution: str = "flavorkit", fallback: Iterable[str] = ()) -> list[str]:
    """The requirements ``pip install 'distribution[extra]'`` adds, read from the installed distribution's metadata.

    This keeps version ranges in one place (the extras in ``pyproject.toml``): a first-party
    backend's ``dependencies()`` returns ``extra_requirements("onnx")`` instead of restating them.
    The distribution's own extras named inside the extra (``flavorkit[onnx-convert]`` within
    ``quickstart``) are expanded, environment markers are evaluated here and dropped, and repeats
    are removed. Where ``distribution`` is not installed (a packaged model loaded in an environment
    made from its pinned requirements alone, with flavorkit's code shipped inside the model), the
    bare names in ``fallback`` are returned. An extra the installed distribution does not declare
    raises ``LookupError`` naming the extras it has.
    """
    try:
        meta = md.metadata(distribution)
    except md.PackageNotFoundError:
        return list(fallback)
    own = canonicalize_name(meta["Name"] or distribution)
    declared = {canonicalize_name(e) for e in meta.get_all("Provides-Extra") or []}
    requires = [Requirement(text) for text in meta.get_all("Requires-Dist") or []]
    found: dict[str, str] = {}

    def add(name: NormalizedName, seen: frozenset[NormalizedName]) -> None:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise LookupError(f"{distribution} {meta['Version']} has no extra {name!r} (its extras: {known})")
        for req in requires:
            if req.marker is None or not req.marker.evaluate({"extra": name}):
                continue  # a core requirement, another extra's, or not for this platform
            if canonicalize_name(req.name) == own:
                for nested in sorted(canonicalize_name(e) for e in req.extras):
                    if nested not in seen:
                        add(nested, seen | {nested})
                continue
            text = _readable(req)
            found.setdefault(text, text)

    root = canonicalize_name(extra)
    add(root, frozenset({root}))
    return list(found)
