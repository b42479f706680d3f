"""The SDK's row step (:mod:`flavorkit.runtime.rows`) with real tokenizers, and each backend path through it.

The policy under test: while a row goes on, no delta carries part of a multi-byte character (a
character spread over several tokens is released once complete); when the row ends (end of
sequence or ``max_tokens``), the bytes still held back are released as the tokenizer decodes the
whole completion, U+FFFD for a cut character. So a row's text always equals its generated tokens
decoded at once, and the text streamed before the end is always how that decoding starts.

The text streams are driven by the tiny fixture model's byte-level BPE (transformers'
``tokenizer.decode`` and onnxruntime-genai's ``TokenizerStream``) and by llama.cpp's vocabulary of
the SmolLM2 GGUF (token bytes); the backends by the tiny models, and by SmolLM2 in the slow tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flavorkit.sdk import ByteDecoder, Delta, GenerationRequest, NativeStream, TextStream, TokenRow, WindowDecoder
from stacks import optimum_param

TEXT = "Unicode: café, naïve, Zürich, 日本, and 🙂 survive; 42!"
CUT = "\ufffd"


@dataclass
class Tokenizer:
    """A real tokenizer as the row step sees it: encode, whole-sequence decode and a fresh text stream."""

    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    stream: Callable[[], TextStream]
    eos: int
    special: int  # a special token other than end of sequence (decodes to nothing)


def _hf(folder: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))

    def decode(ids: Sequence[int]) -> str:
        return str(tok.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False))

    return Tokenizer(
        encode=lambda text: list(tok.encode(text, add_special_tokens=False)),
        decode=decode,
        stream=lambda: WindowDecoder(decode),
        eos=int(tok.convert_tokens_to_ids("<|im_end|>")),
        special=int(tok.convert_tokens_to_ids("<|im_start|>")),
    )


def _og(folder: Path) -> Tokenizer:
    import numpy as np
    import onnxruntime_genai as og

    tok = og.Tokenizer(og.Model(str(folder)))

    def decode(ids: Sequence[int]) -> str:
        return str(tok.decode(np.asarray(ids, dtype=np.int32)))

    return Tokenizer(
        encode=lambda text: [int(t) for t in tok.encode(text)],
        decode=decode,
        stream=lambda: NativeStream(tok.create_stream().decode, decode),
        eos=int(tok.eos_token_ids[0]),
        special=int(tok.encode("<|im_start|>")[0]),
    )


def _llama() -> Tokenizer:
    llama_cpp = pytest.importorskip("llama_cpp")
    from flavorkit.testing.models import smollm2_gguf as gguf_path

    llm = llama_cpp.Llama(model_path=str(gguf_path()), vocab_only=True, verbose=False)
    return Tokenizer(
        encode=lambda text: [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)],
        decode=lambda ids: llm.detokenize(list(ids)).decode("utf-8", "replace"),
        stream=lambda: ByteDecoder(lambda token: llm.detokenize([token])),
        eos=int(llm.token_eos()),
        special=int(llm.tokenize(b"<|im_start|>", add_bos=False, special=True)[0]),
    )


@pytest.fixture(scope="module", params=["transformers", "onnxruntime-genai", "llama.cpp"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    """Each kind of text stream over a real tokenizer."""
    if request.param == "transformers":
        return _hf(request.getfixturevalue("tiny_hf"))
    if request.param == "onnxruntime-genai":
        return _og(request.getfixturevalue("tiny_ort"))
    return _llama()


def run(tok: Tokenizer, ids: Sequence[int], max_tokens: int) -> list[Delta]:
    """Feed ``ids`` to a fresh row until it finishes; the deltas it returned."""
    row = TokenRow(7, max_tokens, {tok.eos}, tok.stream())
    deltas = []
    for token in ids:
        deltas.append(row.accept(token))
        if row.done:
            break
    return deltas


def split_ids(tok: Tokenizer, text: str) -> list[int]:
    """``text``'s ids, asserting the premise that some character is spread over several tokens."""
    ids = tok.encode(text)
    assert any(tok.decode(ids[:k]).endswith(CUT) for k in range(1, len(ids))), "premise: a character is split"
    return ids


# -- the row step, unit by unit ----------------------------------------------------------------------


def test_characters_split_over_tokens_are_released_whole(tokenizer: Tokenizer) -> None:
    ids = split_ids(tokenizer, TEXT)
    deltas = run(tokenizer, [*ids, tokenizer.eos], max_tokens=len(ids) + 1)
    assert [d.text for d in deltas if CUT in d.text] == []
    assert "".join(d.text for d in deltas) == TEXT
    assert sum(1 for d in deltas if d.text) > len(ids) // 2, "text is released as it goes, not at the end"
    assert [(d.index, d.tokens, d.finish_reason) for d in deltas] == [(7, 1, None)] * len(ids) + [(7, 1, "stop")]
    assert deltas[-1].text == ""  # nothing was held back at the end of sequence, which is not decoded


def test_a_row_cut_by_max_tokens_ends_with_its_tokens_decoded_at_once(tokenizer: Tokenizer) -> None:
    ids = split_ids(tokenizer, TEXT)
    cut_tails = 0
    for k in range(1, len(ids) + 1):
        whole = tokenizer.decode(ids[:k])
        deltas = run(tokenizer, ids, max_tokens=k)
        assert [d.finish_reason for d in deltas] == [None] * (k - 1) + ["length"], k
        assert sum(d.tokens for d in deltas) == k
        assert "".join(d.text for d in deltas) == whole, k
        assert all(CUT not in d.text for d in deltas[:-1]), f"half a character streamed before token {k}"
        if whole.endswith(CUT):
            cut_tails += 1
            assert deltas[-1].text.endswith(CUT)
    assert cut_tails > 0


def test_end_of_sequence_after_half_a_character_releases_it_as_the_replacement_character(
    tokenizer: Tokenizer,
) -> None:
    emoji = tokenizer.encode("🙂")
    assert len(emoji) > 1, "premise: the emoji takes several tokens"
    head = tokenizer.encode("ok")
    ids = [*head, *emoji[:-1]]
    deltas = run(tokenizer, [*ids, tokenizer.eos], max_tokens=100)
    assert "".join(d.text for d in deltas[:-1]) == "ok"
    assert deltas[-1] == Delta(7, tokenizer.decode(ids)[len("ok") :], 1, "stop")
    assert deltas[-1].text.startswith(CUT)


def test_special_tokens_add_no_text(tokenizer: Tokenizer) -> None:
    ids = [tokenizer.special, *tokenizer.encode("hi"), tokenizer.special]
    deltas = run(tokenizer, ids, max_tokens=len(ids))
    assert deltas[0].text == "" and deltas[-1].text == ""
    assert "".join(d.text for d in deltas) == "hi"


def test_a_finished_row_refuses_more_tokens(tiny_hf: Path) -> None:
    tok = _hf(tiny_hf)
    row = TokenRow(0, 1, {tok.eos}, tok.stream())
    assert row.accept(tok.encode("a")[0]) == Delta(0, "a", 1, "length")
    assert row.done and row.finish_reason == "length" and row.produced == 1
    with pytest.raises(RuntimeError, match=r"row 0 already finished \(length\)"):
        row.accept(tok.eos)


def test_the_text_streams_are_text_streams(tiny_hf: Path) -> None:
    decode = _hf(tiny_hf).decode
    for stream in (WindowDecoder(decode), NativeStream(lambda t: "", decode), ByteDecoder(lambda t: b"")):
        assert isinstance(stream, TextStream)
        assert stream.flush() == ""


# -- each backend path, end to end (tiny models) ---------------------------------------------------


def cut_points(decode: Callable[[Sequence[int]], str], ids: Sequence[int]) -> list[int]:
    """Lengths ``k`` at which ``ids[:k]`` ends in the middle of a character (decodes to a trailing U+FFFD)."""
    return [k for k in range(1, len(ids) + 1) if decode(ids[:k]).endswith(CUT)]


def assert_streams_its_decoding(deltas: Sequence[Delta], whole: str) -> None:
    """Every running join of ``deltas`` is how ``whole`` starts, and all of them make ``whole``."""
    text = ""
    for delta in deltas:
        text += delta.text
        assert whole.startswith(text), f"{text!r} streamed, but the tokens decode to {whole!r}"
    assert text == whole


def texts(deltas: Iterator[Delta] | list[Delta]) -> dict[int, list[Delta]]:
    """Deltas grouped by request index."""
    out: dict[int, list[Delta]] = {}
    for delta in deltas:
        out.setdefault(delta.index, []).append(delta)
    return out


def test_transformers_engine_rows_cut_mid_character(tiny_hf: Path) -> None:
    from flavorkit_hf.engine import GPU_COST
    from flavorkit_hf.runtime import load_transformers

    engine = load_transformers(str(tiny_hf), {})
    engine.cost = GPU_COST  # one padded batch, whatever the lengths: the batch path itself
    prompt = engine.encode([{"role": "user", "content": "Hi"}])
    ids = engine.token_ids(GenerationRequest(prompt_ids=prompt, max_tokens=60))
    cuts = cut_points(engine.decode, ids)
    assert len(cuts) >= 2, f"premise: {engine.decode(ids)!r} has characters cut mid-way"
    # Alone: the whole answer streams as it decodes; each cut answer ends in U+FFFD, as it decodes.
    for k in [len(ids), *cuts[:2]]:
        deltas = list(engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=k)]))
        assert_streams_its_decoding(deltas, engine.decode(ids[:k]))
    # In one batch (rows finish at different steps), and in a continuous-batching session.
    limits = [cuts[0], cuts[1], len(ids)]
    batch = texts(engine.generate([GenerationRequest(prompt_ids=prompt, max_tokens=k) for k in limits]))
    session = engine.session()
    session.add([GenerationRequest(prompt_ids=prompt, max_tokens=k) for k in limits])
    stepped: list[Delta] = []
    while step := session.step():
        stepped += step
    for i, k in enumerate(limits):
        assert_streams_its_decoding(batch[i], engine.decode(ids[:k]))
        assert_streams_its_decoding(texts(stepped)[i], engine.decode(ids[:k]))
        assert batch[i][-1].finish_reason == "length"
    assert engine.stats["batches"] >= 1


def og_greedy_ids(handle: Any, prompt: Sequence[int], max_tokens: int) -> list[int]:
    """The ids onnxruntime-genai's own Generator loop picks greedily (end of sequence included)."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(handle.model)
    params.set_search_options(max_length=len(prompt) + max_tokens, do_sample=False)
    generator = og.Generator(handle.model, params)
    generator.append_tokens(np.asarray(prompt, dtype=np.int32))
    ids: list[int] = []
    while len(ids) < max_tokens and not (ids and ids[-1] in handle.eos_ids):
        generator.generate_next_token()
        ids.append(int(generator.get_next_tokens()[0]))
    return ids


def test_onnxgenai_rows_cut_mid_character(tiny_ort: Path, tiny_hf: Path) -> None:
    from flavorkit_onnxgenai.runtime import GPU_COST as OG_GPU_COST
    from flavorkit_onnxgenai.runtime import OgHandle

    handle = OgHandle.load(str(tiny_ort))
    # The random tiny model also emits stray bytes, which onnxruntime-genai's own decoding drops or
    # stops at; the reference is transformers' decoding of the same tokenizer, up to the first cut.
    decode = _hf(tiny_hf).decode
    prompt = handle.encode([{"role": "user", "content": "Hi"}])
    ids = og_greedy_ids(handle, prompt, 60)
    cuts = [k for k in cut_points(decode, ids) if k > 1 and decode(ids[:k]).count(CUT) == 1]
    assert cuts, f"premise: {decode(ids)!r} has a character cut mid-way"
    k = cuts[0]
    alone = list(handle.generate([GenerationRequest(prompt_ids=prompt, max_tokens=k)]))
    assert_streams_its_decoding(alone, decode(ids[:k]))
    assert alone[-1].text.endswith(CUT) and alone[-1].finish_reason == "length"
    # One right-padded og.Generator batch, its rows ending at different steps.
    handle.cost = OG_GPU_COST
    limits = (k, k - 1, k + 1)
    requests = [GenerationRequest(prompt_ids=prompt, max_tokens=n) for n in limits]
    assert handle.groups(requests) == [[0, 1, 2]]
    batch = texts(handle.generate(requests))
    assert [sum(d.tokens for d in batch[i]) for i in range(3)] == list(limits)
    assert_streams_its_decoding(batch[0], decode(ids[:k]))
    assert_streams_its_decoding(batch[1], decode(ids[: k - 1]))
    assert CUT not in decode(ids[: k - 1])


# -- each first-party backend on SmolLM2 -----------------------------------------------------------

UNICODE = [
    {"role": "user", "content": "Say 'café', 'Zürich' and 'naïve', then write Japan in Japanese (日本) and add 🙂."}
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["transformers", optimum_param(), "onnx-cpu"])
def test_smollm2_answers_cut_mid_character_end_as_they_decode(
    backend: str, smollm2_hf: Path, request: pytest.FixtureRequest
) -> None:
    handle: Any
    if backend == "onnx-cpu":
        from flavorkit_onnxgenai.runtime import OgHandle

        handle = OgHandle.load(str(request.getfixturevalue("smollm2_ort")))
        prompt = handle.encode(UNICODE)
        ids = og_greedy_ids(handle, prompt, 48)
        decode = _hf(smollm2_hf).decode
    else:
        from flavorkit_hf.runtime import load_optimum, load_transformers

        if backend == "transformers":
            handle = load_transformers(str(smollm2_hf), {})
        else:
            from flavorkit_hf.export import export_checkpoint

            handle = load_optimum(str(export_checkpoint(smollm2_hf)), {})
        prompt = handle.encode(UNICODE)
        ids = handle.token_ids(GenerationRequest(prompt_ids=prompt, max_tokens=48))
        decode = handle.decode
    whole = decode(ids)
    assert CUT not in whole.rstrip(CUT), f"premise: the answer {whole!r} is valid UTF-8 (but for a cut end)"
    cuts = cut_points(decode, ids)
    assert cuts, f"premise: the answer {whole!r} has a character spread over several tokens"
    for k in [len(ids), cuts[0]]:
        deltas = list(handle.generate([GenerationRequest(prompt_ids=prompt, max_tokens=k)]))
        assert_streams_its_decoding(deltas, decode(ids[:k]))
        assert all(CUT not in d.text for d in deltas[:-1]), "half a character was streamed before the end"
        assert sum(d.tokens for d in deltas) == k
    assert deltas[-1].text.endswith(CUT) and deltas[-1].finish_reason == "length"
