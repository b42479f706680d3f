"""onnxruntime-genai backends: ``onnx-cpu``, ``onnx-cuda`` and ``onnx-dml``.

This module is what the entry points name, so it stays light: onnxruntime-genai is imported only
inside the hooks that need it (see :mod:`flavorkit_onnxgenai.runtime`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flavorkit.sdk import (
    Artifacts,
    Capability,
    HandleHooks,
    ModelSourceError,
    check_links,
    cpu_threads,
    extra_requirements,
    hookimpl,
    pinned,
    resolve_model_dir,
    stage_tree,
)

__all__ = ["OnnxGenaiBackend", "OnnxOptions", "batching_of", "cpu", "cuda", "dml"]

Provider = Literal["cpu", "cuda", "dml"]

#: The runtime distribution per execution provider (each ships the same ``onnxruntime_genai`` module).
DISTRIBUTIONS: dict[str, str] = {
    "cpu": "onnxruntime-genai",
    "cuda": "onnxruntime-genai-cuda",
    "dml": "onnxruntime-genai-directml",
}
#: The flavorkit extra per execution provider: its range (in pyproject.toml) is the one versions
#: whose API flavorkit uses (the Generator: append_tokens, generate_next_token) were verified on.
EXTRAS: dict[str, str] = {"cpu": "onnx", "cuda": "onnx-cuda", "dml": "onnx-dml"}


class OnnxOptions(BaseModel):
    """Options of the onnxruntime-genai backends (``options=`` in :func:`flavorkit.package`)."""

    model_config = ConfigDict(extra="forbid")

    subfolder: str | None = Field(
        None, description="Folder inside the source (local or Hub repo) holding genai_config.json."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when the source is a Hub id.")
    precision: Literal["int4", "int8", "fp16", "fp32"] = Field(
        "int4", description="Precision when converting a transformers checkpoint with the model builder."
    )
    builder_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra --extra_options for the model builder, e.g. {'algo_config': 'k_quant_mixed'}.",
    )
    provider_options: dict[str, str] = Field(
        default_factory=dict, description="Execution provider options at load time, e.g. {'device_id': '0'} for CUDA."
    )
    batching: Literal["exact", "auto", "sequential"] = Field(
        "exact",
        description=(
            "'exact': a greedy request decodes in its own generator, interleaved step by step with the others, so its "
            "answer never depends on the load; sampled requests with equal settings share batches. 'auto': greedy "
            "requests share batches too (faster under load, but int4 kernels round differently for several rows, so "
            "a greedy answer can change where two tokens nearly tie). 'sequential': every request alone."
        ),
    )
    intra_op_num_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="ONNX Runtime threads per decoding step on the CPU provider; default: every core this process "
        "may use (onnxruntime-genai alone would use one). FLAVORKIT_THREADS (flavorkit serve --threads) overrides it.",
    )


#: The chat task, as the ``artifacts`` hook receives it (spec version 4): only it needs a chat template.
CHAT = "llm/v1/chat"

#: How to give a model a chat template, for the error that refuses a model without one.
TEMPLATE_FIX = (
    "package an instruction-tuned (chat) model, or add the model's template to its folder as chat_template.jinja "
    "(in Python: tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(FOLDER))"
)


def require_chat_template(folder: Path, task: str = CHAT) -> None:
    """Refuse a chat model folder whose tokenizer files declare no chat template (the hook spec's ``artifacts`` rule).

    onnxruntime-genai reads ``chat_template.jinja`` or the ``chat_template`` string of
    ``tokenizer_config.json``; a checkpoint may also carry ``chat_template.json``. A
    ``text-generation`` model needs none: its prompts are plain text (``encode_text``).
    """
    if task != CHAT:
        return
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.stat().st_size > 0:
        return
    for name in ("tokenizer_config.json", "chat_template.json"):
        try:
            declared = json.loads((folder / name).read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError, AttributeError):
            declared = None
        if declared:
            return
    raise ModelSourceError(
        folder,
        "the model has no chat template (no 'chat_template' in tokenizer_config.json, no chat_template.jinja), "
        f"so chat messages cannot be turned into a prompt; {TEMPLATE_FIX}",
    )


def batching_of(options: Mapping[str, Any] | None) -> str:
    """The batching mode of ``options``; None (no model at hand) means the default, ``"exact"``.

    A model packaged before ``"exact"`` existed stored its choice (``"auto"``, the old default),
    so validated options always name one; options without it are an older model's, hence ``"auto"``.
    """
    if options is None:
        return "exact"
    return str(options.get("batching", "auto"))


class OnnxGenaiBackend(HandleHooks):
    """One onnxruntime-genai execution provider exposed as a flavorkit backend.

    ``load`` returns an :class:`~flavorkit_onnxgenai.runtime.OgHandle`; the runtime hooks forward to it.
    """

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.distribution = DISTRIBUTIONS[provider]

    @hookimpl
    def dependencies(self) -> Sequence[str]:
        """The provider's onnxruntime-genai build, in the range of its flavorkit extra (``flavorkit[onnx]``, ...)."""
        return extra_requirements(EXTRAS[self.provider], fallback=[self.distribution])

    @hookimpl
    def capabilities(self, options: Mapping[str, Any] | None) -> Iterable[Capability]:
        """Streaming, batching, (seeded) sampling, continuous batching, guided decoding; GPU for CUDA and DirectML.

        Continuous batching comes from the handle's ``session()`` (``og.Generator`` batches over the
        shared ``og.Model`` advanced alternately; see ``OgHandle.session``). Guided decoding edits
        each step's logits between ``get_logits`` and ``set_logits`` (see ``OgHandle._decode``).
        Batch invariance with ``batching="exact"`` (the default) or ``"sequential"``: greedy rows
        share a batch only where the machine's bitwise probe (``OgHandle.batches_exactly``) shows
        that batched logits equal the single-row ones, else each decodes alone. Not with ``"auto"``.
        """
        caps = [
            Capability.STREAMING,
            Capability.BATCHING,
            Capability.SAMPLING,
            Capability.SEEDED_SAMPLING,
            Capability.CONTINUOUS_BATCHING,
            Capability.GUIDED_DECODING,
        ]
        if batching_of(options) in ("exact", "sequential"):
            caps.append(Capability.BATCH_INVARIANT)
        if self.provider != "cpu":
            caps.append(Capability.GPU)
        return caps

    @hookimpl
    def option_schema(self) -> type[BaseModel]:
        """See :class:`OnnxOptions`."""
        return OnnxOptions

    @hookimpl
    def artifacts(self, source: Any, options: Mapping[str, Any], workdir: str, task: str) -> Artifacts:
        """An ORT-genai folder as is, or a transformers checkpoint converted with the model builder.

        Every link in the source is checked first (none may lead outside it). A folder holding links
        (a Hub cache snapshot always does) is staged into ``workdir`` as real files; one without is
        packaged in place, which saves a copy of the weights. A chat model (``task``) needs a chat template.
        """
        if not isinstance(source, (str, Path)):
            raise ModelSourceError(
                type(source).__name__,
                "onnx backends take a path or Hub id of an ORT-genai folder or a transformers checkpoint",
            )
        found = resolve_model_dir(source, subfolder=options.get("subfolder"), revision=options.get("revision"))
        links = check_links(found)
        folder = found.path
        metadata: dict[str, Any] = {"provider": self.provider}
        if (folder / "genai_config.json").is_file():
            require_chat_template(folder, task)
            if links:
                folder = stage_tree(found, Path(workdir) / "model")
        else:
            if not (folder / "config.json").is_file():
                raise ModelSourceError(
                    folder,
                    "neither genai_config.json (an ORT-genai model) nor config.json (a transformers checkpoint) found",
                )
            from flavorkit_onnxgenai.convert import convert_checkpoint

            require_chat_template(folder, task)  # before a conversion that would be wasted
            folder = convert_checkpoint(
                found,
                precision=options.get("precision", "int4"),
                execution_provider=self.provider,
                builder_options=options.get("builder_options", {}),
            )
            require_chat_template(folder, task)  # what onnxruntime-genai will read
            metadata["converted"] = {
                "precision": options.get("precision", "int4"),
                **options.get("builder_options", {}),
            }
        return Artifacts(files={"model": str(folder)}, requirements=[pinned(self.distribution)], metadata=metadata)

    @hookimpl
    def load(self, artifacts: Mapping[str, str], options: Mapping[str, Any]) -> Any:
        """Create the og.Model and tokenizer for this provider."""
        from flavorkit_onnxgenai.runtime import OgHandle

        return OgHandle.load(
            artifacts["model"],
            provider=self.provider,
            provider_options=options.get("provider_options", {}),
            batching=batching_of(options),
            intra_op_num_threads=cpu_threads(options.get("intra_op_num_threads")),
        )


cpu = OnnxGenaiBackend("cpu")
cuda = OnnxGenaiBackend("cuda")
dml = OnnxGenaiBackend("dml")
