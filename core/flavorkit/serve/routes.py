"""The HTTP routes: OpenAI's ``/v1`` API, MLflow's scoring routes and ``/metrics``.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.

Handlers never touch the model: they validate, submit :class:`~flavorkit.serve.scheduler.Ticket`
objects (one per prompt) whose events the worker puts into one queue per HTTP request, and turn
those events into a JSON answer or server-sent events. The two OpenAI generation routes differ only
in their :class:`Endpoint` (how the answer is shaped). Each handler also watches the connection:
a client that goes away, or a request that outlives ``request_timeout``, cancels its tickets, and
the worker drops them from the running batch within a decoding step.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from flavorkit.errors import InvalidRequest
from flavorkit.responses import TextOffsets, text_logprobs, tool_call_deltas
from flavorkit.runtime.loaded import BatchEvent, LoadedModel, PreparedRequest
from flavorkit.serve import openai_api as oa
from flavorkit.serve.errors import APIError, error_body, from_invalid_request
from flavorkit.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from flavorkit.serve.scheduler import ClientDisconnected, Event, EventQueue, QueueFull, Scheduler, ShuttingDown, Ticket
from flavorkit.settings import ServeSettings
from flavorkit.signatures import CHAT
from flavorkit.types import Capability

__all__ = ["ChatCompletions", "Completions", "Endpoint", "ServerState", "VersionInfo", "read_body", "read_json"]

log = logging.getLogger(__name__)


class VersionInfo(BaseModel):
    """The answer of ``GET /version``: flavorkit's version and MLflow's, and what the served model promises."""

    flavorkit: str
    mlflow: str
    backend: str = Field(description="the backend that serves the model")
    capabilities: list[str] = Field(description="what the backend declares for the model's packaged options")
    batch_invariant: bool = Field(
        description="greedy answers do not depend on the load (the batch_invariant capability); false for a "
        "model packaged with batching='auto' or 'padded'"
    )


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
    """One HTTP request's event queue, fed by the worker for each of its tickets, and its connection.

    The worker puts every event of every ticket (one per prompt) straight into ``events``; one
    task listens for the client going away, which cancels every ticket; past the deadline they
    are cancelled and a 504 raised. :meth:`next` returns the next :class:`Event`, whose
    ``ticket`` says which ticket it belongs to (``-1`` for the disconnect itself).
    """

    def __init__(self, tickets: Sequence[Ticket], events: EventQueue, receive: Receive, timeout: float) -> None:
        self.tickets = list(tickets)
        self.events = events
        self.timeout = timeout
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeout
        self._listener = loop.create_task(self._listen(receive))
        # wakes a reader waiting at the deadline, without a timeout task per event
        self._alarm = loop.call_at(self.deadline, events.put_nowait, _DEADLINE)

    async def _listen(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._cancel("disconnect")
                self.events.put_nowait(Event("error", ClientDisconnected(), -1))  # wakes the reader
                return

    def _cancel(self, reason: str) -> None:
        for ticket in self.tickets:
            if not ticket.done:
                ticket.cancel(reason)

    async def next(self) -> Event:
        """The next event of any ticket; at the deadline every ticket is cancelled and a 504 raised."""
        if asyncio.get_running_loop().time() < self.deadline:
            event = await self.events.get()
            if event is not _DEADLINE:
                return event
        self._cancel("timeout")
        raise _timeout_error(self.timeout)

    def close(self, reason: str = "disconnect") -> None:
        """Stop watching; cancel the tickets still running (the handler is gone, or gave up)."""
        self._listener.cancel()
        self._alarm.cancel()
        self._cancel(reason)


#: What the deadline puts into a request's queue.
_DEADLINE = Event("deadline", None, -1)

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


class _AnsweredJSON(JSONResponse):
    """A JSON answer that calls ``sent`` once its body was handed to the server (written to the client)."""

    def __init__(self, content: Any, sent: Callable[[], None]) -> None:
        super().__init__(content)
        self._sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        self._sent()


def _failure(exc: BaseException, i: int, parsed: oa.ParsedRequest) -> APIError:
    """The error for the whole request when ticket ``i`` failed (``prompt[i]`` named for a list prompt)."""
    if not isinstance(exc, InvalidRequest):
        return _error_for(exc)
    if exc.field == "max_tokens" and parsed.tokens_field != "max_tokens":  # the name the client used
        exc = InvalidRequest(parsed.tokens_field, exc.detail, exc.allowed)
    if parsed.listed and i >= 0:
        exc = oa.prompt_error(exc, i)
    return from_invalid_request(exc)


# -- the OpenAI generation endpoints ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint(abc.ABC):
    """How one OpenAI generation endpoint shapes its answer: the whole body, or its stream's chunks.

    ``model`` is the served name and ``include_usage`` the request's ``stream_options``; choice
    ``index`` counts over every prompt of the request.
    """

    route: ClassVar[str]
    id_prefix: ClassVar[str]
    chunk_object: ClassVar[str]

    model: str
    include_usage: bool

    @abc.abstractmethod
    def whole(self, rid: str, created: int, prepared: list[PreparedRequest]) -> dict[str, Any]:
        """The non-streamed response."""

    def opening(self, rid: str, created: int, prepared: list[PreparedRequest]) -> list[dict[str, Any]]:
        """The chunks a stream starts with, before any text."""
        return []

    @abc.abstractmethod
    def piece(self, rid: str, created: int, index: int, ev: BatchEvent) -> list[dict[str, Any]]:
        """The chunks for event ``ev`` (its text, tool calls, logprobs and finish reason) as choice ``index``."""


class ChatCompletions(Endpoint):
    """``POST /v1/chat/completions``: ``chat.completion`` and its chunks, the first naming the role."""

    route = "/v1/chat/completions"
    id_prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def whole(self, rid: str, created: int, prepared: list[PreparedRequest]) -> dict[str, Any]:
        """The ``chat.completion`` object."""
        return oa.chat_completion(rid, created, self.model, prepared[0])

    def opening(self, rid: str, created: int, prepared: list[PreparedRequest]) -> list[dict[str, Any]]:
        """One chunk per choice giving the assistant role."""
        return [
            oa.chat_chunk(rid, created, self.model, i, {"role": "assistant", "content": ""}, None, self.include_usage)
            for i in range(prepared[0].n)
        ]

    def piece(self, rid: str, created: int, index: int, ev: BatchEvent) -> list[dict[str, Any]]:
        """A content chunk for the text (with its tokens' logprobs), one for the tool calls, then the finish."""
        out = []
        if ev.text or ev.logprobs:
            delta: dict[str, Any] = {"content": ev.text}
            if ev.logprobs is not None:
                delta["logprobs"] = ev.logprobs
            out.append(oa.chat_chunk(rid, created, self.model, index, delta, None, self.include_usage))
        if ev.tool_calls:
            delta = {"tool_calls": tool_call_deltas(ev.tool_calls)}
            out.append(oa.chat_chunk(rid, created, self.model, index, delta, None, self.include_usage))
        if ev.finish_reason is not None:
            out.append(oa.chat_chunk(rid, created, self.model, index, {}, ev.finish_reason, self.include_usage))
        return out


@dataclass(frozen=True)
class Completions(Endpoint):
    """``POST /v1/completions``: ``text_completion`` and its chunks."""

    route = "/v1/completions"
    id_prefix = "cmpl"
    chunk_object = "text_completion"

    #: Per choice, where its next token starts in its text (the legacy logprobs' ``text_offset``).
    offsets: dict[int, TextOffsets] = field(default_factory=dict)

    def whole(self, rid: str, created: int, prepared: list[PreparedRequest]) -> dict[str, Any]:
        """The ``text_completion`` object, one choice per prompt."""
        return oa.completion(rid, created, self.model, prepared)

    def piece(self, rid: str, created: int, index: int, ev: BatchEvent) -> list[dict[str, Any]]:
        """One chunk carrying the text (with its tokens' logprobs) and the finish reason, if there is any."""
        if not ev.text and not ev.logprobs and ev.finish_reason is None:
            return []
        logprobs = None
        if ev.logprobs is not None:
            logprobs = text_logprobs(ev.logprobs, self.offsets.setdefault(index, TextOffsets()))
        chunk = oa.completion_chunk(
            rid, created, self.model, index, ev.text, ev.finish_reason, self.include_usage, logprobs
        )
        return [chunk]


class _Generation:
    """One request to a generation endpoint, in flight: its tickets (one per prompt) and their events.

    :meth:`respond` answers once every prompt was admitted, so a prompt the model refuses (too
    long) is a plain 400 for the whole request and the other prompts are cancelled. Choice ``j``
    of prompt ``i`` is numbered after the choices of the prompts before it (``i * n + j``).
    """

    def __init__(self, state: ServerState, parsed: oa.ParsedRequest, endpoint: Endpoint) -> None:
        self.state = state
        self.parsed = parsed
        self.endpoint = endpoint
        self.early: collections.deque[Event] = collections.deque()  # events of prompts admitted while others wait
        self.prepared: list[PreparedRequest] = []
        self.rid = oa.new_id(endpoint.id_prefix)
        self.created = 0  # set when every prompt was admitted
        self.submitted = 0.0  # perf_counter when the prompts were queued

    def _first_byte(self) -> None:
        """The answer's first generated text reached the client: observe the time to first token.

        Streamed, that is when the first chunk after the opening one was written; otherwise when
        the whole body was. Observed here rather than where the worker produces the token, so the
        histogram includes the wait for the event loop (which runs between decoding steps) and the
        write, as the client sees it.
        """
        self.state.metrics.ttft.observe(time.perf_counter() - self.submitted)

    async def respond(self, request: Request) -> Response:
        """Queue the prompts; answer one JSON body, or server-sent events."""
        parsed, endpoint = self.parsed, self.endpoint
        events: EventQueue = asyncio.Queue()
        self.submitted = time.perf_counter()
        tickets = _submit(
            self.state,
            lambda: self.state.scheduler.submit_many(
                parsed.raws,
                stream=parsed.stream,
                route=endpoint.route,
                events=events,
                text_logprobs=parsed.text_logprobs,
            ),
        )
        watch = _Watch(tickets, events, request.receive, self.state.settings.request_timeout)
        streaming = False
        reason = "disconnect"
        try:
            await self._admit(watch)
            if parsed.stream:
                streaming = True  # the body owns the watch from here
                return StreamingResponse(self._stream(watch), media_type="text/event-stream", headers=_SSE_HEADERS)
            await self._finish(watch)
            return _AnsweredJSON(endpoint.whole(self.rid, self.created, self.prepared), self._first_byte)
        except APIError:
            reason = "error"  # a prompt failed: the others are cancelled (timeouts and disconnects already were)
            raise
        finally:
            if not streaming:
                watch.close(reason)

    async def _admit(self, watch: _Watch) -> None:
        """Wait for every ticket's ``start`` (keeping other events for later); a failed one fails the request."""
        admitted: list[PreparedRequest | None] = [None] * len(watch.tickets)
        while any(p is None for p in admitted):
            event = await self._next(watch)
            if event.kind == "start":
                admitted[event.ticket] = event.payload
            else:
                self.early.append(event)
        self.prepared = [p for p in admitted if p is not None]
        self.created = oa.now()

    async def _finish(self, watch: _Watch) -> None:
        """Wait for every ticket's ``done``."""
        finished = sum(1 for e in self.early if e.kind == "done")
        while finished < len(watch.tickets):
            if (await self._next(watch)).kind == "done":
                finished += 1

    async def _next(self, watch: _Watch) -> Event:
        """The next event; a ticket's error fails the whole request."""
        event = await watch.next()
        if event.kind == "error":
            raise _failure(event.payload, event.ticket, self.parsed)
        return event

    async def _stream(self, watch: _Watch) -> AsyncIterator[bytes]:
        """The server-sent events: the events kept while admitting first, then the queue's, then ``[DONE]``."""
        endpoint, rid, created, prepared = self.endpoint, self.rid, self.created, self.prepared
        offsets = [sum(p.n for p in prepared[:i]) for i in range(len(prepared))]
        end = "disconnect"
        first = True
        try:
            for chunk in endpoint.opening(rid, created, prepared):
                yield _sse(chunk)
            finished = 0
            while True:
                event = self.early.popleft() if self.early else await watch.next()
                if event.kind == "error":
                    end = "error"
                    yield _sse(_failure(event.payload, event.ticket, self.parsed).body())
                    return
                if event.kind == "done":
                    finished += 1
                    if finished == len(prepared):
                        break
                    continue
                if event.kind != "delta":
                    continue
                ev: BatchEvent = event.payload
                if ev.finish_reason == "cancelled":
                    continue
                for chunk in endpoint.piece(rid, created, offsets[event.ticket] + ev.choice, ev):
                    yield _sse(chunk)  # resumed once the server sent it
                    if first:
                        first = False
                        self._first_byte()
            if self.parsed.include_usage:
                yield _sse(oa.usage_chunk(rid, created, self.state.served_name, endpoint.chunk_object, prepared))
            yield b"data: [DONE]\n\n"
        except APIError as exc:  # the deadline passed mid-stream
            end = "timeout"
            yield _sse(exc.body())
        finally:
            watch.close(end)


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
    body = await read_json(request, state.settings.max_body_bytes)
    parsed = oa.parse_chat(body, state.served_name, backend=state.model.backend.name, guided=state.model.guided)
    return await _Generation(state, parsed, ChatCompletions(state.served_name, parsed.include_usage)).respond(request)


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
    parsed = oa.parse_completion(
        body,
        state.served_name,
        max_prompts=state.scheduler.max_queue,
        backend=state.model.backend.name,
        guided=state.model.guided,
    )
    return await _Generation(state, parsed, Completions(state.served_name, parsed.include_usage)).respond(request)


async def list_models(request: Request) -> Response:
    """``GET /v1/models``."""
    state: ServerState = request.app.state.flavorkit
    return JSONResponse(oa.model_list(state.served_name, state.created))


async def get_model(request: Request) -> Response:
    """``GET /v1/models/{model}``."""
    state: ServerState = request.app.state.flavorkit
    model = request.path_params["model"]
    if model != state.served_name:
        raise APIError(
            404, f"the model {model!r} does not exist; this server serves {state.served_name!r}", code="model_not_found"
        )
    return JSONResponse(oa.model_card(state.served_name, state.created))


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

    events: EventQueue = asyncio.Queue()
    ticket = _submit(state, lambda: state.scheduler.submit_job(job, route="/invocations", events=events))
    watch = _Watch([ticket], events, request.receive, state.settings.request_timeout)
    try:
        event = await watch.next()
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
    """``GET /version``: flavorkit's version and MLflow's (MLflow's scoring server answers only its own)."""
    import mlflow

    from flavorkit._version import __version__

    state: ServerState = request.app.state.flavorkit
    capabilities = sorted(str(getattr(c, "value", c)) for c in state.model.capabilities)
    info = VersionInfo(
        flavorkit=__version__,
        mlflow=mlflow.__version__,
        backend=state.model.backend.name,
        capabilities=capabilities,
        batch_invariant=Capability.BATCH_INVARIANT in state.model.capabilities,
    )
    return JSONResponse(info.model_dump())


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
