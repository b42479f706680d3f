"""Load a packaged flavorkit model: verify it, read its typed configuration, then load the backend.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Order matters: the signature (when a trusted key is configured) and the manifest are checked
before any backend code is imported, and the configuration is validated before the backend's
``load`` hook sees it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flavorkit.backend.registry import Backend, get_registry
from flavorkit.errors import PackagingError
from flavorkit.model.config import PackagedConfig
from flavorkit.model.manifest import Manifest, verify_model
from flavorkit.model.signing import TRUSTED_KEY_ENV, trusted_key, verify_signature
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.settings import env_flag

__all__ = ["MANIFEST_ARTIFACT", "TRUSTED_KEY_ENV", "VERIFY_ENV", "load_packaged", "resolve_backend", "verify_packaged"]

#: An artifact name reserved by flavorkit (models packaged before the whole-model manifest kept it there).
MANIFEST_ARTIFACT = "flavorkit_manifest"
#: Set to false (or 0, no, off) to skip the integrity check at load (for example on a read-only, pre-verified mount).
VERIFY_ENV = "FLAVORKIT_VERIFY_ARTIFACTS"


def resolve_backend(config: PackagedConfig) -> Backend:
    """Find the packaged backend: its entry point if installed, else the shipped plugin object."""
    name, obj = config.backend, config.plugin.object
    registry = get_registry()
    if name in registry.names():
        backend = registry.get(name, require_available=False)
        if not obj or backend.object_path == obj:
            backend.check_available()
            return backend
    if not obj:
        registry.get(name)  # raises BackendNotFound with the list of installed backends
    backend = registry.load_object(name, obj)
    backend.check_available()
    return backend


def verify_packaged(
    model_dir: str | os.PathLike[str], *, public_key: str | os.PathLike[str] | None = None, strict: bool = True
) -> Manifest:
    """Check a packaged model's signature (with ``public_key``) and its manifest; return the manifest.

    Raises :class:`~flavorkit.errors.SignatureError` or :class:`~flavorkit.errors.IntegrityError`
    naming what failed. ``strict=False`` (the loader) tolerates Python byte-code caches, which
    importing the shipped code writes into a writable model folder; ``flavorkit verify`` is strict.
    """
    if public_key is None:
        return verify_model(model_dir, skip_bytecode=not strict)
    verify_signature(model_dir, public_key, ignore_unsigned_files=not strict)
    # A flavorkit signature covers the manifest and every file it lists, so the loader need not
    # hash the weights a second time: it checks that no file was added and MLmodel's digest.
    # ``flavorkit verify`` (strict) hashes everything again, whoever made the signature.
    return verify_model(model_dir, skip_bytecode=not strict, hash_contents=strict)


def load_packaged(
    artifacts: Mapping[str, str], config: Mapping[str, Any] | None, model_dir: str | os.PathLike[str] | None
) -> LoadedModel:
    """Verify the model, check its configuration, load the backend and wrap it in the contract.

    ``model_dir`` is the packaged model's root (the folder of its models-from-code file). With
    ``FLAVORKIT_TRUSTED_KEY`` set, an unsigned or badly signed model is refused; otherwise the
    manifest is checked unless ``FLAVORKIT_VERIFY_ARTIFACTS`` is false.
    """
    key = trusted_key()
    if key is not None or env_flag(VERIFY_ENV):
        if model_dir is None:
            raise PackagingError("the packaged model's folder is unknown, so it cannot be verified")
        verify_packaged(Path(model_dir), public_key=key, strict=False)
    packaged = PackagedConfig.from_model_config(config)
    backend = resolve_backend(packaged)
    options = packaged.checked_options(backend)
    files = {k: v for k, v in artifacts.items() if k != MANIFEST_ARTIFACT}
    handle = backend.load(files, options)
    try:
        return LoadedModel(
            backend,
            handle,
            task=packaged.task,
            defaults=packaged.generation,
            model_name=packaged.model_name,
            prompt_format=packaged.prompt_format,
            options=options,
        )
    except BaseException:
        backend.unload(handle)  # do not keep the weights of a model that failed to load
        raise
