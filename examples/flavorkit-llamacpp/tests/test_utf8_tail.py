"""The llama-cpp backend's text through the SDK's row step, on SmolLM2 (Q4_1 GGUF).

A character spread over several tokens is streamed once complete; a request cut by ``max_tokens``
in the middle of one ends with U+FFFD, exactly as its tokens decode at once, as in every
first-party backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flavorkit_llamacpp.runtime import LlamaHandle

from flavorkit.sdk import GenerationRequest

UNICODE = [
    {"role": "user", "content": "Say 'café', 'Zürich' and 'naïve', then write Japan in Japanese (日本) and add 🙂."}
]
CUT = "\ufffd"


@pytest.fixture(scope="module")
def handle() -> Iterator[LlamaHandle]:
    """SmolLM2 loaded by the example's runtime."""
    from flavorkit.testing.models import smollm2_gguf as gguf_path

    loaded = LlamaHandle.load(str(gguf_path()))
    yield loaded
    loaded.close()


def greedy_ids(handle: LlamaHandle, prompt: list[int], max_tokens: int) -> list[int]:
    """The token ids llama.cpp's own generate loop picks greedily, until end of generation."""
    llm = handle.llm
    llm.reset()
    ids: list[int] = []
    stream = llm.generate(prompt, temp=0.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True)
    try:
        for token in stream:
            if token in handle.eog_ids or len(ids) == max_tokens:
                break
            ids.append(int(token))
    finally:
        stream.close()
    return ids


def test_a_cut_character_ends_the_request_as_its_tokens_decode(handle: LlamaHandle) -> None:
    llm = handle.llm

    def decode(ids: list[int]) -> str:
        return str(llm.detokenize(ids).decode("utf-8", "replace"))

    prompt = handle.encode(UNICODE)
    ids = greedy_ids(handle, prompt, 48)
    whole = decode(ids)
    assert CUT not in whole.rstrip(CUT), f"premise: the answer {whole!r} is valid UTF-8 (but for a cut end)"
    cuts = [k for k in range(1, len(ids) + 1) if decode(ids[:k]).endswith(CUT)]
    assert cuts, f"premise: the answer {whole!r} has a character spread over several tokens"
    for k in (len(ids), cuts[0]):
        deltas = list(handle.generate([GenerationRequest(prompt_ids=prompt, max_tokens=k)]))
        streamed = ""
        for delta in deltas:
            streamed += delta.text
            assert decode(ids[:k]).startswith(streamed)
        assert streamed == decode(ids[:k])
        assert all(CUT not in d.text for d in deltas[:-1]), "half a character was streamed before the end"
        assert sum(d.tokens for d in deltas) == k
        assert deltas[-1].finish_reason == "length"
    assert deltas[-1].text.endswith(CUT)
