"""``flavorkit serve``: an OpenAI-compatible HTTP server for any packaged flavorkit model.

``create_app(model_uri, ...)`` returns the ASGI app (run it under any ASGI server or mount it);
``run(model_uri, ...)`` serves it with uvicorn; both take :class:`ServeSettings` (or its fields by
keyword). Needs the ``serve`` extra (``pip install "flavorkit[serve]"``).
"""

from __future__ import annotations

from flavorkit.serve.app import DEFAULTS, FlavorkitApp, create_app, default_model_name, load_flavorkit_model, run
from flavorkit.settings import ServeSettings

__all__ = [
    "DEFAULTS",
    "FlavorkitApp",
    "ServeSettings",
    "create_app",
    "default_model_name",
    "load_flavorkit_model",
    "run",
]
