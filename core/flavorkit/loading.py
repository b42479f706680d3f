"""Load a packaged flavorkit model from its MLflow artifacts and configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flavorkit.errors import PackagingError
from flavorkit.manifest import read_manifest, verify_manifest
from flavorkit.registry import Backend, get_registry
from flavorkit.runtime import LoadedModel

__all__ = ["MANIFEST_ARTIFACT", "VERIFY_ENV", "load_packaged", "resolve_backend"]

#: Name of the artifact that holds the sha256 manifest of all other artifacts.
MANIFEST_ARTIFACT = "flavorkit_manifest"
#: Set to 0 to skip the integrity check at load (for example on a read-only, pre-verified mount).
VERIFY_ENV = "FLAVORKIT_VERIFY_ARTIFACTS"


def resolve_backend(config: Mapping[str, Any]) -> Backend:
    """Find the packaged backend: its entry point if installed, else the shipped plugin object."""
    name = config["backend"]
    plugin = config.get("plugin", {})
    registry = get_registry()
    if name in registry.names():
        backend = registry.get(name, require_available=False)
        if not plugin.get("object") or backend.object_path == plugin["object"]:
            backend.check_available()
            return backend
    if not plugin.get("object"):
        registry.get(name)  # raises BackendNotFound with the list of installed backends
    backend = registry.load_object(name, plugin["object"])
    backend.check_available()
    return backend


def load_packaged(artifacts: Mapping[str, str], config: Mapping[str, Any]) -> LoadedModel:
    """Verify the artifacts against the manifest, load the backend and wrap it in the contract."""
    if "backend" not in config:
        raise PackagingError("model_config has no 'backend': this is not a flavorkit model")
    files = {k: v for k, v in artifacts.items() if k != MANIFEST_ARTIFACT}
    if os.environ.get(VERIFY_ENV, "1") != "0":
        if MANIFEST_ARTIFACT not in artifacts:
            raise PackagingError("the model has no flavorkit_manifest artifact; it cannot be verified")
        verify_manifest(read_manifest(artifacts[MANIFEST_ARTIFACT]), files)
    backend = resolve_backend(config)
    handle = backend.load(files, dict(config.get("options", {})))
    try:
        return LoadedModel(
            backend,
            handle,
            task=config.get("task", "llm/v1/chat"),
            defaults=config.get("generation", {}),
            model_name=config.get("model_name"),
        )
    except BaseException:
        backend.unload(handle)  # do not keep the weights of a model that failed to load
        raise
