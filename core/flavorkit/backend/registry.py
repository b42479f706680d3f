"""Backend discovery through the ``flavorkit.backends`` entry-point group.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`).

Every backend, first-party or not, is found the same way: the entry-point name is the backend id
and its value points at the plugin object (a module or a class/instance with hookimpls). Each
backend gets its own :class:`pluggy.PluginManager` holding the core defaults, any middleware
plugins (group ``flavorkit.middleware``) and the backend itself.

Discovery imports plugin modules (which must be light) but never their runtime dependencies:
availability is decided from installed distribution metadata. A plugin that fails to import or
violates the spec is recorded and skipped, unless strict mode (``FLAVORKIT_STRICT_PLUGINS=1``)
turns that into an error.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import shlex
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from flavorkit.backend.defaults import CoreDefaults
from flavorkit.backend.hookspec import PROJECT, REQUIRED_HOOKS, WrapperBackend
from flavorkit.errors import (
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    InvalidRequest,
    PluginSpecError,
)
from flavorkit.settings import env_flag
from flavorkit.signatures import CHAT
from flavorkit.types import (
    Artifacts,
    Capability,
    Delta,
    GenerationRequest,
    GenerationSession,
    Message,
    RuntimeInfo,
    close_stream,
)

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from pydantic import BaseModel

__all__ = [
    "BACKEND_GROUP",
    "MIDDLEWARE_GROUP",
    "STRICT_ENV",
    "Backend",
    "BackendStatus",
    "Registry",
    "backends",
    "get_backend",
    "get_registry",
]

BACKEND_GROUP = "flavorkit.backends"
MIDDLEWARE_GROUP = "flavorkit.middleware"
STRICT_ENV = "FLAVORKIT_STRICT_PLUGINS"


def strict_from_env() -> bool:
    """True when ``FLAVORKIT_STRICT_PLUGINS`` asks for plugin failures to be errors."""
    return env_flag(STRICT_ENV)


@dataclass(frozen=True)
class BackendStatus:
    """What ``flavorkit backends`` shows for one entry point."""

    name: str
    distribution: str | None
    version: str | None
    object: str
    available: bool
    error: str | None = None
    install_hint: str | None = None
    dependencies: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form used by ``flavorkit backends --json``."""
        return {
            "name": self.name,
            "available": self.available,
            "distribution": self.distribution,
            "version": self.version,
            "object": self.object,
            "error": self.error,
            "install_hint": self.install_hint,
            "dependencies": list(self.dependencies),
            "capabilities": list(self.capabilities),
        }


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """Return a message per requirement that the current environment does not satisfy."""
    problems = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"invalid requirement {text!r}: {exc}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req.name} is not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed but {text} is required{_too_new(req, installed)}")
    return problems


def _too_new(req: Requirement, installed: str) -> str:
    """A note when ``installed`` is above an upper bound of ``req``: the install hint would downgrade it."""
    try:
        version = Version(installed)
    except InvalidVersion:
        return ""
    uppers = [s for s in req.specifier if s.operator in ("<", "<=")]
    if not any(not s.contains(version, prereleases=True) for s in uppers):
        return ""
    return f" (newer than this backend supports: install it in a separate environment rather than downgrade {req.name})"


def install_hint(requirements: Iterable[str]) -> str:
    """The exact pip command that installs ``requirements``."""
    return "pip install " + " ".join(shlex.quote(r) for r in requirements)


class Backend:
    """A loaded backend: its plugin manager plus typed, checked calls of each hook."""

    def __init__(
        self,
        name: str,
        plugin: Any,
        *,
        object_path: str,
        distribution: str | None = None,
        version: str | None = None,
        middleware: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.name = name
        self.plugin = plugin
        self.object_path = object_path
        self.distribution = distribution
        self.version = version
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(WrapperBackend)
        try:
            self.pm.register(CoreDefaults(), name="flavorkit.backend.defaults")
            for mw_name, mw in middleware:
                self.pm.register(mw, name=f"middleware:{mw_name}")
            self.pm.register(plugin, name=f"backend:{name}")
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginSpecError(f"backend {name!r} ({object_path}) violates the hook spec: {exc}") from exc
        missing = [h for h in REQUIRED_HOOKS if not self._implements(h)]
        if missing:
            raise PluginSpecError(
                f"backend {name!r} ({object_path}) does not implement required hook(s): {', '.join(missing)}"
            )

    def _implements(self, hook_name: str) -> bool:
        caller = getattr(self.pm.hook, hook_name)
        return any(impl.plugin is self.plugin for impl in caller.get_hookimpls())

    def _bad_return(self, hook: str, expected: str, got: Any) -> PluginSpecError:
        return PluginSpecError(f"backend {self.name!r}: hook {hook}() must return {expected}, got {type(got).__name__}")

    # -- static facts ---------------------------------------------------------------------------

    def dependencies(self) -> list[str]:
        """The runtime requirements the backend declares."""
        deps = self.pm.hook.dependencies()
        if deps is None or isinstance(deps, str) or not all(isinstance(d, str) for d in deps):
            raise self._bad_return("dependencies", "a list of requirement strings", deps)
        return list(deps)

    def capabilities(self, options: Mapping[str, Any] | None = None) -> frozenset[Capability]:
        """The capabilities declared for ``options`` (validated; None: the defaults); unknown ones break the spec."""
        raw = self.pm.hook.capabilities(options=dict(options) if options is not None else None) or ()
        caps = set()
        for item in raw:
            try:
                caps.add(Capability(item))
            except ValueError as exc:
                allowed = ", ".join(c.value for c in Capability)
                raise PluginSpecError(
                    f"backend {self.name!r} declares unknown capability {item!r} (known: {allowed})"
                ) from exc
        return frozenset(caps)

    def option_model(self) -> type[BaseModel] | None:
        """The pydantic model of the backend's options, if it has any."""
        return self.pm.hook.option_schema()  # type: ignore[no-any-return]

    def validate_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Check user options against the backend's schema; errors name the option and allowed keys."""
        from flavorkit.schema import validate_options

        return validate_options(self.name, self.option_model(), options or {})

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailable` with a pip hint when runtime dependencies are missing."""
        deps = self.dependencies()
        problems = missing_requirements(deps)
        if problems:
            raise BackendUnavailable(self.name, "; ".join(problems), install_hint(deps))

    # -- packaging ------------------------------------------------------------------------------

    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str = CHAT) -> Artifacts:
        """Resolve ``source`` into :class:`Artifacts` for ``task`` (spec 4: only a chat model needs a template)."""
        result = self.pm.hook.artifacts(source=source, options=options, workdir=workdir, task=task)
        if not isinstance(result, Artifacts):
            raise self._bad_return("artifacts", "flavorkit.Artifacts", result)
        if not result.files:
            raise PluginSpecError(f"backend {self.name!r}: artifacts() returned no files")
        return result

    def signature(self, task: str, options: Mapping[str, Any]) -> ModelSignature:
        """The signature for ``task``; an unknown task is an invalid request naming ``task``."""
        from flavorkit.signatures import TASKS

        sig = self.pm.hook.signature(task=task, options=options)
        if sig is None:
            raise InvalidRequest("task", f"unknown task {task!r}", allowed=", ".join(TASKS))
        return sig  # type: ignore[no-any-return]

    # -- runtime --------------------------------------------------------------------------------

    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Load the runtime and return the backend's handle."""
        handle = self.pm.hook.load(artifacts=artifacts, options=options)
        if handle is None:
            raise self._bad_return("load", "a handle (not None)", handle)
        return handle

    def describe(self, handle: Any) -> RuntimeInfo:
        """Runtime facts (context length, model name) of a loaded handle."""
        info = self.pm.hook.describe(handle=handle)
        if not isinstance(info, RuntimeInfo):
            raise self._bad_return("describe", "flavorkit.RuntimeInfo", info)
        return info

    def encode(
        self, handle: Any, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        """Prompt token ids for ``messages`` after the chat template (``tools`` rendered by it, spec 3)."""
        ids = self.pm.hook.encode(handle=handle, messages=messages, tools=tools)
        if ids is None:
            raise self._bad_return("encode", "a list of token ids", ids)
        return [int(i) for i in ids]

    @property
    def implements_encode_text(self) -> bool:
        """Whether the backend has an ``encode_text`` hook (spec 4), which raw text-generation models need."""
        return self._implements("encode_text")

    def encode_text(self, handle: Any, text: str) -> list[int]:
        """Prompt token ids of plain ``text``, no chat template (spec 4); a backend without the hook is an error."""
        ids = self.pm.hook.encode_text(handle=handle, text=text) if self.implements_encode_text else None
        if ids is None:
            raise BackendError(
                f"backend {self.name!r} does not implement the encode_text hook (spec version 4), which a "
                "text-generation model needs to tokenize its prompt as plain text; implement encode_text, or "
                "package the model with prompt_format='chat_template' to wrap each prompt in the chat template"
            )
        if isinstance(ids, (str, bytes)):
            raise self._bad_return("encode_text", "a list of token ids", ids)
        return [int(i) for i in ids]

    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Run the backend's generator over a batch of requests."""
        stream = self.pm.hook.generate(handle=handle, requests=requests)
        if stream is None or not hasattr(stream, "__iter__"):
            raise self._bad_return("generate", "an iterator of flavorkit.Delta", stream)
        try:
            for delta in stream:
                if not isinstance(delta, Delta):
                    raise self._bad_return("generate", "flavorkit.Delta items", delta)
                if not 0 <= delta.index < len(requests):
                    raise BackendError(
                        f"backend {self.name!r} yielded a delta for request {delta.index}, "
                        f"but the batch has {len(requests)} request(s)"
                    )
                yield delta
        finally:
            close_stream(stream)

    def guidance_tokenizer(self, handle: Any) -> Any:
        """The model's ``llguidance.LLTokenizer`` (spec 3); a backend declaring guided decoding must give one."""
        tokenizer = self.pm.hook.guidance_tokenizer(handle=handle) if self._implements("guidance_tokenizer") else None
        if tokenizer is None:
            raise BackendError(
                f"backend {self.name!r} declares the 'guided_decoding' capability but its guidance_tokenizer "
                "hook returned nothing; it must return an llguidance.LLTokenizer"
            )
        return tokenizer

    def generate_session(self, handle: Any) -> GenerationSession | None:
        """The backend's continuous-batching session for ``handle``, or None when it has none (spec v2)."""
        session = self.pm.hook.generate_session(handle=handle)
        if session is not None and not isinstance(session, GenerationSession):
            raise self._bad_return("generate_session", "a flavorkit.GenerationSession or None", session)
        return session

    def unload(self, handle: Any) -> None:
        """Release the handle's resources."""
        self.pm.hook.unload(handle=handle)


@dataclass
class _Entry:
    name: str
    object_path: str
    distribution: str | None
    version: str | None
    plugin: Any = None
    backend: Backend | None = None
    error: str | None = None


@dataclass
class Registry:
    """All backends and middleware found in the installed entry points."""

    strict: bool = False
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _middleware: list[tuple[str, Any]] = field(default_factory=list)
    _shipped: dict[tuple[str, str], Backend] = field(default_factory=dict)

    @classmethod
    def discover(cls, strict: bool | None = None) -> Registry:
        """Read both entry-point groups and load every plugin, isolating failures."""
        reg = cls(strict=strict_from_env() if strict is None else strict)
        for ep in _entry_points(MIDDLEWARE_GROUP):
            try:
                obj = _instantiate(ep.load())
            except Exception as exc:
                reg._plugin_failed(f"middleware {ep.name!r} ({ep.value})", exc)
                continue
            reg._middleware.append((ep.name, obj))
        for ep in _entry_points(BACKEND_GROUP):
            dist = getattr(ep, "dist", None)
            entry = _Entry(
                name=ep.name,
                object_path=ep.value,
                distribution=dist.name if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if ep.name in reg._entries:
                other = reg._entries[ep.name]
                if other.object_path == ep.value:
                    continue  # the same distribution seen twice on sys.path
                entry.error = (
                    f"duplicate backend id {ep.name!r}: also provided by {other.distribution} "
                    f"({other.object_path}); this one is ignored"
                )
                reg._plugin_failed(entry.error, None)
                reg._entries[f"{ep.name} [{entry.distribution}]"] = entry
                continue
            try:
                entry.plugin = _instantiate(ep.load())
                entry.backend = Backend(
                    ep.name,
                    entry.plugin,
                    object_path=ep.value,
                    distribution=entry.distribution,
                    version=entry.version,
                    middleware=reg._middleware,
                )
            except Exception as exc:
                entry.error = _describe_exception(exc)
                reg._plugin_failed(f"backend {ep.name!r} ({ep.value})", exc)
            reg._entries[ep.name] = entry
        return reg

    def _plugin_failed(self, what: str, exc: BaseException | None) -> None:
        if self.strict:
            detail = f": {_describe_exception(exc)}" if exc is not None else ""
            raise PluginSpecError(f"{what} failed to load{detail} ({STRICT_ENV} is set)") from exc

    def names(self) -> list[str]:
        """Ids of the backends that loaded (available or not)."""
        return sorted(n for n, e in self._entries.items() if e.backend is not None)

    def statuses(self) -> list[BackendStatus]:
        """One :class:`BackendStatus` per entry point, broken ones included."""
        out = []
        for name in sorted(self._entries):
            entry = self._entries[name]
            out.append(_status(entry))
        return out

    def get(self, name: str, *, require_available: bool = True) -> Backend:
        """The backend registered as ``name``; raises if unknown, broken or (optionally) unavailable."""
        entry = self._entries.get(name)
        if entry is None:
            broken = [n for n, e in self._entries.items() if e.backend is None]
            raise BackendNotFound(name, self.names(), broken)
        if entry.backend is None:
            raise PluginSpecError(f"backend {name!r} ({entry.object_path}) failed to load: {entry.error}")
        if require_available:
            entry.backend.check_available()
        return entry.backend

    def load_object(self, name: str, object_path: str) -> Backend:
        """Build a backend from an import path, for models served where no entry point exists.

        A packaged model ships its plugin's code and records the entry-point value; this lets the
        model load in an environment created from its requirements alone.
        """
        entry = self._entries.get(name)
        if entry is not None and entry.backend is not None and entry.object_path == object_path:
            return entry.backend
        # Kept apart from the entry points: a model recording another object under an installed
        # backend's id must not replace that backend for the rest of the process.
        cached = self._shipped.get((name, object_path))
        if cached is not None:
            return cached
        try:
            # The same parser and importer as an installed entry point's: "module:attr.attr".
            plugin = _instantiate(md.EntryPoint(name=name, value=object_path, group=BACKEND_GROUP).load())
        except Exception as exc:
            raise PluginSpecError(f"backend {name!r}: cannot import {object_path}: {_describe_exception(exc)}") from exc
        backend = Backend(name, plugin, object_path=object_path, middleware=self._middleware)
        self._shipped[(name, object_path)] = backend
        return backend


def _entry_points(group: str) -> list[md.EntryPoint]:
    return list(md.entry_points(group=group))


def _instantiate(obj: Any) -> Any:
    """Entry points may name a class; pluggy needs an instance so ``self`` is bound."""
    return obj() if inspect.isclass(obj) else obj


def _describe_exception(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, PluginSpecError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _status(entry: _Entry) -> BackendStatus:
    def status(available: bool, error: str | None, **extra: Any) -> BackendStatus:
        return BackendStatus(
            name=entry.name,
            distribution=entry.distribution,
            version=entry.version,
            object=entry.object_path,
            available=available,
            error=error,
            **extra,
        )

    if entry.backend is None:
        return status(False, entry.error)
    try:
        deps = entry.backend.dependencies()
        caps = tuple(sorted(c.value for c in entry.backend.capabilities()))
    except Exception as exc:
        return status(False, _describe_exception(exc))
    problems = missing_requirements(deps)
    return status(
        not problems,
        "; ".join(problems) or None,
        install_hint=install_hint(deps) if problems else None,
        dependencies=tuple(deps),
        capabilities=caps,
    )


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry(*, refresh: bool = False, strict: bool | None = None) -> Registry:
    """The process-wide registry, discovered on first use (``refresh=True`` rescans entry points)."""
    global _registry
    with _lock:
        want_strict = strict_from_env() if strict is None else strict
        if refresh or _registry is None or _registry.strict != want_strict:
            _registry = Registry.discover(strict=want_strict)
        return _registry


def backends(*, refresh: bool = False) -> list[dict[str, Any]]:
    """List every installed backend as dicts: name, available, distribution, version, error, hint."""
    return [s.as_dict() for s in get_registry(refresh=refresh).statuses()]


def get_backend(name: str, *, require_available: bool = True) -> Backend:
    """The backend registered as ``name`` (see :meth:`Registry.get`)."""
    return get_registry().get(name, require_available=require_available)
