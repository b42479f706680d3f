"""The llama-cpp-python runtime behind the ``llama-cpp`` backend (imported only when a model loads).

One ``llama_cpp.Llama`` holds one sequence, so the requests of a batch are decoded one after
another. Each request starts from an empty KV cache, so an answer never depends on the request
before it. End of generation, ``max_tokens`` and text come from the SDK's row step
(:class:`flavorkit.sdk.TokenRow` over a :class:`flavorkit.sdk.ByteDecoder`): each token's bytes go
through an incremental UTF-8 decoder, so a character split across tokens is emitted once it is
complete, and bytes of a character still incomplete when a request ends are released as U+FFFD, as
decoding the whole completion gives.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from flavorkit.sdk import BackendError, BackendUnavailable, ByteDecoder, Delta, GenerationRequest, Message, TokenRow

__all__ = ["LlamaHandle"]


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # the registry normally reports this earlier, with the pip hint
        raise BackendUnavailable("llama-cpp", f"llama_cpp cannot be imported: {exc}") from exc
    return llama_cpp


def chat_template_of(path: str) -> str | None:
    """The chat template in a GGUF file's metadata (``tokenizer.chat_template``), or None; reads no weights."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(os.fsencode(path), params)
    if not model:
        raise BackendError(f"llama.cpp cannot read the GGUF file {path}")
    try:
        key = b"tokenizer.chat_template"
        size = llama_cpp.llama_model_meta_val_str(model, key, None, 0)
        if size < 0:
            return None
        buffer = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(model, key, buffer, len(buffer))
        return buffer.value.decode("utf-8", "replace") or None
    finally:
        llama_cpp.llama_model_free(model)


@dataclass
class LlamaHandle:
    """A loaded GGUF model, its chat template renderer and the facts the core asks for."""

    llm: Any
    name: str
    context_length: int
    template: Any
    #: The vocabulary's end-of-generation tokens (end of sequence, end of turn, ...).
    eog_ids: frozenset[int]

    @classmethod
    def load(cls, path: str, *, n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512) -> LlamaHandle:
        """Open ``path`` (a GGUF file) with a context of ``n_ctx`` tokens."""
        llama_cpp = _llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, verbose=False, seed=0)
        meta: dict[str, str] = dict(llm.metadata)
        template = None
        if meta.get("tokenizer.chat_template"):
            template = Jinja2ChatFormatter(
                template=meta["tokenizer.chat_template"],
                eos_token=llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace"),
                bos_token=llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace"),
                add_generation_prompt=True,
            )
        name = meta.get("general.name") or os.path.splitext(os.path.basename(path))[0]
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        eog_ids = frozenset(t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
        return cls(llm=llm, name=name, context_length=int(llm.n_ctx()), template=template, eog_ids=eog_ids)

    def close(self) -> None:
        """Free the llama.cpp context and weights now instead of at garbage collection."""
        if self.llm is not None:
            self.llm.close()
            self.llm = None

    def guidance_tokenizer(self) -> Any:
        """The vocabulary for guided decoding, read from llama.cpp's own (llguidance's llama.cpp bridge)."""
        _llama_cpp()
        import llama_cpp
        from llguidance.llamacpp import lltokenizer_from_vocab

        return lltokenizer_from_vocab(llama_cpp.llama_model_get_vocab(self.llm.model), n_vocab=int(self.llm.n_vocab()))

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Render the chat template and tokenize, special tokens included; no template is a BackendError."""
        if self.template is None:
            raise BackendError(
                f"model {self.name!r} has no chat template, so chat messages cannot be turned into a prompt; "
                "package a GGUF file whose metadata has tokenizer.chat_template"
            )
        prompt = self.template(messages=[dict(m) for m in messages]).prompt
        return self.encode_text(prompt)

    def encode_text(self, text: str) -> list[int]:
        """Tokenize plain text (a text-generation prompt, or a rendered template): the model's BOS, specials parsed."""
        add_bos = json.loads(str(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false")).lower())
        return [int(t) for t in self.llm.tokenize(text.encode("utf-8"), add_bos=bool(add_bos), special=True)]

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Decode the requests one after another, yielding one delta per token."""
        for index, request in enumerate(requests):
            if not request.cancelled:
                yield from self._one(index, request)

    def _one(self, index: int, request: GenerationRequest) -> Iterator[Delta]:
        llm = self.llm
        limit = min(request.max_tokens, self.context_length - len(request.prompt_ids))
        if request.greedy:
            settings: dict[str, Any] = {"temp": 0.0}
        else:
            seed = request.seed if request.seed is not None else random.randrange(2**31)
            llm.set_seed(int(seed) & 0xFFFFFFFF)
            settings = {"temp": float(request.temperature), "top_p": float(request.top_p), "top_k": request.top_k or 0}
        processor = request.logits_processor
        if processor is not None:
            # llama.cpp hands each step's logits (one row) to the processor before it samples.
            def process(_ids: Any, scores: Any) -> Any:
                processor.process(scores)
                return scores

            settings["logits_processor"] = _llama_cpp().LogitsProcessorList([process])
        llm.reset()  # decode from an empty cache: no state carries over between requests
        tokens = llm.generate(
            list(request.prompt_ids), min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True, **settings
        )
        history = list(request.prompt_ids)

        def piece(token: int) -> bytes:
            data: bytes = llm.detokenize([token], prev_tokens=history)
            history.append(token)
            return data

        row = TokenRow(index, limit, self.eog_ids, ByteDecoder(piece))
        try:
            for token in tokens:
                if request.cancelled:
                    return
                if processor is not None:
                    processor.accept(int(token))
                yield row.accept(token)
                if row.done:
                    return
        finally:
            tokens.close()
