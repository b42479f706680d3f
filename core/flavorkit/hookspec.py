"""The ``WrapperBackend`` hook specification: the whole contract between flavorkit and a backend.

Internal: not part of the plugin SDK; import :data:`hookimpl` and ``SPEC_VERSION`` from :mod:`flavorkit.sdk`.

Each hook's docstring is its specification. A backend is any object (a module, a class instance)
with functions marked by :data:`flavorkit.hookimpl` whose names match hooks below; it is registered
through an entry point in the ``flavorkit.backends`` group. A backend implements only the hooks it
needs: the core supplies defaults for the optional ones (see :mod:`flavorkit.defaults`).

Required hooks: :meth:`~WrapperBackend.dependencies`, :meth:`~WrapperBackend.artifacts`,
:meth:`~WrapperBackend.load`, :meth:`~WrapperBackend.describe`, :meth:`~WrapperBackend.encode`
and :meth:`~WrapperBackend.generate`.

Evolving the spec: new keyword arguments and new hooks may be added; an argument is never renamed
or removed (pluggy passes a hookimpl only the arguments it names, so old plugins keep working).
The version is :data:`SPEC_VERSION`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from flavorkit.types import (
    Artifacts,
    Capability,
    Delta,
    GenerationRequest,
    GenerationSession,
    Message,
    RuntimeInfo,
)

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from pydantic import BaseModel

__all__ = ["PROJECT", "REQUIRED_HOOKS", "SPEC_VERSION", "WrapperBackend", "hookimpl", "hookspec"]

#: The pluggy project name shared by the spec and every implementation.
PROJECT = "flavorkit"
#: Version of this hook specification; bumped when hooks or arguments are added.
SPEC_VERSION = 2

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a function as the implementation of a :class:`WrapperBackend` hook.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Hooks every backend must implement itself; the registry rejects a backend that lacks one.
REQUIRED_HOOKS = ("dependencies", "artifacts", "load", "describe", "encode", "generate")


class WrapperBackend:
    """The contract every flavorkit backend implements."""

    @hookspec(firstresult=True)
    def dependencies(self) -> Sequence[str]:  # type: ignore[empty-body]
        """Return the PEP 508 requirements the backend needs at run time, e.g. ``["onnxruntime-genai>=0.15"]``.

        Called when listing backends, so it must not import those dependencies: the core checks
        them against the installed distributions and reports the exact ``pip install`` hint.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def capabilities(self) -> Iterable[Capability | str]:  # type: ignore[empty-body]
        """Return the optional :class:`~flavorkit.types.Capability` values the backend supports.

        The core rejects sampling requests for a backend without ``sampling``, and the conformance
        kit skips the clauses of capabilities a backend lacks. Default: ``streaming`` only.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def option_schema(self) -> type[BaseModel] | None:  # type: ignore[empty-body]
        """Return a pydantic model describing the backend's ``options``, or None for no options.

        The core validates user options with it before any other hook sees them, so unknown keys
        and bad values fail early with the field name. Hooks receive the validated options as a
        plain ``dict``. Default: no options are accepted.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str) -> Artifacts:  # type: ignore[empty-body]
        """Resolve a model source into the files to package, the pinned requirements and metadata.

        ``source`` is what the user passed as ``model=``: a local path, a Hub id, or an in-memory
        object the backend understands. Conversions (export, quantisation) happen here; scratch
        output goes under ``workdir``, which the packager deletes afterwards. Requirements must be
        minimal and pinned, e.g. via :func:`flavorkit.requirements.pinned`. Raise
        :class:`~flavorkit.errors.ModelSourceError` naming the path when the source is unusable.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def signature(self, task: str, options: Mapping[str, Any]) -> ModelSignature | None:  # type: ignore[empty-body]
        """Return the MLflow ``ModelSignature`` for ``task``, or None to use the core's standard one.

        ``task`` is one of the core tasks (``"llm/v1/chat"``, ``"text-generation"``); the core
        serves only those. Override to narrow or document the standard signature, for instance
        when a backend cannot honour one of its optional fields.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Load the runtime from the packaged artifact paths and return an opaque handle.

        ``artifacts`` maps the names returned by :meth:`artifacts` to their paths inside the
        packaged model. Heavy imports belong here, not at module import time.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def describe(self, handle: Any) -> RuntimeInfo:  # type: ignore[empty-body]
        """Return the :class:`~flavorkit.types.RuntimeInfo` (context length, model name) of a handle.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def encode(self, handle: Any, messages: Sequence[Message]) -> list[int]:  # type: ignore[empty-body]
        """Apply the model's chat template to ``messages`` and return the prompt token ids.

        Includes the generation prompt (the assistant turn opener). The core counts
        ``prompt_tokens`` from this and rejects prompts that do not fit the context.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:  # type: ignore[empty-body]
        """Yield :class:`~flavorkit.types.Delta` text increments for a batch of validated requests.

        Each request produces one sequence; ``Delta.index`` is the request's position in
        ``requests``. Honour ``max_tokens`` (a hard limit), ``temperature``, ``top_p``, ``top_k``
        and ``seed`` (``None`` means unseeded: two requests for the same prompt must be able to
        differ; the core gives the ``n`` choices of a seeded request the seeds ``seed``,
        ``seed + 1``, ...); end every request with a delta whose ``finish_reason`` is ``"stop"`` (end of
        sequence) or ``"length"``. Never emit special tokens as text. Stop strings are cut by the
        core: a backend only needs to watch ``request.cancelled`` and drop cancelled requests.

        .. versionadded:: 1
        """

    @hookspec(firstresult=True)
    def generate_session(self, handle: Any) -> GenerationSession | None:
        """Open a :class:`~flavorkit.types.GenerationSession`: a batch that requests join while it runs.

        Optional; used by ``flavorkit serve`` so that a request arriving while others decode starts
        within a step or two instead of waiting for them to finish. Return None (the default) to be
        served with request-level batching through :meth:`generate`, or interleaved streams when
        the backend declares ``continuous_batching`` (the core then interleaves ``generate`` streams).
        A backend that implements this hook should declare ``continuous_batching`` too: the
        conformance kit checks the sessions of the backends that declare it. ``predict`` keeps using :meth:`generate`.

        .. versionadded:: 2
        """

    @hookspec(firstresult=True)
    def unload(self, handle: Any) -> None:
        """Release the resources of a handle (sessions, GPU memory). Optional.

        .. versionadded:: 1
        """
