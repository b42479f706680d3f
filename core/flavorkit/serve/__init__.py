"""``flavorkit serve``: an OpenAI-compatible HTTP server for any packaged flavorkit model.

``create_app(model_uri, ...)`` returns the ASGI app (run it under any ASGI server or mount it);
``run(model_uri, ...)`` serves it with uvicorn. Needs the ``serve`` extra
(``pip install "flavorkit[serve]"``).
"""

from __future__ import annotations

from flavorkit.serve.app import DEFAULTS, FlavorkitApp, create_app, default_model_name, load_flavorkit_model, run

__all__ = ["DEFAULTS", "FlavorkitApp", "create_app", "default_model_name", "load_flavorkit_model", "run"]
