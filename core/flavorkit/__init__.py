"""flavorkit: package a language model with any inference backend as an MLflow model in one call.

Three surfaces are public and stable; every other module is internal and says so in its docstring:

- ``flavorkit`` (this package), for users: :func:`package`, :func:`backends`, :func:`demo_model`
  (SmolLM2-135M-Instruct, offline, for first steps and tutorials), the errors and the data types.
  A packaged model is loaded with ``mlflow.pyfunc.load_model`` and served with ``flavorkit serve``
  (or :func:`flavorkit.serve.create_app`).
- :mod:`flavorkit.sdk`, for backend plugin authors: everything a plugin imports (``hookimpl``, the
  types, the errors, ``HandleHooks`` and the source, cache, requirement and progress helpers).
- :mod:`flavorkit.testing`, the conformance kit: ``BackendConformance``, its pytest plugin
  :mod:`flavorkit.testing.plugin` and the small real models of :mod:`flavorkit.testing.models`.

::

    import flavorkit
    info = flavorkit.package(model=flavorkit.demo_model(), backend="onnx-cpu")
    flavorkit.backends()          # what is installed, and what is missing

Importing flavorkit is cheap: MLflow, torch and onnxruntime are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flavorkit._version import __version__
from flavorkit.backend.hookspec import SPEC_VERSION, hookimpl
from flavorkit.backend.registry import backends
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
from flavorkit.types import Artifacts, Capability, Delta, GenerationRequest, GenerationSession, RuntimeInfo

if TYPE_CHECKING:
    from flavorkit.demo.smollm2 import checkpoint as demo_model
    from flavorkit.packaging.packager import package as package

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
    "demo_model",
    "hookimpl",
    "package",
]


def __getattr__(name: str) -> Any:
    # The packager imports MLflow machinery; load it on first use so `import flavorkit` stays light.
    if name == "package":
        from flavorkit.packaging.packager import package

        return package
    if name == "demo_model":
        from flavorkit.demo.smollm2 import checkpoint as demo_model

        return demo_model
    raise AttributeError(f"module 'flavorkit' has no attribute {name!r}")
