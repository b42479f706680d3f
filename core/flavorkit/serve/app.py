"""``create_app``: the ASGI application serving one packaged flavorkit model, and ``run`` (uvicorn).

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); users call :func:`flavorkit.serve.create_app`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import typing
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flavorkit._version import __version__
from flavorkit.errors import NotAFlavorkitModel
from flavorkit.model.loading import VERIFY_ENV, verify_packaged
from flavorkit.model.signing import TRUSTED_KEY_ENV
from flavorkit.model.uri import local_model
from flavorkit.serve import routes
from flavorkit.serve.auth import check_bearer, mlflow_unauthorized
from flavorkit.serve.errors import APIError
from flavorkit.serve.metrics import Metrics
from flavorkit.serve.openapi import OpenAPIDocument, build_openapi
from flavorkit.serve.scheduler import Scheduler
from flavorkit.settings import ServeSettings, scoped_env

__all__ = [
    "BATCHING_MODES",
    "DEFAULTS",
    "FlavorkitApp",
    "create_app",
    "default_model_name",
    "load_flavorkit_model",
    "run",
]

log = logging.getLogger(__name__)

#: The default of every serve setting, from :class:`~flavorkit.settings.ServeSettings` (read-only view).
DEFAULTS: dict[str, Any] = {name: field.default for name, field in ServeSettings.model_fields.items()}

#: ``batching`` values: join running batches between steps, or one ``generate`` call per batch of requests.
BATCHING_MODES: tuple[str, ...] = typing.get_args(ServeSettings.model_fields["batching"].annotation)

_PROTECTED = ("/v1/", "/invocations")


def _route_path(scope: Scope) -> str:
    """The request path within this app: without the prefix of a ``Mount`` (kept in ``root_path``)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/invocations",
    "/ping",
    "/health",
    "/version",
    "/metrics",
    "/openapi.json",
)


def load_flavorkit_model(model_uri: str) -> tuple[Any, Any]:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model``; return the pyfunc and its ``LoadedModel``."""
    import mlflow

    from flavorkit.runtime.loaded import LoadedModel

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    try:
        python_model = pyfunc.unwrap_python_model()
    except Exception as exc:
        raise NotAFlavorkitModel(f"{model_uri!r} is not a flavorkit model ({exc})") from None
    loaded = getattr(python_model, "loaded", None)
    if not isinstance(loaded, LoadedModel):
        raise NotAFlavorkitModel(
            f"{model_uri!r} is an MLflow pyfunc model but not one packaged by flavorkit; "
            "serve it with `mlflow models serve`"
        )
    return pyfunc, loaded


@contextlib.contextmanager
def _load_verified() -> Iterator[None]:
    """Load a model just checked strictly: no second hashing, and no byte-code written into it.

    The installed flavorkit has verified the signature and every file, so the shipped loader's own
    check is skipped (it would hash the weights again); and Python writes no ``__pycache__`` into the
    model folder, which would make the next strict check of the same folder fail.
    """
    with scoped_env({VERIFY_ENV: "0", TRUSTED_KEY_ENV: None}):
        bytecode = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        try:
            yield
        finally:
            sys.dont_write_bytecode = bytecode


def default_model_name(model_uri: str) -> str:
    """The name clients use in ``model``: the registered name of ``models:/name/...`` or the folder name."""
    parsed = urlparse(model_uri)
    if parsed.scheme == "models":
        path = (parsed.netloc + parsed.path).strip("/")
        return path.split("/")[0].split("@")[0]
    path = parsed.path if parsed.scheme else model_uri
    name = PurePosixPath(path.replace(os.sep, "/").rstrip("/")).name
    return name or "flavorkit-model"


class FlavorkitApp:
    """The ASGI app: Bearer auth on the API routes, requests counted by route and status, then the routes.

    ``server`` holds the model, scheduler and metrics (:class:`flavorkit.serve.routes.ServerState`).
    """

    def __init__(self, app: ASGIApp, server: routes.ServerState, api_keys: Sequence[str] = ()) -> None:
        self.app = app
        self.server = server
        self.metrics = server.metrics
        if isinstance(api_keys, str):
            raise TypeError("api_keys is a sequence of keys, not one key")
        self.api_keys = tuple(api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Mounted inside another app, scope["path"] keeps the mount prefix (in root_path): match
        # routes and API-key protection on the path within this app, as Starlette's router does.
        path = _route_path(scope)
        route = path if path in _ROUTES else ("/v1/models/{model}" if path.startswith("/v1/models/") else "other")
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            if not counted:
                counted = True
                self.metrics.requests.labels(route=route, status=str(status)).inc()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                count(int(message["status"]))  # before the client can see the answer
            await send(message)

        try:
            if self.api_keys and path.startswith(_PROTECTED):
                headers = dict(scope.get("headers") or [])
                raw = headers.get(b"authorization")
                try:
                    check_bearer(raw.decode("latin-1") if raw else None, self.api_keys)
                except APIError as exc:
                    answer = mlflow_unauthorized(exc) if path == "/invocations" else exc.response()
                    await answer(scope, receive, counting_send)
                    return
            await self.app(scope, receive, counting_send)
        finally:
            count(500)  # nothing was sent: the app failed


def _load(model_uri: str, key: Path | None, verified: contextlib.ExitStack) -> tuple[Any, Any]:
    """Load the model; with a trusted ``key``, download and verify it first (kept open on ``verified``)."""
    if key:
        model_dir = verified.enter_context(local_model(model_uri))
        verify_packaged(model_dir, public_key=Path(key), strict=True)
        with _load_verified():
            return load_flavorkit_model(str(model_dir))
    return load_flavorkit_model(model_uri)


def _warm_up(loaded: Any) -> None:
    """Decode one token for two greedy requests together before the first client comes.

    The first batch pays for one-time work: kernel set-up and memory arenas, and on onnx-cpu the
    batch-invariance probe that decides whether greedy rows may share a batch (about 2 s for
    SmolLM2 int4). Paid here, at start-up, it does not delay the first clients.
    """
    started = time.perf_counter()
    request: dict[str, Any] = {"max_tokens": 1, "temperature": 0}
    if loaded.task == "text-generation":
        request["prompt"] = "Hello"
    else:
        request["messages"] = [{"role": "user", "content": "Hello"}]
    loaded.predict([request, dict(request)])
    log.info("warmed up in %.2f s (one token of two greedy requests)", time.perf_counter() - started)


def create_app(model_uri: str, settings: ServeSettings | None = None, **values: Any) -> FlavorkitApp:
    """The ASGI app serving the flavorkit model at ``model_uri`` (any MLflow model URI).

    ``values`` are :class:`~flavorkit.settings.ServeSettings` by keyword (``max_batch=4``). Without
    ``settings`` they override the ``FLAVORKIT_*`` variables, which override the defaults
    (:meth:`ServeSettings.load`); with ``settings``, they change it (and no variable is read). A
    bad value raises :class:`~flavorkit.errors.SettingsError` naming it, before anything loads.

    The model is loaded here, through ``mlflow.pyfunc.load_model``; a background worker starts
    at once (so the app also works mounted inside another app, without lifespan events) and is
    drained at lifespan shutdown. Without ``api_key`` (``$FLAVORKIT_API_KEY``) or ``api_key_file``
    (one key per line) the API is open (bind it to loopback). ``batch_wait`` is how long (seconds)
    the worker waits for the clients of the previous batch to come back before it starts a smaller batch.
    ``batching="continuous"`` (the default) lets requests join a running batch between decoding
    steps when the backend supports it (it declares ``continuous_batching``);
    a request that arrives while others decode joins at the next step, or, when rows have just
    finished, waits at most ``join_wait`` seconds for their clients to come back and join with it.
    ``"request"`` runs each batch of queued requests
    to completion before the next one starts.
    ``trusted_key`` (``$FLAVORKIT_TRUSTED_KEY``) is an EC public key: the model's signature
    and manifest are checked with the installed flavorkit before any of its code runs (a model URI
    is downloaded first and the checked download is loaded; a local folder is checked and loaded
    in place); a failure raises ``SignatureError`` or ``IntegrityError`` naming the files.
    ``threads`` (``$FLAVORKIT_THREADS``) sets the model's CPU threads per decoding step over its
    packaged option.
    """
    settings = ServeSettings.load(**values) if settings is None else settings.updated(**values)
    verified = contextlib.ExitStack()
    key = settings.trusted_key
    try:
        # The backend reads FLAVORKIT_THREADS as it loads (flavorkit.sdk.cpu_threads); set only meanwhile.
        threads = {} if settings.threads is None else {"FLAVORKIT_THREADS": str(settings.threads)}
        with scoped_env(threads):
            pyfunc, loaded = _load(model_uri, key, verified)
    except BaseException:
        verified.close()
        raise

    _warm_up(loaded)
    metrics = Metrics()
    scheduler = Scheduler(loaded, metrics, settings)
    state = routes.ServerState(
        pyfunc=pyfunc,
        model=loaded,
        scheduler=scheduler,
        metrics=metrics,
        served_name=settings.served_model_name or default_model_name(model_uri),
        created=int(time.time()),
        settings=settings,
    )
    drain_timeout = settings.drain_timeout

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        import asyncio

        clean = await asyncio.to_thread(scheduler.shutdown, drain_timeout)
        verified.close()  # the checked download, if the model was fetched to be verified
        if not clean:
            log.warning("shutdown: requests still running after %g s were cancelled", drain_timeout)

    api_keys = settings.api_keys()
    served = [
        Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
        Route("/v1/completions", routes.completions, methods=["POST"]),
        Route("/v1/models", routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", routes.get_model, methods=["GET"]),
        Route("/invocations", routes.invocations, methods=["POST"]),
        Route("/ping", routes.ping, methods=["GET"]),
        Route("/health", routes.ping, methods=["GET"]),
        Route("/version", routes.version, methods=["GET"]),
        Route("/metrics", routes.metrics, methods=["GET"]),
    ]
    # Built once, from the routes above: a route the document does not describe fails here.
    document = OpenAPIDocument(
        build_openapi(
            served,
            served_name=state.served_name,
            task=loaded.task,
            version=__version__,
            protected=_PROTECTED if api_keys else (),
        )
    )
    # Public, as FastAPI's and vLLM's are: it describes the API, not the model's answers (docs/reference/openapi.md).
    served.append(Route("/openapi.json", document.respond, methods=["GET"], include_in_schema=False))
    app = Starlette(
        routes=served,
        exception_handlers={APIError: routes.on_api_error, HTTPException: routes.on_http_error},
        lifespan=lifespan,
    )
    app.state.flavorkit = state
    return FlavorkitApp(app, state, api_keys)


def run(model_uri: str, settings: ServeSettings | None = None, **values: Any) -> None:
    """Load the model and serve it with uvicorn until SIGINT or SIGTERM.

    ``settings`` and ``values`` are taken as :func:`create_app` takes them (``host``, ``port`` and
    ``log_level`` too). On a signal, new requests are answered 503 and in-flight ones get
    ``drain_timeout`` seconds to finish before the rest is cancelled.
    """
    import uvicorn

    settings = ServeSettings.load(**values) if settings is None else settings.updated(**values)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(model_uri, settings)
    state = app.server

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            state.scheduler.stop_accepting()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout)),
        lifespan="on",
    )
    log.info("serving %r as %r on http://%s:%d/v1", model_uri, state.served_name, settings.host, settings.port)
    # The packaged options say how the backend batches (onnx: batching='exact', greedy answers independent of load).
    options = (state.pyfunc.model_config or {}).get("options") or {}
    log.info("backend %r with options %s", state.model.backend.name, json.dumps(options, sort_keys=True))
    invariant = any(str(getattr(c, "value", c)) == "batch_invariant" for c in state.model.capabilities)
    log.info(
        "greedy answers %s (GET /version: batch_invariant)",
        "do not depend on the load" if invariant else "may change under load (batching is not exact)",
    )
    if settings.threads is not None:
        log.info("CPU threads per decoding step: %d (--threads, over the packaged option)", settings.threads)
    Server(config).run()
