"""The raw baselines: each backend's runtime driven directly, the way a hand-written wrapper would.

Every baseline applies the model's chat template, tokenizes, decodes greedily and detokenizes, so
it does the same work as the packaged model minus flavorkit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol


class RawBaseline(Protocol):
    """A backend runtime driven without flavorkit."""

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        """Generate greedily; return the number of completion tokens."""
        ...

    def first_token(self, messages: list[dict[str, str]]) -> float:
        """Seconds from the request to the first decoded token."""
        ...


class RawOnnxGenai:
    """onnxruntime-genai's Generator loop (append_tokens / generate_next_token)."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime_genai as og

        from flavorkit_onnxgenai.runtime import set_cpu_threads

        self.og = og
        self.folder = folder
        config = og.Config(str(folder))
        set_cpu_threads(config)  # the thread count the onnx backends set, so the ratio compares like with like
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)

    def _start(self, messages: list[dict[str, str]], max_tokens: int) -> Any:
        prompt = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        return generator

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        generator = self._start(messages, max_tokens)
        stream = self.tokenizer.create_stream()
        text = []
        while not generator.is_done():
            generator.generate_next_token()
            text.append(stream.decode(generator.get_next_tokens()[0]))
        return len(text)

    def generate_batch(self, conversations: list[list[dict[str, str]]], max_tokens: int) -> int:
        """Generate greedily for every conversation in one right-padded batch (as the onnx backends do).

        Returns the completion tokens over all rows: each row counts until its end-of-sequence
        token or ``max_tokens``, and its text is detokenized as it goes.
        """
        import numpy as np

        genai = json.loads((self.folder / "genai_config.json").read_text())["model"]
        eos = genai.get("eos_token_id", [])
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        pad = genai.get("pad_token_id", min(eos_ids) if eos_ids else 0)
        pad = int(pad[0] if isinstance(pad, list) else pad)
        rows = [
            [
                int(t)
                for t in self.tokenizer.encode(
                    self.tokenizer.apply_chat_template(json.dumps(m), add_generation_prompt=True)
                )
            ]
            for m in conversations
        ]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad, dtype=np.int32)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = row
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=width + max_tokens, do_sample=False, batch_size=len(rows))
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(ids)
        streams = [self.tokenizer.create_stream() for _ in rows]
        counts = [0] * len(rows)
        done = [False] * len(rows)
        while not generator.is_done() and not all(done):
            generator.generate_next_token()
            for k, token in enumerate(generator.get_next_tokens()):
                if done[k]:
                    continue
                if int(token) in eos_ids:
                    done[k] = True
                    continue
                streams[k].decode(int(token))
                counts[k] += 1
                done[k] = counts[k] >= max_tokens
        return sum(counts)

    def first_token(self, messages: list[dict[str, str]]) -> float:
        start = time.perf_counter()
        generator = self._start(messages, 8)
        stream = self.tokenizer.create_stream()
        while True:
            generator.generate_next_token()
            if stream.decode(generator.get_next_tokens()[0]):
                return time.perf_counter() - start


class RawHF:
    """A transformers-style causal LM (transformers, or optimum's ORTModelForCausalLM) via generate()."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer

    def _ids(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
        )

    def _generate(self, ids: Any, max_new_tokens: int) -> Any:
        import torch

        with torch.inference_mode():
            return self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> int:
        ids = self._ids(messages)
        out = self._generate(ids, max_tokens)
        new = out[0, ids.shape[1] :]
        self.tokenizer.decode(new, skip_special_tokens=True)
        return int(new.shape[0])

    def first_token(self, messages: list[dict[str, str]]) -> float:
        start = time.perf_counter()
        ids = self._ids(messages)
        out = self._generate(ids, 1)
        self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return time.perf_counter() - start
