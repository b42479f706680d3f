"""What the ``transformers`` and ``optimum-onnx`` backends share, kept light (no torch at import).

Options common to both, the runtime hooks (which delegate to :class:`flavorkit_hf.engine.Engine`),
and the handling of checkpoint folders: resolving a path or Hub id, refusing custom code unless the
user trusts it, finding the weights, and staging just the files a model needs (hard links where
possible, so packaging a large checkpoint does not copy it twice).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flavorkit.sdk import (
    Capability,
    HandleHooks,
    ModelDir,
    ModelSourceError,
    hookimpl,
    looks_like_hub_id,
    resolve_model_dir,
    stage_tree,
)

__all__ = [
    "CHAT",
    "CODE_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "CommonOptions",
    "HFBackendBase",
    "check_remote_code",
    "load_tokenizer",
    "read_json",
    "require_chat_template",
    "resolve_source",
    "stage_files",
    "weight_files",
]

#: The chat task, as the ``artifacts`` hook receives it (spec version 4): only it needs a chat template.
CHAT = "llm/v1/chat"
#: Weight formats a transformers checkpoint may carry; only the one used is packaged.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
#: Files that only matter when custom code is trusted.
CODE_SUFFIXES = (".py",)
#: Model files are never needed; these patterns fetch a Hub checkpoint without other formats.
_HUB_METADATA = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py"]
_TRUST_HINT = 'pass options={"trust_remote_code": True} to flavorkit.package if you trust that code'


class CommonOptions(BaseModel):
    """Options both Hugging Face backends accept (``options=`` in :func:`flavorkit.package`)."""

    model_config = ConfigDict(extra="forbid")

    subfolder: str | None = Field(None, description="Folder inside the source (local or Hub repo) holding the model.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when the source is a Hub id.")
    trust_remote_code: bool = Field(
        False, description="Run the custom modelling/tokenizer code a checkpoint ships (its auto_map). Off by default."
    )
    batching: Literal["exact", "padded", "sequential"] = Field(
        "exact",
        description=(
            "'exact': padded batches, and a greedy row whose top-2 logits nearly tie is finished alone, so every "
            "greedy result equals its single-request result; 'padded': padded batches only (fastest); "
            "'sequential': one request at a time."
        ),
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="Most requests decoded together in one padded batch.")


class HFBackendBase(HandleHooks):
    """The runtime hooks both backends implement the same way, over an :class:`~flavorkit_hf.engine.Engine`."""

    @hookimpl
    def capabilities(self, options: Mapping[str, Any] | None) -> Iterable[Capability]:
        """Streaming, padded and continuous batching (the engine's session), (seeded) sampling, guided decoding.

        Batch invariance with ``batching="exact"`` (the default) or ``"sequential"``: in exact mode
        a greedy row whose two best logits nearly tie is replayed and finished alone, and 16-bit
        weights decode one request at a time (see :mod:`flavorkit_hf.engine`). Not with ``"padded"``.
        """
        caps = [
            Capability.STREAMING,
            Capability.BATCHING,
            Capability.CONTINUOUS_BATCHING,
            Capability.SAMPLING,
            Capability.SEEDED_SAMPLING,
            Capability.GUIDED_DECODING,
        ]
        if (options or {}).get("batching", "exact") in ("exact", "sequential"):
            caps.append(Capability.BATCH_INVARIANT)
        return caps


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or an empty dict when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(path, f"cannot read JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def resolve_source(source: Any, options: Mapping[str, Any], *, weights: bool) -> ModelDir:
    """The local folder for a path or Hub id (with where its links may lead); Hub downloads skip unused weights."""
    if not isinstance(source, (str, os.PathLike)):
        raise ModelSourceError(type(source).__name__, "expected a local path or a Hugging Face Hub id")
    subfolder, revision = options.get("subfolder"), options.get("revision")
    text = os.fspath(source)
    if not looks_like_hub_id(text):
        return resolve_model_dir(text, subfolder=subfolder, revision=revision)
    patterns = [*_HUB_METADATA, "*.safetensors"] if weights else [*_HUB_METADATA, "*.onnx", "*.onnx_data", "*.data"]
    found = resolve_model_dir(text, subfolder=subfolder, revision=revision, allow_patterns=patterns)
    if weights and not weight_files(found.path, required=False):
        patterns = [*_HUB_METADATA, "*.bin"]
        found = resolve_model_dir(text, subfolder=subfolder, revision=revision, allow_patterns=patterns)
    return found


def load_tokenizer(folder: str | Path, trust_remote_code: bool) -> Any:
    """``AutoTokenizer`` for ``folder``; a tokenizer that cannot be loaded is a :class:`ModelSourceError`."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelSourceError(folder, f"the tokenizer cannot be loaded: {exc}") from exc


def check_remote_code(folder: Path, trust_remote_code: bool) -> list[str]:
    """The custom classes a checkpoint's ``auto_map`` names; refuses them unless code is trusted."""
    refs: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        auto_map = read_json(folder / name).get("auto_map") or {}
        if isinstance(auto_map, dict):
            for value in auto_map.values():
                refs += [str(v) for v in (value if isinstance(value, list) else [value]) if v]
    if refs and not trust_remote_code:
        raise ModelSourceError(
            folder,
            f"the checkpoint needs custom code ({', '.join(sorted(set(refs)))} from its auto_map), which is not run "
            f"by default; {_TRUST_HINT}",
        )
    return refs


def require_chat_template(
    folder: Path, task: str, *, declared: bool | None = None, trust_remote_code: bool = False
) -> None:
    """Refuse a chat model whose tokenizer has no chat template (the hook spec's rule for ``artifacts``).

    ``declared`` is what :func:`flavorkit_hf.checkpoint.validate_checkpoint` already found out; when it
    is None the tokenizer in ``folder`` is loaded to find out. A ``text-generation`` model (``task``)
    needs none: its prompts are plain text (``encode_text``).
    """
    if task != CHAT:
        return
    if declared is None:
        declared = bool(getattr(load_tokenizer(folder, trust_remote_code), "chat_template", None))
    if not declared:
        raise ModelSourceError(
            folder,
            "the model's tokenizer has no chat template (no 'chat_template' in tokenizer_config.json, no "
            "chat_template.jinja), so chat messages cannot be turned into a prompt; package an instruction-tuned "
            "(chat) model, or add the model's template to its folder as chat_template.jinja (in Python: "
            "tokenizer.chat_template = TEMPLATE; tokenizer.save_pretrained(FOLDER))",
        )


def weight_files(folder: Path, *, required: bool = True) -> list[Path]:
    """The weight files a transformers checkpoint loads: safetensors if present, else PyTorch ``.bin``."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (folder / index).is_file():
            shards = sorted(set(read_json(folder / index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise ModelSourceError(folder, f"{index} lists missing weight shards: {', '.join(missing) or 'none'}")
            return [folder / index, *(folder / s for s in shards)]
        if (folder / single).is_file():
            return [folder / single]
    others = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if others:
        return others
    if required:
        raise ModelSourceError(
            folder, "no weights found (model.safetensors, a sharded index or pytorch_model.bin): not a checkpoint"
        )
    return []


def stage_files(folder: ModelDir | Path, dest: Path, keep: Callable[[Path], bool]) -> Path:
    """Stage the visible top-level files of ``folder`` that ``keep`` accepts into ``dest`` as real files.

    Every link in ``folder`` is checked first (see :func:`flavorkit.packaging.sources.stage_tree`).
    """
    return stage_tree(folder, dest, keep=lambda path: not path.name.startswith(".") and keep(path), recursive=False)
