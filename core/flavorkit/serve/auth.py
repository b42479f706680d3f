"""Bearer-token authentication: ``Authorization: Bearer <key>``, compared in constant time.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.
"""

from __future__ import annotations

import hmac

from flavorkit.serve.errors import APIError

__all__ = ["check_bearer"]


def check_bearer(header: str | None, api_key: str) -> None:
    """Raise a 401 :class:`APIError` unless ``header`` is ``Bearer <api_key>``."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if not header:
        raise APIError(
            401,
            "no API key given; send it as 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers=challenge,
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key", headers=challenge)
