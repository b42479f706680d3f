"""flavorkit: package a language model with any inference backend as an MLflow model in one call.

The public surface is small and stable::

    import flavorkit
    info = flavorkit.package(model="models/phi3-int4", backend="onnx-cpu")
    flavorkit.backends()          # what is installed, and what is missing
    @flavorkit.hookimpl           # marks a backend's hook implementations

Importing flavorkit is cheap: MLflow, torch and onnxruntime are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flavorkit._version import __version__
from flavorkit.errors import (
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    FlavorkitError,
    IntegrityError,
    InvalidRequest,
    ModelConfigError,
    ModelSourceError,
    PackagingError,
    PluginSpecError,
    SignatureError,
)
from flavorkit.hookspec import SPEC_VERSION, hookimpl
from flavorkit.registry import backends
from flavorkit.types import Artifacts, Capability, Delta, GenerationRequest, GenerationSession, RuntimeInfo

if TYPE_CHECKING:
    from flavorkit.packager import package as package

__all__ = [
    "SPEC_VERSION",
    "Artifacts",
    "BackendError",
    "BackendNotFound",
    "BackendUnavailable",
    "Capability",
    "Delta",
    "FlavorkitError",
    "GenerationRequest",
    "GenerationSession",
    "IntegrityError",
    "InvalidRequest",
    "ModelConfigError",
    "ModelSourceError",
    "PackagingError",
    "PluginSpecError",
    "RuntimeInfo",
    "SignatureError",
    "__version__",
    "backends",
    "hookimpl",
    "package",
]


def __getattr__(name: str) -> Any:
    # The packager imports MLflow machinery; load it on first use so `import flavorkit` stays light.
    if name == "package":
        from flavorkit.packager import package

        return package
    raise AttributeError(f"module 'flavorkit' has no attribute {name!r}")
