"""The HTTP routes: OpenAI's ``/v1`` API, MLflow's scoring routes and ``/metrics``.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

Handlers never touch the model: they validate, submit a :class:`~flavorkit.serve.scheduler.Ticket`
and turn its events into a JSON answer or server-sent events. Each handler also watches the
connection: a client that goes away, or a request that outlives ``request_timeout``, cancels
its ticket, and the worker drops it from the running batch within a decoding step.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive

from flavorkit.errors import InvalidRequest
from flavorkit.runtime.loaded import BatchEvent, LoadedModel, PreparedRequest
from flavorkit.serve import openai_api as oa
from flavorkit.serve.errors import APIError, error_body, from_invalid_request
from flavorkit.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from flavorkit.serve.scheduler import ClientDisconnected, Event, QueueFull, Scheduler, ShuttingDown, Ticket
from flavorkit.settings import ServeSettings
from flavorkit.signatures import CHAT

__all__ = ["ServerState", "read_body", "read_json"]

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share: the model, its scheduler and metrics, and the server's settings."""

    pyfunc: Any
    model: LoadedModel
    scheduler: Scheduler
    metrics: Metrics
    served_name: str
    created: int
    settings: ServeSettings


# -- request bodies ---------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes before reading it all."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", param=None, code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    size = 0
    parts: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON; malformed JSON is a 400."""
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None


# -- waiting for the worker -------------------------------------------------------------------------


def _timeout_error(seconds: float) -> APIError:
    return APIError(
        504,
        f"the request did not finish within the server's request timeout of {seconds:g} s",
        type="timeout_error",
        code="request_timeout",
    )


def _error_for(exc: BaseException) -> APIError:
    """An APIError for an exception the worker reported."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequest):
        return from_invalid_request(exc)
    if isinstance(exc, ClientDisconnected):
        return APIError(499, "the client closed the connection", code="client_closed_request")
    if isinstance(exc, ShuttingDown):
        return APIError(
            503, "the server is shutting down", type="server_error", code="shutting_down", headers={"Retry-After": "5"}
        )
    log.error("request failed: %r", exc)
    return APIError(500, f"generation failed: {exc}", type="server_error", code="internal_error")


class _Watch:
    """Relays the events of a request's tickets (one per prompt) and watches the connection.

    A client that disconnects cancels every ticket; past the deadline they are cancelled and a
    504 raised. :meth:`next` returns ``(i, event)``: which ticket the event belongs to (``-1`` for
    the disconnect itself).
    """

    def __init__(self, tickets: Sequence[Ticket], receive: Receive, timeout: float) -> None:
        self.tickets = list(tickets)
        self.timeout = timeout
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeout
        self._events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._tasks = [loop.create_task(self._listen(receive))]
        self._tasks += [loop.create_task(self._relay(i, t)) for i, t in enumerate(self.tickets)]

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._cancel("disconnect")
                self._events.put_nowait((-1, Event("error", ClientDisconnected())))  # wakes the reader
                return

    async def _relay(self, i: int, ticket: Ticket) -> None:
        while True:
            event = await ticket.events.get()
            self._events.put_nowait((i, event))
            if event.kind in ("done", "error", "result"):  # a ticket's last event
                return

    def _cancel(self, reason: str) -> None:
        for ticket in self.tickets:
            if not ticket.done:
                ticket.cancel(reason)

    async def next(self) -> tuple[int, Event]:
        """The next event of any ticket; on timeout every ticket is cancelled and a 504 raised."""
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            return await asyncio.wait_for(self._events.get(), remaining)
        except asyncio.TimeoutError:
            self._cancel("timeout")
            raise _timeout_error(self.timeout) from None

    def close(self, reason: str = "disconnect") -> None:
        """Stop watching; cancel the tickets still running (the handler is gone, or gave up)."""
        for task in self._tasks:
            task.cancel()
        self._cancel(reason)


T = TypeVar("T")


def _submit(state: ServerState, submit: Callable[[], T]) -> T:
    """Queue work; a full queue is a 429 and a draining server a 503, both with Retry-After."""
    try:
        return submit()
    except QueueFull:
        raise APIError(
            429,
            f"the server's queue is full ({state.scheduler.max_queue} requests); retry later",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except ShuttingDown:
        raise _error_for(ShuttingDown()) from None


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _submit_all(state: ServerState, parsed: oa.ParsedRequest, route: str) -> list[Ticket]:
    """One ticket per prompt, queued together so the scheduler batches them; all are queued or none."""
    return _submit(
        state, functools.partial(state.scheduler.submit_many, parsed.raws, stream=parsed.stream, route=route)
    )


def _failure(exc: BaseException, i: int, parsed: oa.ParsedRequest) -> APIError:
    """The error for the whole request when ticket ``i`` failed (``prompt[i]`` named for a list prompt)."""
    if not isinstance(exc, InvalidRequest):
        return _error_for(exc)
    if exc.field == "max_tokens" and parsed.tokens_field != "max_tokens":  # the name the client used
        exc = InvalidRequest(parsed.tokens_field, exc.detail, exc.allowed)
    if parsed.listed and i >= 0:
        exc = oa.prompt_error(exc, i)
    return from_invalid_request(exc)


async def _generate(
    state: ServerState,
    request: Request,
    parsed: oa.ParsedRequest,
    route: str,
    whole: Callable[[str, int, list[PreparedRequest]], dict[str, Any]],
    piece: Callable[[str, int, int, str, str | None], list[dict[str, Any]]],
    start: Callable[[str, int, list[PreparedRequest]], list[dict[str, Any]]],
    prefix: str,
    obj: str,
) -> Response:
    """Run a request's prompts as tickets; answer one JSON body, or server-sent events.

    Nothing is sent before every prompt was admitted, so a prompt the model refuses (too long)
    is a plain 400 for the whole request, and the other prompts are cancelled. Choice ``j`` of
    prompt ``i`` is numbered after the choices of the prompts before it (``i * n + j``).
    """
    tickets = _submit_all(state, parsed, route)
    watch = _Watch(tickets, request.receive, state.settings.request_timeout)
    streaming = False
    reason = "disconnect"
    try:
        admitted: list[PreparedRequest | None] = [None] * len(tickets)
        early: list[tuple[int, Event]] = []  # events of admitted prompts while others wait for a batch
        while any(p is None for p in admitted):
            i, event = await watch.next()
            if event.kind == "error":
                reason = "error"
                raise _failure(event.payload, i, parsed)
            if event.kind == "start":
                admitted[i] = event.payload
            else:
                early.append((i, event))
        prepared = [p for p in admitted if p is not None]
        offsets = [sum(p.n for p in prepared[:i]) for i in range(len(prepared))]
        rid, created = oa.new_id(prefix), oa.now()
        if parsed.stream:
            streaming = True  # the body below owns the watch from here
        else:
            finished = sum(1 for _, e in early if e.kind == "done")
            while finished < len(tickets):
                i, event = await watch.next()
                if event.kind == "error":
                    reason = "error"
                    raise _failure(event.payload, i, parsed)
                if event.kind == "done":
                    finished += 1
            return JSONResponse(whole(rid, created, prepared))
    finally:
        if not streaming:
            watch.close(reason)

    async def body() -> AsyncIterator[bytes]:
        end = "disconnect"
        try:
            for chunk in start(rid, created, prepared):
                yield _sse(chunk)
            finished = 0
            while True:
                i, event = early.pop(0) if early else await watch.next()
                if event.kind == "error":
                    end = "error"
                    yield _sse(_failure(event.payload, i, parsed).body())
                    return
                if event.kind == "done":
                    finished += 1
                    if finished == len(tickets):
                        break
                    continue
                if event.kind != "delta":
                    continue
                ev: BatchEvent = event.payload
                if ev.finish_reason == "cancelled":
                    continue
                for chunk in piece(rid, created, offsets[i] + ev.choice, ev.text, ev.finish_reason):
                    yield _sse(chunk)
            if parsed.include_usage:
                yield _sse(oa.usage_chunk(rid, created, state.served_name, obj, prepared))
            yield b"data: [DONE]\n\n"
        except APIError as exc:  # the deadline passed mid-stream
            end = "timeout"
            yield _sse(exc.body())
        finally:
            watch.close(end)

    return StreamingResponse(body(), media_type="text/event-stream", headers=_SSE_HEADERS)


# -- routes -----------------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    state: ServerState = request.app.state.flavorkit
    if state.model.task != CHAT:
        raise APIError(
            404,
            f"{state.served_name!r} is a text-generation model; use /v1/completions",
            param="model",
            code="unsupported_endpoint",
        )
    parsed = oa.parse_chat(await read_json(request, state.settings.max_body_bytes), state.served_name)
    name = state.served_name
    usage = parsed.include_usage

    def start(rid: str, created: int, ps: list[PreparedRequest]) -> list[dict[str, Any]]:
        return [
            oa.chat_chunk(rid, created, name, i, {"role": "assistant", "content": ""}, None, usage)
            for i in range(ps[0].n)
        ]

    def piece(rid: str, created: int, index: int, text: str, finish: str | None) -> list[dict[str, Any]]:
        out = []
        if text:
            out.append(oa.chat_chunk(rid, created, name, index, {"content": text}, None, usage))
        if finish is not None:
            out.append(oa.chat_chunk(rid, created, name, index, {}, finish, usage))
        return out

    def whole(rid: str, created: int, ps: list[PreparedRequest]) -> dict[str, Any]:
        return oa.chat_completion(rid, created, name, ps[0])

    return await _generate(
        state, request, parsed, "/v1/chat/completions", whole, piece, start, "chatcmpl", "chat.completion.chunk"
    )


async def completions(request: Request) -> Response:
    """``POST /v1/completions`` (text-generation models)."""
    state: ServerState = request.app.state.flavorkit
    if state.model.task == CHAT:
        raise APIError(
            404,
            f"{state.served_name!r} is a chat model; use /v1/chat/completions",
            param="model",
            code="unsupported_endpoint",
        )
    body = await read_json(request, state.settings.max_body_bytes)
    parsed = oa.parse_completion(body, state.served_name, max_prompts=state.scheduler.max_queue)
    name = state.served_name
    usage = parsed.include_usage

    def start(rid: str, created: int, ps: list[PreparedRequest]) -> list[dict[str, Any]]:
        return []

    def piece(rid: str, created: int, index: int, text: str, finish: str | None) -> list[dict[str, Any]]:
        if not text and finish is None:
            return []
        return [oa.completion_chunk(rid, created, name, index, text, finish, usage)]

    def whole(rid: str, created: int, ps: list[PreparedRequest]) -> dict[str, Any]:
        return oa.completion(rid, created, name, ps)

    return await _generate(state, request, parsed, "/v1/completions", whole, piece, start, "cmpl", "text_completion")


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.served_name, "object": "model", "created": state.created, "owned_by": "flavorkit"}


async def list_models(request: Request) -> Response:
    """``GET /v1/models``."""
    state: ServerState = request.app.state.flavorkit
    return JSONResponse({"object": "list", "data": [_model_card(state)]})


async def get_model(request: Request) -> Response:
    """``GET /v1/models/{model}``."""
    state: ServerState = request.app.state.flavorkit
    model = request.path_params["model"]
    if model != state.served_name:
        raise APIError(
            404, f"the model {model!r} does not exist; this server serves {state.served_name!r}", code="model_not_found"
        )
    return JSONResponse(_model_card(state))


async def invocations(request: Request) -> Response:
    """``POST /invocations``: MLflow's scoring protocol, answered exactly as ``mlflow models serve`` does.

    The body is parsed and the model called by MLflow's own scoring code (every format it accepts:
    ``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``, the unified chat body, CSV),
    on the worker thread, between batches. Errors keep MLflow's ``{"error_code", "message"}`` shape.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    state: ServerState = request.app.state.flavorkit
    data = await read_body(request, state.settings.max_body_bytes)
    content_type = request.headers.get("content-type") or "application/json"
    pyfunc = state.pyfunc
    schema = pyfunc.metadata.get_input_schema()

    def job() -> Any:
        return scoring_server.invocations(data, content_type, pyfunc, schema)

    ticket = _submit(state, lambda: state.scheduler.submit_job(job, route="/invocations"))
    watch = _Watch([ticket], request.receive, state.settings.request_timeout)
    try:
        _, event = await watch.next()
    finally:
        watch.close()
    if event.kind == "error":
        exc = event.payload
        if isinstance(exc, MlflowException):
            status = exc.get_http_status_code()
            return Response(exc.serialize_as_json(), status_code=status, media_type="application/json")
        raise _error_for(exc)
    result = event.payload
    return Response(result.response, status_code=result.status, media_type=result.mimetype)


async def ping(request: Request) -> Response:
    """``GET /ping`` and ``/health``: 200 while serving, 503 while draining."""
    state: ServerState = request.app.state.flavorkit
    status = 200 if state.scheduler.accepting else 503
    return Response("\n", status_code=status, media_type="application/json")


async def version(request: Request) -> Response:
    """``GET /version``: the MLflow version, as MLflow's scoring server answers."""
    import mlflow

    return Response(mlflow.__version__, media_type="application/json")


async def metrics(request: Request) -> Response:
    """``GET /metrics`` in Prometheus text format."""
    state: ServerState = request.app.state.flavorkit
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def on_api_error(request: Request, exc: Exception) -> Response:
    """Exception handler: an :class:`APIError` as its response."""
    assert isinstance(exc, APIError)
    return exc.response()


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Exception handler: Starlette's 404/405 in OpenAI's error shape."""
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    body = error_body(f"{request.method} {request.url.path}: {exc.detail}", type="invalid_request_error", code=code)
    return JSONResponse(body, status_code=exc.status_code, headers=dict(exc.headers or {}))
