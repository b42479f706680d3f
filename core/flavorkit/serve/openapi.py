"""The server's OpenAPI 3.1 document (``GET /openapi.json``), built from its own pydantic models.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

The schemas are pydantic's JSON schemas of the models the server answers with or describes its
bodies by: the request bodies of :mod:`flavorkit.serve.openai_api` (the core's request models plus
the HTTP-only fields), the response objects of :mod:`flavorkit.responses`, the model list, the
version, and both error shapes of :mod:`flavorkit.serve.errors`. Only the operations (which route
answers which status with which shape) are written here, one per route in :data:`_OPERATIONS`:
:func:`build_openapi` walks the app's own routes and raises for a route that has none, so a route
cannot be added without its description. The document is built once, when the app is created.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from flavorkit.responses import ChatCompletion, ChatCompletionChunk, TextCompletion
from flavorkit.serve.errors import ErrorResponse, MLflowError
from flavorkit.serve.openai_api import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from flavorkit.serve.routes import VersionInfo
from flavorkit.signatures import CHAT

__all__ = ["OPENAPI_VERSION", "SECURITY_SCHEME", "OpenAPIDocument", "build_openapi", "component_schemas"]

OPENAPI_VERSION = "3.1.0"
#: The name of the bearer-key scheme in ``components.securitySchemes`` (present when keys are set).
SECURITY_SCHEME = "bearer"
_REF = "#/components/schemas/{model}"

#: Every model the document shows, and whether as a request (validation) or a response (serialization).
_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (ChatCompletionRequest, "validation"),
    (CompletionRequest, "validation"),
    (ChatCompletion, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (TextCompletion, "serialization"),
    (ModelList, "serialization"),
    (ModelCard, "serialization"),
    (VersionInfo, "serialization"),
    (ErrorResponse, "serialization"),
    (MLflowError, "serialization"),
)


#: Pydantic's names of numeric bounds, and JSON Schema's.
_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _json_schema_bounds(node: Any) -> Any:
    """``node`` with pydantic's raw ``gt``/``ge``/``lt``/``le`` on numbers renamed to JSON Schema's keywords.

    Pydantic writes a bound as it is named in ``Field`` when the number type carries a validator of
    its own (the core's ``Integer`` and ``Number``, which refuse strings and booleans); JSON Schema
    knows no such keywords, so without this the document would show ``top_p`` unbounded.
    """
    if isinstance(node, list):
        return [_json_schema_bounds(item) for item in node]
    if not isinstance(node, dict):
        return node
    numeric = node.get("type") in ("number", "integer")
    return {
        (_BOUNDS[key] if numeric and key in _BOUNDS else key): _json_schema_bounds(value) for key, value in node.items()
    }


def component_schemas() -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    """The ``$ref`` of each shown model, and every schema for ``components.schemas``."""
    keys, defs = models_json_schema(_MODELS, ref_template=_REF)
    schemas = _json_schema_bounds(dict(defs.get("$defs", {})))
    refs = {model: ref for (model, _), ref in keys.items() if issubclass(model, BaseModel)}
    return refs, schemas


@dataclass(frozen=True)
class _Context:
    """What the operations depend on: the schemas' refs, the served model, and which routes need a key."""

    refs: dict[type[BaseModel], dict[str, Any]]
    served_name: str
    task: str
    protected: tuple[str, ...]

    def json(self, model: type[BaseModel]) -> dict[str, Any]:
        """A JSON body of ``model``."""
        return {"application/json": {"schema": self.refs[model]}}

    def error(self, description: str, model: type[BaseModel] = ErrorResponse) -> dict[str, Any]:
        """An error response in ``model``'s shape."""
        return {"description": description, "content": self.json(model)}


def _event(ctx: _Context, chunk: type[BaseModel]) -> dict[str, Any]:
    """One server-sent event of a stream (each event as an object, as OpenAPI 3.2's ``itemSchema`` reads it)."""
    return {
        "type": "object",
        "description": (
            f"One event of the stream: `data` holds one {chunk.__name__} as JSON, or `[DONE]` after the last. "
            "With `stream_options.include_usage`, the event before `[DONE]` has no choices and carries the "
            "usage. An error after the stream began (the request timeout) is one event holding an "
            "ErrorResponse, and the stream ends."
        ),
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [ctx.refs[chunk], ctx.refs[ErrorResponse]]},
                    },
                    {"const": "[DONE]"},
                ]
            }
        },
    }


def _limits(ctx: _Context, *, generation: bool) -> dict[str, Any]:
    """The errors of the server's own limits on a route that queues work."""
    out: dict[str, Any] = {
        "413": ctx.error("The body is larger than the server's `max_body_bytes` (`request_too_large`)."),
        "429": ctx.error("The server's queue is full (`queue_full`); retry after `Retry-After` seconds."),
        "503": ctx.error("The server is shutting down (`shutting_down`)."),
        "504": ctx.error("The request outlived the server's `request_timeout` (`request_timeout`)."),
    }
    if generation:
        out["500"] = ctx.error("Generation failed in the backend (`internal_error`).")
    return out


def _generation(
    ctx: _Context,
    *,
    operation_id: str,
    summary: str,
    request: type[BaseModel],
    answer: type[BaseModel],
    chunk: type[BaseModel],
    task_ok: bool,
    example: dict[str, Any],
) -> dict[str, Any]:
    """``POST /v1/chat/completions`` or ``/v1/completions``: JSON or a stream, OpenAI's errors."""
    other = "/v1/completions" if ctx.task == CHAT else "/v1/chat/completions"
    served = (
        f"This server's model ({ctx.served_name!r}) answers here."
        if task_ok
        else f"This server's model ({ctx.served_name!r}) answers on {other}: here every request is a 404 "
        "(`unsupported_endpoint`)."
    )
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{served} `null` in a field is taken as not given.",
        "tags": ["OpenAI"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ctx.refs[request],
                    "examples": {
                        "whole": {"summary": "One JSON answer", "value": example},
                        "stream": {
                            "summary": "Server-sent events, the usage last",
                            "value": {**example, "stream": True, "stream_options": {"include_usage": True}},
                        },
                    },
                }
            },
        },
        "responses": {
            "200": {
                "description": f"The {answer.__name__} object, or its chunks as server-sent events.",
                "content": {
                    **ctx.json(answer),
                    "text/event-stream": {"schema": _event(ctx, chunk)},
                },
            },
            "400": ctx.error(
                "The body is not JSON (`invalid_json`), not an object (`invalid_body`), has unknown fields "
                "(`unknown_field`), a bad value (`invalid_value`, `param` names the field), or a value this "
                "backend cannot honour (`unsupported_parameter`); a prompt longer than the model's context."
            ),
            "404": ctx.error(
                "`model` names another model (`model_not_found`), or the served model answers on the other "
                "generation route (`unsupported_endpoint`)."
            ),
            **_limits(ctx, generation=True),
        },
    }


def _chat(ctx: _Context) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Hello!"}]
    return _generation(
        ctx,
        operation_id="createChatCompletion",
        summary="Answer a conversation (OpenAI's chat completions)",
        request=ChatCompletionRequest,
        answer=ChatCompletion,
        chunk=ChatCompletionChunk,
        task_ok=ctx.task == CHAT,
        example={"model": ctx.served_name, "messages": messages, "max_tokens": 16},
    )


def _completions(ctx: _Context) -> dict[str, Any]:
    return _generation(
        ctx,
        operation_id="createCompletion",
        summary="Continue one prompt or a list of prompts (OpenAI's legacy completions)",
        request=CompletionRequest,
        answer=TextCompletion,
        chunk=TextCompletion,
        task_ok=ctx.task != CHAT,
        example={"model": ctx.served_name, "prompt": "Once upon a time", "max_tokens": 16},
    )


def _list_models(ctx: _Context) -> dict[str, Any]:
    return {
        "operationId": "listModels",
        "summary": "List the served model",
        "tags": ["OpenAI"],
        "responses": {"200": {"description": "The one model this server serves.", "content": ctx.json(ModelList)}},
    }


def _get_model(ctx: _Context) -> dict[str, Any]:
    return {
        "operationId": "retrieveModel",
        "summary": "Describe the served model",
        "tags": ["OpenAI"],
        "parameters": [
            {
                "name": "model",
                "in": "path",
                "required": True,
                "description": "The served model's name (it may hold slashes, sent as they are).",
                "schema": {"type": "string", "examples": [ctx.served_name]},
            }
        ],
        "responses": {
            "200": {"description": "The served model.", "content": ctx.json(ModelCard)},
            "404": ctx.error("No model of that name is served here (`model_not_found`)."),
        },
    }


def _invocations(ctx: _Context) -> dict[str, Any]:
    chat = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
    text = {"prompt": "Once upon a time", "max_tokens": 16}
    row = chat if ctx.task == CHAT else text
    return {
        "operationId": "invocations",
        "summary": "Score inputs with MLflow's scoring protocol",
        "description": (
            "Parsed by MLflow's own scoring code, as `mlflow models serve` does: a JSON object with "
            "`dataframe_split`, `dataframe_records`, `instances` or `inputs` (and optional `params`), the "
            "unified LLM body (the request object itself), CSV, or Parquet. Errors found by MLflow keep its "
            "`{error_code, message}` shape; the server's own limits answer in OpenAI's error shape."
        ),
        "tags": ["MLflow"],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "description": "One of MLflow's JSON input formats."},
                    "examples": {
                        "unified": {"summary": "The unified LLM body", "value": row},
                        "dataframe_records": {"summary": "Rows", "value": {"dataframe_records": [row]}},
                    },
                },
                "text/csv": {"schema": {"type": "string", "description": "A table, one input per row."}},
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "200": {
                "description": (
                    "MLflow's answer: `{\"predictions\": [...]}`, or for the unified LLM body the model's "
                    "answer itself."
                ),
                "content": {"application/json": {"schema": {}}},
            },
            "400": ctx.error("MLflow could not parse the input, or the model refused it.", MLflowError),
            "415": {
                "description": "A content type (or parameter, or charset) MLflow does not read.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_limits(ctx, generation=False),
            "500": {
                "description": "The model failed on the input.",
                "content": {
                    "application/json": {"schema": {"anyOf": [ctx.refs[MLflowError], ctx.refs[ErrorResponse]]}}
                },
            },
        },
    }


def _health(name: str) -> Callable[[_Context], dict[str, Any]]:
    def operation(ctx: _Context) -> dict[str, Any]:
        return {
            "operationId": name,
            "summary": "Health check for load balancers (no key needed)",
            "tags": ["MLflow"],
            "responses": {
                "200": {"description": "Serving. The body is a newline, as MLflow's scoring server sends."},
                "503": {"description": "Draining: shutting down, no new requests taken."},
            },
        }

    return operation


def _version(ctx: _Context) -> dict[str, Any]:
    return {
        "operationId": "version",
        "summary": "The versions of flavorkit and MLflow",
        "tags": ["MLflow"],
        "responses": {"200": {"description": "Both versions.", "content": ctx.json(VersionInfo)}},
    }


def _metrics(ctx: _Context) -> dict[str, Any]:
    return {
        "operationId": "metrics",
        "summary": "Prometheus metrics (no key needed)",
        "tags": ["Operations"],
        "responses": {
            "200": {
                "description": "Prometheus' text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    }


#: The operation of each route the app mounts, by Starlette path and method.
_OPERATIONS: dict[tuple[str, str], Callable[[_Context], dict[str, Any]]] = {
    ("/v1/chat/completions", "POST"): _chat,
    ("/v1/completions", "POST"): _completions,
    ("/v1/models", "GET"): _list_models,
    ("/v1/models/{model:path}", "GET"): _get_model,
    ("/invocations", "POST"): _invocations,
    ("/ping", "GET"): _health("ping"),
    ("/health", "GET"): _health("health"),
    ("/version", "GET"): _version,
    ("/metrics", "GET"): _metrics,
}


def _openapi_path(path: str) -> str:
    """A Starlette path as OpenAPI writes it: ``/v1/models/{model:path}`` is ``/v1/models/{model}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def _secure(operation: dict[str, Any], ctx: _Context, mlflow: bool) -> None:
    operation["security"] = [{SECURITY_SCHEME: []}]
    description = "No key, a wrong one, or another scheme than Bearer (`missing_api_key`, `invalid_api_key`)."
    error = ctx.error(description, MLflowError if mlflow else ErrorResponse)
    error["headers"] = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}
    operation["responses"]["401"] = error
    operation["responses"] = dict(sorted(operation["responses"].items()))


def build_openapi(
    routes: Iterable[BaseRoute],
    *,
    served_name: str,
    task: str,
    version: str,
    protected: Sequence[str] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (those in the schema); ``protected``: path prefixes needing a key.

    Raises ``LookupError`` for a route with no operation in :data:`_OPERATIONS`.
    """
    refs, schemas = component_schemas()
    ctx = _Context(refs, served_name, task, tuple(protected))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            build = _OPERATIONS.get((route.path, method))
            if build is None:
                raise LookupError(f"{method} {route.path} has no operation in the OpenAPI document (openapi.py)")
            operation = build(ctx)
            if ctx.protected and route.path.startswith(ctx.protected):
                _secure(operation, ctx, mlflow=route.path == "/invocations")
            paths.setdefault(_openapi_path(route.path), {})[method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"flavorkit serve: {served_name}",
            "version": version,
            "description": (
                f"OpenAI-compatible API and MLflow's scoring routes for the {task} model {served_name!r}. "
                "Errors of the /v1 routes are OpenAI's `{error: {message, type, param, code}}`."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if ctx.protected:
        doc["components"]["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the server's API keys: `Authorization: Bearer <key>`.",
            }
        }
    return doc


class OpenAPIDocument:
    """``GET /openapi.json``: the document, serialized once (per mount prefix: ``servers`` names it)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._bodies: dict[str, bytes] = {}

    def body(self, root_path: str = "") -> bytes:
        """The JSON text; mounted under ``root_path``, the document's ``servers`` is that prefix."""
        body = self._bodies.get(root_path)
        if body is None:
            doc = {**self.document, "servers": [{"url": root_path}]} if root_path else self.document
            body = self._bodies[root_path] = json.dumps(doc, ensure_ascii=False).encode()
        return body

    async def respond(self, request: Request) -> Response:
        """The route's handler."""
        return Response(self.body(request.scope.get("root_path", "")), media_type="application/json")
