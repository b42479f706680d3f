"""Runtime hooks for backends whose ``load`` returns a handle object that does the work itself.

Internal: not part of the plugin SDK; import its public names from :mod:`flavorkit.sdk`.

Most backends end up with a handle class holding the model and tokenizer, and hooks that only
forward to it. Inheriting :class:`HandleHooks` provides those forwarding hooks (``describe``,
``encode``, ``generate``, ``unload``, and, for a handle with the matching method,
``encode_text``, ``guidance_tokenizer`` and ``generate_session``); the backend then implements ``dependencies``,
``artifacts`` and ``load`` (returning a :class:`RuntimeHandle`) and whatever optional hooks it needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from flavorkit.backend.hookspec import hookimpl
from flavorkit.types import Delta, GenerationRequest, GenerationSession, Message, RuntimeInfo

__all__ = ["HandleHooks", "RuntimeHandle"]


@runtime_checkable
class RuntimeHandle(Protocol):
    """What :class:`HandleHooks` expects ``load`` to return."""

    #: Tokens (prompt + completion) the model can attend to.
    context_length: int
    #: The name reported in responses when the packager recorded none.
    name: str

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Prompt token ids after the chat template (with the generation prompt)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Deltas for a batch of requests, as the ``generate`` hook specifies."""
        ...

    def close(self) -> None:
        """Release the runtime's resources."""
        ...


class HandleHooks:
    """``describe``/``encode``/``generate``/``unload`` forwarded to a :class:`RuntimeHandle`."""

    @hookimpl
    def describe(self, handle: Any) -> RuntimeInfo:
        """Context length and name from the handle."""
        return RuntimeInfo(context_length=int(handle.context_length), model_name=str(handle.name))

    @hookimpl
    def encode(self, handle: Any, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
        """The handle's chat template and tokenizer; ``tools`` only to a handle whose ``encode`` takes them."""
        if tools is not None and "tools" in inspect.signature(handle.encode).parameters:
            return list(handle.encode(messages, tools=tools))
        return list(handle.encode(messages))

    @hookimpl
    def encode_text(self, handle: Any, text: str) -> list[int] | None:
        """The handle's ``encode_text(text)`` (spec version 4), when it has one; None otherwise."""
        tokenize = getattr(handle, "encode_text", None)
        return [int(t) for t in tokenize(text)] if callable(tokenize) else None

    @hookimpl
    def guidance_tokenizer(self, handle: Any) -> Any:
        """The handle's ``guidance_tokenizer()`` (spec version 3), when it has one."""
        make = getattr(handle, "guidance_tokenizer", None)
        return make() if callable(make) else None

    @hookimpl
    def generate(self, handle: Any, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """The handle's decoding loop."""
        return handle.generate(requests)  # type: ignore[no-any-return]

    @hookimpl
    def generate_session(self, handle: Any) -> GenerationSession | None:
        """The handle's ``session()`` when it has one (continuous batching, spec version 2), else None."""
        session = getattr(handle, "session", None)
        if not inspect.ismethod(session):  # e.g. an onnxruntime InferenceSession kept as ``handle.session``
            return None
        return session()  # type: ignore[no-any-return]

    @hookimpl
    def unload(self, handle: Any) -> None:
        """The handle's close()."""
        handle.close()
