"""Bearer-token authentication: ``Authorization: Bearer <key>``, compared in constant time.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.responses import JSONResponse

from flavorkit.serve.errors import APIError, MLflowError

__all__ = ["check_bearer", "mlflow_unauthorized"]

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_bearer(header: str | None, api_keys: Sequence[str]) -> None:
    """Raise a 401 :class:`APIError` unless ``header`` is ``Bearer <key>`` for one of ``api_keys``.

    Every key is compared, in constant time, whether or not an earlier one matched, so the time
    taken says nothing about which key (or how much of one) was right.
    """
    if isinstance(api_keys, str):
        raise TypeError("api_keys is a sequence of keys, not one key")
    if not header:
        raise APIError(
            401,
            "no API key given; send it as 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers=_CHALLENGE,
        )
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    matched = False
    for key in api_keys:
        matched |= hmac.compare_digest(given, key.encode())
    if scheme.lower() != "bearer" or not matched:
        raise APIError(401, "incorrect API key", code="invalid_api_key", headers=_CHALLENGE)


def mlflow_unauthorized(exc: APIError) -> JSONResponse:
    """The 401 for ``/invocations`` in MLflow's error shape (``error_code``, ``message``), as its clients parse it."""
    body = MLflowError(error_code="UNAUTHENTICATED", message=exc.message).model_dump()
    return JSONResponse(body, status_code=exc.status, headers=_CHALLENGE)
