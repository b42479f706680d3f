"""The special tokens of a model, read from the tokenizer files of its packaged artifacts or its source.

A Hugging Face style model folder declares them in ``tokenizer_config.json`` (the ``*_token``
keys, ``additional_special_tokens`` and ``added_tokens_decoder`` entries marked ``special``),
``special_tokens_map.json`` and ``tokenizer.json`` (``added_tokens`` marked ``special``). ONNX
Runtime GenAI folders carry the same tokenizer files next to ``genai_config.json`` (which names
token ids only). When no file declares any, the kit falls back to :data:`WELL_KNOWN`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["TOKENIZER_FILES", "WELL_KNOWN", "special_tokens"]

#: The files that declare special tokens, in the order they are read.
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
#: Special-token texts of common chat models, checked when the model declares none the kit can read.
WELL_KNOWN = (
    "<|im_end|>",
    "<|im_start|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "<|end|>",
    "<|assistant|>",
    "</s>",
)
_NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_MAX_DEPTH = 3


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _declared(name: str, data: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for key in _NAMED:
        text = _text(data.get(key))
        if text is not None:
            yield text, key
    for value in data.get("additional_special_tokens") or []:
        text = _text(value)
        if text is not None:
            yield text, "additional_special_tokens"
    decoder = data.get("added_tokens_decoder")
    if isinstance(decoder, Mapping):
        for value in decoder.values():
            if isinstance(value, Mapping) and value.get("special"):
                text = _text(value)
                if text is not None:
                    yield text, "added_tokens_decoder"
    added = data.get("added_tokens")
    if name == "tokenizer.json" and isinstance(added, list):
        for value in added:
            if isinstance(value, Mapping) and value.get("special"):
                text = _text(value)
                if text is not None:
                    yield text, "added_tokens"


def _files(root: Path) -> Iterable[Path]:
    if root.is_file():
        if root.name in TOKENIZER_FILES:
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= _MAX_DEPTH:
            dirnames.clear()
        for name in TOKENIZER_FILES:
            if name in filenames:
                yield Path(dirpath) / name


def special_tokens(roots: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """Special-token text -> where it is declared (``file: key``), from the tokenizer files under ``roots``.

    Texts that could be ordinary output are left out: shorter than three characters, or only
    letters and digits.
    """
    found: dict[str, str] = {}
    for root in roots:
        path = Path(root)
        if not path.exists():
            continue
        for file in _files(path):
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            if not isinstance(data, Mapping):
                continue
            for text, key in _declared(file.name, data):
                stripped = text.strip()
                if len(stripped) >= 3 and not stripped.isalnum():
                    found.setdefault(stripped, f"{file.name}: {key}")
    return found
