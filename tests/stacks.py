"""Which runtime stack the suite runs on, and the skip for tests that need the optimum-onnx backend.

The suite runs in two environments (DEVELOPERS.md, "Two stacks"): *compatible* (transformers 4.57,
onnxruntime-genai 0.15.2, optimum-onnx) and *current* (transformers 5, onnxruntime-genai 0.18).
No optimum-onnx release supports transformers 5, so optimum tests skip in the current one, with
the reason ``flavorkit backends`` gives. ``make pytest-current`` sets ``FLAVORKIT_STACK=current``;
anywhere else under ``CI=1`` a missing optimum stack is an error, not a skip.
"""

from __future__ import annotations

import importlib.metadata as md
import os

import pytest
from packaging.version import Version

#: ``current`` in the second environment of ``make test`` (set by ``make pytest-current``).
STACK = os.environ.get("FLAVORKIT_STACK", "compatible")


def _installed(distribution: str) -> Version | None:
    try:
        return Version(md.version(distribution))
    except md.PackageNotFoundError:
        return None


def transformers_major() -> int:
    """The installed transformers' major version (0 when it is not installed)."""
    version = _installed("transformers")
    return version.major if version is not None else 0


def optimum_unavailable() -> str | None:
    """Why the optimum-onnx backend cannot run here (None when it can), in ``flavorkit backends``' words.

    Decided from what is installed (optimum-onnx with a transformers below 4.58, which is what its
    0.1.0 release pins), independently of the registry, whose message only supplies the wording.
    """
    tf = _installed("transformers")
    if _installed("optimum-onnx") is not None and tf is not None and tf < Version("4.58"):
        return None
    from flavorkit.backend.registry import get_registry

    status = {s.name: s for s in get_registry().statuses()}.get("optimum-onnx")
    reason = status.error if status is not None and status.error else "the optimum-onnx stack is not installed"
    if os.environ.get("CI") and STACK != "current":
        raise RuntimeError(f"CI's {STACK} environment must have the optimum-onnx backend: {reason}")
    return f"optimum-onnx unavailable: {reason}"


_REASON = optimum_unavailable()
#: Skips a test (or, as ``pytestmark``, a module) where the optimum-onnx backend cannot run.
needs_optimum = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def optimum_param(values: object = "optimum-onnx", *, id: str | None = None) -> object:
    """``pytest.param`` of ``values`` (a tuple for several arguments) that skips where optimum-onnx cannot run."""
    args = values if isinstance(values, tuple) else (values,)
    return pytest.param(*args, marks=needs_optimum, id=id)
