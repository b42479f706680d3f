"""Packaging-time handling of transformers checkpoints: validation without loading weights, staging.

Imported only from ``artifacts`` hooks; transformers is imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flavorkit.sdk import ModelDir, ModelSourceError, step
from flavorkit_hf.common import CODE_SUFFIXES, WEIGHT_SUFFIXES, check_remote_code, stage_files, weight_files

__all__ = ["save_pipeline", "stage_checkpoint", "validate_checkpoint"]

_ONNX_SUFFIXES = (".onnx", ".onnx_data", ".onnx.data")


def _not_a_checkpoint_hint(folder: Path) -> str:
    if (folder / "genai_config.json").is_file():
        return " (it is an onnxruntime-genai model: use backend 'onnx-cpu')"
    if any(folder.glob("*.onnx")):
        return " (it holds ONNX files: use backend 'optimum-onnx')"
    if any(folder.glob("*.gguf")):
        return " (it holds GGUF files, which this backend does not read)"
    return ""


def _check_safetensors(files: list[Path]) -> None:
    """Read each safetensors header (not the tensors) so a truncated or corrupt file fails now."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        return
    for path in files:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        except Exception as exc:
            raise ModelSourceError(path, f"unreadable safetensors file: {exc}") from exc


def validate_checkpoint(folder: Path, *, trust_remote_code: bool) -> dict[str, Any]:
    """Check ``folder`` is a causal-LM checkpoint transformers can load, without loading weights.

    Reads the config (refusing custom code unless trusted), checks the architecture has an
    ``AutoModelForCausalLM`` class, that the weights exist with readable headers and that the
    tokenizer loads. Returns metadata describing the checkpoint.
    """
    if not (folder / "config.json").is_file():
        raise ModelSourceError(folder, "no config.json: not a transformers checkpoint" + _not_a_checkpoint_hint(folder))
    check_remote_code(folder, trust_remote_code)
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelSourceError(folder, f"transformers cannot read config.json: {exc}") from exc
    auto_map = getattr(config, "auto_map", None) or {}
    model_type = str(getattr(config, "model_type", "") or "")
    architectures = list(getattr(config, "architectures", None) or [])
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise ModelSourceError(
            folder,
            f"model type {model_type!r} ({', '.join(architectures) or 'no architectures'}) is not a causal "
            "language model: AutoModelForCausalLM has no class for it",
        )
    weights = weight_files(folder)
    _check_safetensors(weights)
    from flavorkit_hf.common import load_tokenizer

    tokenizer = load_tokenizer(folder, trust_remote_code)
    return {
        "model_type": model_type,
        "architectures": architectures,
        "weights": [p.name for p in weights],
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def stage_checkpoint(folder: ModelDir | Path, dest: Path, *, weights: list[str], trust_remote_code: bool) -> Path:
    """Stage the config, tokenizer, generation config and the used weights (plus code when trusted)."""
    used = set(weights)

    def keep(path: Path) -> bool:
        name = path.name
        if name in used:
            return True
        if name.endswith(".index.json") or path.suffix in WEIGHT_SUFFIXES or name.endswith(_ONNX_SUFFIXES):
            return False
        if path.suffix in CODE_SUFFIXES:
            return trust_remote_code
        return True

    return stage_files(folder, dest, keep)


def save_pipeline(pipe: Any, dest: Path) -> Path:
    """Save a ``transformers.Pipeline``'s causal LM and tokenizer as a checkpoint folder."""
    model = getattr(pipe, "model", None)
    tokenizer = getattr(pipe, "tokenizer", None)
    what = type(pipe).__name__
    if model is None or not hasattr(model, "save_pretrained"):
        raise ModelSourceError(what, "the pipeline holds no transformers model")
    if tokenizer is None:
        raise ModelSourceError(what, "the pipeline has no tokenizer; build it with one (pipeline(..., tokenizer=...))")
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) or not getattr(model, "can_generate", lambda: False)():
        raise ModelSourceError(what, f"{type(model).__name__} is not a causal language model (text-generation)")
    with step(f"Saving the pipeline's {type(model).__name__} and tokenizer"):
        model.save_pretrained(str(dest), safe_serialization=True)
        tokenizer.save_pretrained(str(dest))
    _record_name(dest, str(getattr(model, "name_or_path", "") or getattr(config, "_name_or_path", "") or ""))
    return dest


def _record_name(folder: Path, name: str) -> None:
    """Keep the pipeline model's own name in the saved config (transformers 5 leaves ``_name_or_path`` out).

    The packaged model answers with it in ``model``; without it the name would be the staging
    folder's ("model").
    """
    if not name:
        return
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not config.get("_name_or_path"):
        config["_name_or_path"] = name.rstrip("/")
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
