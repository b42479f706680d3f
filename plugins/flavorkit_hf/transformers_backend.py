"""The ``transformers`` backend: a Hugging Face causal LM run by PyTorch.

Sources: a local checkpoint folder, a Hub id (downloaded with huggingface_hub), or an already built
``transformers.Pipeline``. A folder is validated (config, causal-LM class, weight headers,
tokenizer) without loading the weights and its files are staged as real files (no link in it may lead
outside the source, see :func:`flavorkit.packaging.sources.stage_tree`); a pipeline's model
and tokenizer are saved with ``save_pretrained``. This module is what the entry point names, so it
stays light: torch and transformers are imported only inside hooks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from flavorkit.sdk import (
    Artifacts,
    GenerationSession,
    ModelSourceError,
    check_links,
    extra_requirements,
    hookimpl,
    pinned,
)
from flavorkit_hf.common import CommonOptions, HFBackendBase, require_chat_template, resolve_source

__all__ = ["TransformersBackend", "TransformersOptions", "backend"]

#: Runtime distributions (the ``transformers`` extra of flavorkit); never torchvision.
RUNTIME = ("transformers", "torch", "accelerate")
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu|npu)(:\d+)?)$")


class TransformersOptions(CommonOptions):
    """Options of the ``transformers`` backend (``options=`` in :func:`flavorkit.package`)."""

    torch_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weight dtype at load time; 'auto' keeps the checkpoint's own dtype."
    )
    device: str = Field("cpu", description="Where to run: 'cpu', 'cuda', 'cuda:1', 'mps', ... or 'auto'.")
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None, description="Attention kernel; None lets transformers choose (sdpa where supported)."
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch's CPU threads (torch.set_num_threads, for the whole process); default: torch's own, one "
        "per physical core. FLAVORKIT_THREADS (flavorkit serve --threads) overrides it.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("expected 'auto', 'cpu', 'mps' or 'cuda'/'xpu'/'npu' with an optional ':<index>'")
        return value


class TransformersBackend(HFBackendBase):
    """A transformers ``AutoModelForCausalLM`` with its tokenizer's chat template."""

    @hookimpl
    def dependencies(self) -> Sequence[str]:
        """transformers, torch and accelerate, in the ranges of the ``flavorkit[transformers]`` extra."""
        return extra_requirements("transformers", fallback=RUNTIME)

    @hookimpl
    def option_schema(self) -> type[BaseModel]:
        """See :class:`TransformersOptions`."""
        return TransformersOptions

    @hookimpl
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str) -> Artifacts:
        """A checkpoint folder or Hub id, validated and staged; or a Pipeline saved with save_pretrained.

        A chat model (``task``) needs a chat template; a text-generation one does not.
        """
        from flavorkit_hf.checkpoint import save_pipeline, stage_checkpoint, validate_checkpoint

        trust = bool(options.get("trust_remote_code", False))
        dest = Path(workdir) / "model"
        if isinstance(source, (str, os.PathLike)):
            found = resolve_source(source, options, weights=True)
            check_links(found)  # before transformers reads a file of it
            info = validate_checkpoint(found.path, trust_remote_code=trust)
            require_chat_template(found.path, task, declared=info["chat_template"])
            stage_checkpoint(found, dest, weights=info["weights"], trust_remote_code=trust)
            origin = "checkpoint"
        else:
            from transformers import Pipeline

            if not isinstance(source, Pipeline):
                raise ModelSourceError(
                    type(source).__name__,
                    "the transformers backend takes a checkpoint path, a Hub id or a transformers.Pipeline",
                )
            save_pipeline(source, dest)
            info = validate_checkpoint(dest, trust_remote_code=trust)
            require_chat_template(dest, task, declared=info["chat_template"])
            origin = "pipeline"
        return Artifacts(
            files={"model": str(dest)},
            requirements=[pinned(name) for name in RUNTIME],
            metadata={"source": origin, **info},
        )

    @hookimpl
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Load the packaged checkpoint with AutoModelForCausalLM and AutoTokenizer."""
        from flavorkit_hf.runtime import load_transformers

        return load_transformers(artifacts["model"], options)

    @hookimpl
    def generate_session(self, handle: Any) -> GenerationSession | None:
        """The engine's continuous-batching session (one live row at a time in ``"sequential"`` mode)."""
        return handle.session()  # type: ignore[no-any-return]


backend = TransformersBackend()
