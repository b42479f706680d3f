"""The import path of :mod:`flavorkit.model.loading` before the wings, kept for models already packaged.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

A model packaged by flavorkit 0.x before the move ships a ``mlflow_model.py`` that imports
``flavorkit.loading``; where an installed flavorkit answers that import (a server that imported
flavorkit first), this module must still provide what that file calls.
"""

from __future__ import annotations

from flavorkit.model.loading import (
    MANIFEST_ARTIFACT,
    TRUSTED_KEY_ENV,
    VERIFY_ENV,
    load_packaged,
    resolve_backend,
    verify_packaged,
)

__all__ = ["MANIFEST_ARTIFACT", "TRUSTED_KEY_ENV", "VERIFY_ENV", "load_packaged", "resolve_backend", "verify_packaged"]
