"""Load a packaged model into an :class:`~flavorkit_hf.engine.Engine` (imported only by ``load`` hooks)."""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.version import Version

from flavorkit.sdk import BackendUnavailable, ModelSourceError, cpu_threads, usable_cores
from flavorkit_hf.engine import Engine, context_length_of

__all__ = ["load_optimum", "load_transformers", "resolve_device"]


def resolve_device(device: str) -> str:
    """``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _name(folder: str) -> str:
    """The checkpoint's own name (config ``_name_or_path``), else the folder's name."""
    from flavorkit_hf.common import read_json

    recorded = str(read_json(Path(folder) / "config.json").get("_name_or_path") or "").rstrip("/")
    return os.path.basename(recorded) or os.path.basename(os.path.normpath(folder))


def _own_memory(model: Any) -> None:
    """Copy CPU weights out of the memory-mapped safetensors file into the process's own memory.

    transformers leaves fp32 weights as views of the mmapped checkpoint. Those file-backed pages
    may be reclaimed whenever they look idle (proactive reclaim, memory pressure) and are then read
    back from disk during decoding: on the test machine that made steps up to tens of times slower,
    erratically. Anonymous memory is not paged out without swap. Tied weights stay tied (each
    Parameter object is visited once and keeps its identity).
    """
    import itertools

    import torch

    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()


def load_transformers(folder: str, options: Mapping[str, Any]) -> Engine:
    """Load the checkpoint in ``folder`` with ``AutoModelForCausalLM`` on the configured device."""
    import torch
    from transformers import AutoModelForCausalLM

    from flavorkit_hf.common import load_tokenizer

    trust = bool(options.get("trust_remote_code", False))
    tokenizer = load_tokenizer(folder, trust)
    dtype_name = str(options.get("torch_dtype", "auto"))
    dtype: Any = "auto" if dtype_name == "auto" else getattr(torch, dtype_name)
    # transformers 4.56 renamed torch_dtype to dtype (the old name warns).
    dtype_arg = "dtype" if Version(md.version("transformers")) >= Version("4.56") else "torch_dtype"
    kwargs: dict[str, Any] = {"trust_remote_code": trust, "low_cpu_mem_usage": True, dtype_arg: dtype}
    if options.get("attn_implementation"):
        kwargs["attn_implementation"] = options["attn_implementation"]
    device = resolve_device(str(options.get("device", "cpu")))
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        model.to(device)
    except Exception as exc:
        raise ModelSourceError(folder, f"transformers could not load the model: {exc}") from exc
    model.eval()
    if model.device.type == "cpu":
        _own_memory(model)
        threads = cpu_threads(options.get("num_threads"))
        if threads:
            torch.set_num_threads(int(threads))  # process-wide: torch has no per-model setting
        elif torch.get_num_threads() > usable_cores():
            torch.set_num_threads(usable_cores())  # torch counts the host's cores, not a container's quota
    return Engine(
        model,
        tokenizer,
        name=_name(folder),
        context_length=context_length_of(model.config, tokenizer),
        batching=options.get("batching", "exact"),
        max_batch_size=int(options.get("max_batch_size", 8)),
        position_ids=Engine.accepts(model, "position_ids"),
        logits_to_keep=Engine.accepts(model, "logits_to_keep"),
        dtype=model.dtype,
        device=model.device,
    )


def load_optimum(folder: str, options: Mapping[str, Any]) -> Engine:
    """Open the ONNX export in ``folder`` with Optimum's ``ORTModelForCausalLM`` on the chosen provider."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    provider = str(options.get("provider", "CPUExecutionProvider"))
    available = ort.get_available_providers()
    if provider not in available:
        raise BackendUnavailable(
            "optimum-onnx",
            f"execution provider {provider} is not available in this onnxruntime build (available: "
            f"{', '.join(available)})",
            "pip install onnxruntime-gpu" if provider == "CUDAExecutionProvider" else None,
        )
    session_options = ort.SessionOptions()
    # As onnx-cpu: every usable core (ONNX Runtime's own default counts the host's physical cores).
    session_options.intra_op_num_threads = int(cpu_threads(options.get("intra_op_num_threads")) or usable_cores())
    trust = bool(options.get("trust_remote_code", False))
    kwargs: dict[str, Any] = {
        "provider": provider,
        "session_options": session_options,
        "use_cache": True,
        "local_files_only": True,
        "trust_remote_code": trust,
    }
    if options.get("provider_options"):
        kwargs["provider_options"] = dict(options["provider_options"])
    if options.get("file_name"):
        kwargs["file_name"] = options["file_name"]
    try:
        model = ORTModelForCausalLM.from_pretrained(Path(folder), **kwargs)
    except Exception as exc:
        raise ModelSourceError(folder, f"Optimum could not load the ONNX model: {exc}") from exc
    if not model.can_use_cache:
        raise ModelSourceError(
            folder, "the ONNX model has no past key values inputs; export it with task 'text-generation-with-past'"
        )
    from flavorkit_hf.common import load_tokenizer

    tokenizer = load_tokenizer(folder, trust)
    # Legacy exports fold batch and heads (Bloom) or keys and values (GPT-BigCode) together: no row selection.
    legacy_cache = any(getattr(model, flag, False) for flag in ("old_bloom_modeling", "old_gpt_bigcode_modeling"))
    return Engine(
        model,
        tokenizer,
        name=_name(folder),
        context_length=context_length_of(model.config, tokenizer),
        batching="sequential" if legacy_cache else options.get("batching", "exact"),
        max_batch_size=int(options.get("max_batch_size", 8)),
        position_ids="position_ids" in model.input_names,
        logits_to_keep=False,
        dtype=model.dtype,
        device=model.device,
    )
