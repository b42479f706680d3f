"""The ``llama-cpp`` flavorkit backend: a GGUF file served with llama-cpp-python.

This module is what the entry point names, so it imports only flavorkit and pydantic: the
llama_cpp extension is imported by :mod:`flavorkit_llamacpp.runtime`, inside the ``load`` hook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flavorkit.sdk import Artifacts, Capability, HandleHooks, ModelSourceError, check_links, hookimpl, pinned

__all__ = ["DISTRIBUTION", "LlamaCppBackend", "LlamaCppOptions", "backend"]

#: The runtime distribution, and the versions whose API this backend uses.
DISTRIBUTION = "llama-cpp-python"
SUPPORTED = ">=0.3.8,<0.4"


class LlamaCppOptions(BaseModel):
    """Options of the ``llama-cpp`` backend (``options=`` in :func:`flavorkit.package`)."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: int = Field(2048, ge=16, description="Context window in tokens (at most the model's training context).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for decoding; default: llama.cpp's choice.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per llama.cpp batch.")


def _find_gguf(source: Any) -> Path:
    """The GGUF file a source names: the file itself, or the only ``*.gguf`` in a folder."""
    if not isinstance(source, (str, os.PathLike)):
        raise ModelSourceError(type(source).__name__, "the llama-cpp backend takes the path of a .gguf file")
    path = Path(source).expanduser()
    if not path.exists():
        raise ModelSourceError(path, "no such file or directory")
    if path.is_dir():
        # A folder is a model source: a .gguf link that leads outside it is refused, not followed.
        check_links(path)
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise ModelSourceError(path, f"expected exactly one .gguf file in the folder, found {listed}")
        path = found[0]
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelSourceError(path, "not a GGUF file (it does not start with the GGUF magic)")
    return path.resolve()


class LlamaCppBackend(HandleHooks):
    """GGUF models through llama-cpp-python: streaming and (seeded) sampling, one request at a time.

    ``load`` returns a :class:`~flavorkit_llamacpp.runtime.LlamaHandle`; ``HandleHooks`` forwards
    ``describe``, ``encode``, ``generate`` and ``unload`` to it.
    """

    @hookimpl
    def dependencies(self) -> Sequence[str]:
        """llama-cpp-python, in the versions whose API this backend uses."""
        return [f"{DISTRIBUTION}{SUPPORTED}"]

    @hookimpl
    def capabilities(self) -> Iterable[Capability]:
        """Streaming, seeded sampling, guided decoding; requests of a batch run one after another (no batching)."""
        return [Capability.STREAMING, Capability.SAMPLING, Capability.SEEDED_SAMPLING, Capability.GUIDED_DECODING]

    @hookimpl
    def option_schema(self) -> type[BaseModel]:
        """See :class:`LlamaCppOptions`."""
        return LlamaCppOptions

    @hookimpl
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str) -> Artifacts:
        """The GGUF file as the single artifact ``model``; llama-cpp-python pinned to the installed version.

        A GGUF file without a chat template in its metadata is refused for the chat task (see the
        hook spec); a text-generation model tokenizes its prompts as plain text and needs none.
        """
        from flavorkit_llamacpp.runtime import chat_template_of

        gguf = _find_gguf(source)
        if task == "llm/v1/chat" and not chat_template_of(str(gguf)):
            raise ModelSourceError(
                gguf,
                "the GGUF file has no chat template (no 'tokenizer.chat_template' in its metadata), so chat messages "
                "cannot be turned into a prompt; package a GGUF file of an instruction-tuned (chat) model, or add "
                "the model's template: gguf-new-metadata --chat-template-file chat_template.jinja IN.gguf OUT.gguf "
                "(from the gguf package)",
            )
        return Artifacts(
            files={"model": str(gguf)},
            requirements=[pinned(DISTRIBUTION)],
            metadata={"gguf": gguf.name, "n_ctx": options.get("n_ctx", 2048)},
        )

    @hookimpl
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Open the packaged GGUF file with llama_cpp.Llama."""
        from flavorkit_llamacpp.runtime import LlamaHandle

        return LlamaHandle.load(
            artifacts["model"],
            n_ctx=int(options.get("n_ctx", 2048)),
            n_threads=options.get("n_threads"),
            n_batch=int(options.get("n_batch", 512)),
        )


#: The object the ``llama-cpp`` entry point names.
backend = LlamaCppBackend()
