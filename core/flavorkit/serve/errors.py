"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

:class:`ErrorResponse` is that shape as a model (the OpenAPI document shows it), and
:class:`MLflowError` the shape of ``/invocations``' errors, MLflow's ``{"error_code", "message"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse

from flavorkit.errors import InvalidRequest, NotAFlavorkitModel
from flavorkit.schema import UnsupportedFields

__all__ = [
    "APIError",
    "ErrorDetail",
    "ErrorResponse",
    "MLflowError",
    "NotAFlavorkitModel",
    "error_body",
    "from_invalid_request",
]


class ErrorDetail(BaseModel):
    """OpenAI's error object: what went wrong, its kind, the request field at fault and a code."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error of the ``/v1`` routes (and of the server's own limits on any route)."""

    error: ErrorDetail


class MLflowError(BaseModel):
    """MLflow's error body on ``/invocations``; MLflow may add fields (``error_class``, ``stack_trace``)."""

    model_config = ConfigDict(extra="allow")

    error_code: str
    message: str


class APIError(Exception):
    """An error answered to the client with ``status`` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """The HTTP response for this error."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()


def from_invalid_request(exc: InvalidRequest, prefix: str = "") -> APIError:
    """A flavorkit request error as a 400 naming the field (``param``) and the allowed values.

    The code is ``unsupported_parameter`` for fields the backend cannot honour yet, else ``invalid_value``.
    """
    param = f"{prefix}{exc.field}" if prefix else exc.field
    code = "unsupported_parameter" if isinstance(exc, UnsupportedFields) else "invalid_value"
    return APIError(400, str(exc), param=param, code=code)
