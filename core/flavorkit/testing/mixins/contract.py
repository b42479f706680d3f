"""The request contract: limits, stop strings, choices, usage, finish reasons, the prompt, errors.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, ClauseFailed, Generated, Harness, check, content
from flavorkit.testing.mixins.base import _USAGE_KEYS, ConformanceBase
from flavorkit.types import Capability, GenerationRequest, Message

__all__ = ["ContractClauses"]

#: The greedy answer length the special_tokens clause asks for, so that answers end by themselves.
_LONG_ANSWER = 128


#: The conversation the chat_template clause encodes: a system message and earlier turns.
_CONVERSATION: tuple[Message, ...] = (
    {"role": "system", "content": "You are a terse assistant for packaging questions."},
    {"role": "user", "content": "What is a model flavor?"},
    {"role": "assistant", "content": "A way to save and load one kind of model."},
    {"role": "user", "content": "And what is a backend?"},
)
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
#: The prompt the raw_prompt clause continues: a chat prompt written by hand, which must not be templated again.
_RAW_PROMPT = "<|user|>Name a colour.<|end|><|assistant|>"
_RAW_TOKENS = 8


class ContractClauses(ConformanceBase):
    """The request contract: limits, stop strings, choices, usage, finish reasons, the prompt, errors."""

    @clause("max_tokens")
    def test_max_tokens(self, conformance: Harness) -> None:
        """generate() never reports more than max_tokens tokens, alone or in a mixed batch."""
        probe = conformance.probe()
        runs: list[tuple[int, Generated]] = []
        for limit in (1, 2, 5):
            runs.append((limit, conformance.greedy(probe.messages, limit)))
        limits = (1, 4, 2)
        batch = conformance.run([conformance.request(probe.messages, m) for m in limits])
        runs += list(zip(limits, batch, strict=True))
        if Capability.SAMPLING in conformance.capabilities():
            sampled = conformance.request(probe.messages, 3, temperature=1.0, seed=5)
            runs.append((3, conformance.run([sampled])[0]))
        for limit, got in runs:
            check(
                got.tokens <= limit,
                f"max_tokens={limit} but generate() yielded {got.tokens} tokens: {got.describe()}",
            )

    @clause("stop_strings")
    def test_stop_strings(self, conformance: Harness) -> None:
        """A stop string cuts the answer just before its first occurrence, streamed or not."""
        probe = conformance.probe()
        request = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)
        full = conformance.predict(request)
        text = content(full)
        check(len(text) >= 3, f"the greedy answer {text!r} is too short to test stop strings with")
        # A stop string straddling two deltas, from the middle of the answer.
        boundaries = []
        seen = 0
        for part in _stream_texts(conformance, request):
            seen += len(part)
            if 1 <= seen <= len(text) - 2:
                boundaries.append(seen)
        cut = boundaries[len(boundaries) // 2] if boundaries else len(text) // 2
        stop = text[cut - 1 : cut + 1]
        expected = text[: text.find(stop)]
        for stops in ([stop], [stop, "\x00never-generated\x00"]):
            got = conformance.predict({**request, "stop": stops})
            out = content(got)
            check(stop not in out, f"stop={stops!r}: the output {out!r} contains the stop string")
            check(out == expected, f"stop={stops!r}: expected {expected!r} (the answer {text!r} cut), got {out!r}")
            check(
                got["choices"][0]["finish_reason"] == "stop",
                f"stop={stops!r}: finish_reason is {got['choices'][0]['finish_reason']!r}, expected 'stop'",
            )
        streamed = "".join(_stream_texts(conformance, {**request, "stop": [stop]}))
        check(streamed == expected, f"stop={[stop]!r}: the stream gave {streamed!r}, expected {expected!r}")
        unmatched = content(conformance.predict({**request, "stop": ["\x00never-generated\x00"]}))
        check(unmatched == text, f"a stop string that never occurs changed the answer {text!r} into {unmatched!r}")

    @clause("n_choices")
    def test_n_choices(self, conformance: Harness) -> None:
        """n=3 greedy gives three identical choices, indexed 0..2, with usage summed over them."""
        probe = conformance.probe()
        request = conformance.chat(probe.messages, max_tokens=8)
        one = conformance.predict(request)
        three = conformance.predict({**request, "n": 3})
        choices = three.get("choices", [])
        check(len(choices) == 3, f"n=3 returned {len(choices)} choice(s)")
        check(
            [c.get("index") for c in choices] == [0, 1, 2],
            f"choice indexes are {[c.get('index') for c in choices]}, expected [0, 1, 2]",
        )
        for i in range(3):
            check(
                content(three, i) == content(one) and choices[i]["finish_reason"] == one["choices"][0]["finish_reason"],
                f"greedy choice {i} of n=3 is {content(three, i)!r}, but n=1 gives {content(one)!r}",
            )
        check(
            three["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
            and three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"],
            f"n=3 usage {three['usage']} is not three times the completion of n=1 usage {one['usage']}",
        )
        if Capability.SAMPLING in conformance.capabilities():
            sampled = conformance.predict({**request, "n": 2, "temperature": 1.0})
            check(len(sampled.get("choices", [])) == 2, "n=2 with temperature=1.0 did not return two choices")

    @clause("usage")
    def test_usage(self, conformance: Harness) -> None:
        """Usage adds up, counts the prompt with encode(), and matches the tokens generate() reports."""
        probe = conformance.probe()
        limit = 2
        resp = conformance.predict(conformance.chat(probe.messages, max_tokens=limit))
        usage = resp.get("usage", {})
        check(
            all(isinstance(usage.get(k), int) and usage[k] >= 0 for k in _USAGE_KEYS),
            f"usage must hold non-negative integers {', '.join(_USAGE_KEYS)}, got {usage!r}",
        )
        check(
            usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"],
            f"usage does not add up: {usage}",
        )
        check(usage["completion_tokens"] <= limit, f"completion_tokens exceeds max_tokens={limit}: {usage}")
        n_prompt = len(conformance.encode(probe.messages))
        check(
            usage["prompt_tokens"] == n_prompt,
            f"prompt_tokens is {usage['prompt_tokens']} but encode(messages) gives {n_prompt} ids",
        )
        short = conformance.greedy(probe.messages, limit)
        check(not short.bad_tokens, f"Delta.tokens must be non-negative integers, got {short.bad_tokens!r}")
        check(
            not short.text or short.tokens >= 1,
            f"generate() yielded text {short.text!r} but reported {short.tokens} tokens for it",
        )
        cut_short = len(probe.answer.text) > len(short.text)
        check(
            not cut_short or short.tokens >= limit or short.finish != "length",
            f"max_tokens={limit} cut the answer at {short.text!r} (finish_reason 'length') but generate() "
            f"reported only {short.tokens} token(s); every generated token must be counted in Delta.tokens",
        )
        check(
            usage["completion_tokens"] == min(short.tokens, limit),
            f"completion_tokens is {usage['completion_tokens']}, but generate() reported {short.tokens} tokens",
        )
        check(
            not probe.answer.bad_tokens and (not probe.answer.text or probe.answer.tokens >= 1),
            f"generate() reported {probe.answer.tokens} tokens for {probe.answer.text!r}",
        )

    @clause("chat_template")
    def test_chat_template(self, conformance: Harness) -> None:
        """encode() depends on every message, and equals the model's own chat template where the kit can render it."""
        conversation = list(_CONVERSATION)
        reference, why_not = _reference_prompt(conformance, conversation)
        try:
            ids = conformance.encode(conversation)
        except Exception as exc:
            if reference is None and why_not.startswith("the model's chat template fails"):
                pytest.skip(f"{why_not}; encode() fails as well: {type(exc).__name__}: {exc}")
            raise ClauseFailed(
                f"encode() of a conversation with a system message and earlier turns raised {type(exc).__name__}: {exc}"
            ) from None
        for index, what in ((0, "the system message"), (1, "an earlier user turn"), (2, "an earlier assistant turn")):
            changed = [dict(m) for m in conversation]
            changed[index]["content"] = "Something else entirely, about the weather."
            check(
                conformance.encode(changed) != ids,
                f"the chat template drops {what}: encode() gives the same ids whatever "
                f"{conversation[index]['content']!r} says; render every message of the conversation",
            )
        if reference is None:
            pytest.skip(f"every message reaches the prompt, but {why_not}")
        ref_ids, ref_text, tokenizer = reference
        if ids == ref_ids:
            return
        got_text = tokenizer.decode(ids, skip_special_tokens=False)
        if got_text == ref_text:
            return  # the same text, tokenized another way (another tokenizer library, merged tokens)
        missing = [m["role"] for m in conversation if m["content"] not in got_text]
        raise ClauseFailed(
            "encode() of a conversation with a system message and earlier turns differs from the model's own chat "
            + (f"template (it lacks the {', '.join(missing)} message(s))" if missing else "template")
            + f": encode() decodes to {got_text!r}, the template renders {ref_text!r}"
        )

    @clause("raw_prompt")
    def test_raw_prompt(self, conformance: Harness) -> None:
        """encode_text() tokenizes without the template, as the model's tokenizer does; text-generation continues it."""
        import mlflow

        from flavorkit.signatures import TEXT

        if TEXT not in type(self).tasks:
            pytest.skip("the suite's tasks do not include text-generation")
        backend = conformance.backend()
        check(
            backend.implements_encode_text,
            f"backend {backend.name!r} does not implement the encode_text hook (spec version 4), which a "
            "text-generation model needs; implement it, or leave 'text-generation' out of the suite's tasks",
        )
        ids = backend.encode_text(conformance.handle(), _RAW_PROMPT)
        check(bool(ids), f"encode_text({_RAW_PROMPT!r}) returned no token ids")
        templated = conformance.encode([{"role": "user", "content": _RAW_PROMPT}])
        check(
            ids != templated,
            "encode_text() returns what encode() returns for the prompt as a user message: it applies the chat "
            "template, but a text-generation prompt is plain text",
        )
        other = backend.encode_text(conformance.handle(), _RAW_PROMPT + " Blue, or perhaps green.")
        check(other != ids, "encode_text() gives the same ids for two different texts")
        raw = conformance.run([GenerationRequest(prompt_ids=ids, max_tokens=_RAW_TOKENS)])[0]
        model = mlflow.pyfunc.load_model(str(conformance.packaged(TEXT)))
        answer = model.predict({"prompt": _RAW_PROMPT, "max_tokens": _RAW_TOKENS, "temperature": 0})
        exact = raw.tokens <= _RAW_TOKENS and raw.finishes == 1  # else another clause names what generate() broke
        check(
            answer == [raw.text] if exact else (len(answer) == 1 and raw.text.startswith(answer[0])),
            f"the text-generation model answers {answer!r} but generate() on encode_text(prompt) gives "
            f"{raw.text!r}: the packaged model must continue the prompt exactly as encode_text() tokenizes it",
        )
        tokenizer, _why_not = _reference_tokenizer(conformance)
        if tokenizer is None:  # the promise above holds; the tokenizer's own encoding is compared where it loads
            return
        expected = list(tokenizer(_RAW_PROMPT)["input_ids"])
        bos = getattr(tokenizer, "bos_token_id", None)

        def body(tokens: list[int]) -> list[int]:
            # Whether a BOS comes first is the runtime's reading of the model (transformers' GGUF loader
            # adds one where llama.cpp's metadata says not to): compare the rest.
            return tokens[1:] if tokens and bos is not None and tokens[0] == bos else tokens

        if body(ids) != body(expected):
            got, want = tokenizer.decode(body(ids)), tokenizer.decode(body(expected))
            check(
                got == want,
                f"encode_text({_RAW_PROMPT!r}) decodes to {got!r}, but the model's tokenizer encodes it as {want!r} "
                "(a beginning-of-sequence token where the tokenizer adds one, special tokens parsed, nothing else)",
            )

    @clause("finish_reason")
    def test_finish_reason(self, conformance: Harness) -> None:
        """Every request ends with one finish_reason, last; a request cut by max_tokens says 'length'."""
        probe = conformance.probe()
        batch = conformance.run(
            [
                conformance.request(probe.messages, 2),
                conformance.request(probe.messages, PROBE_TOKENS),
                conformance.request(probe.other, 3),
            ]
        )
        for got in [*batch, probe.answer]:
            check(
                got.finishes == 1,
                f"request {got.index} got {got.finishes} deltas with a finish_reason; exactly one must end it",
            )
            check(got.after_finish == 0, f"request {got.index} got {got.after_finish} delta(s) after its finish_reason")
            check(
                got.finish in ("stop", "length"),
                f"request {got.index} ended with finish_reason {got.finish!r}; allowed: 'stop', 'length'",
            )
        short = conformance.greedy(probe.messages, 2)
        if len(probe.answer.text) > len(short.text) and probe.answer.text.startswith(short.text):
            check(
                short.finish == "length",
                f"max_tokens=2 cut the answer {probe.answer.text!r} at {short.text!r}, "
                f"but finish_reason is {short.finish!r}, not 'length'",
            )
        long = content(conformance.predict(conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)))
        cut = conformance.predict(conformance.chat(probe.messages, max_tokens=2))
        if len(long) > len(content(cut)):
            check(
                cut["choices"][0]["finish_reason"] == "length",
                f"predict with max_tokens=2 returned {content(cut)!r} with finish_reason "
                f"{cut['choices'][0]['finish_reason']!r}; the answer continues, so it must be 'length'",
            )

    @clause("special_tokens")
    def test_special_tokens(self, conformance: Harness) -> None:
        """Answers long enough to end by themselves contain no special-token text, raw, in predict and streamed."""
        probe = conformance.probe()
        specials = conformance.special_tokens()
        ctx = conformance.info().context_length
        seen: list[tuple[str, str]] = []
        for messages in (probe.messages, probe.other):
            limit = max(1, min(_LONG_ANSWER, ctx - len(conformance.encode(messages)) - 1))
            seen.append(("generate()", conformance.greedy(messages, limit).text))
            request = conformance.chat(messages, max_tokens=limit)
            seen.append(("predict", content(conformance.predict(request))))
            seen.append(("predict_stream", "".join(_stream_texts(conformance, request))))
        for where, text in seen:
            hits = [t for t in specials if t in text]
            check(
                not hits,
                f"special token text in the answer: {where} returned {text[-120:]!r}, which contains "
                + ", ".join(f"{t!r} ({specials[t]})" for t in hits)
                + "; special tokens are control tokens, not text: decode with skip_special_tokens, and end the "
                "sequence at the end-of-sequence token without decoding it",
            )

    @clause("invalid_requests")
    def test_invalid_requests(self, conformance: Harness) -> None:
        """Bad requests raise MlflowException(INVALID_PARAMETER_VALUE) naming the bad field."""
        from mlflow.exceptions import MlflowException

        probe = conformance.probe()
        msgs = [dict(m) for m in probe.messages]
        ctx = conformance.info().context_length
        cases: list[tuple[str, dict[str, Any]]] = [
            ("messages", {"messages": []}),
            ("messages[0].role", {"messages": [{"role": "robot", "content": "hi"}]}),
            ("temperature", {"messages": msgs, "temperature": -1.0}),
            ("max_tokens", {"messages": msgs, "max_tokens": 0}),
            ("top_p", {"messages": msgs, "top_p": 0.0}),
            ("n", {"messages": msgs, "n": 0}),
            ("stop", {"messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
            ("max_tokens", {"messages": msgs, "max_tokens": ctx + 1}),
        ]
        if ctx <= 1_000_000:  # a prompt longer than the context, when one fits in memory
            cases.append(("messages", {"messages": [{"role": "user", "content": "word " * (ctx + 16)}]}))
        if Capability.SAMPLING not in conformance.capabilities():
            cases.append(("temperature", {"messages": msgs, "temperature": 0.7}))
        problems = []
        for field_name, request in cases:
            shown = {k: (v if len(repr(v)) < 60 else f"<{len(repr(v))} chars>") for k, v in request.items()}
            try:
                conformance.pyfunc().predict(request)
            except MlflowException as exc:
                if exc.error_code != "INVALID_PARAMETER_VALUE":
                    problems.append(f"{shown}: error code {exc.error_code}, expected INVALID_PARAMETER_VALUE")
                elif f"'{field_name}'" not in str(exc):
                    problems.append(f"{shown}: the error does not name field {field_name!r}: {exc}")
            except Exception as exc:
                problems.append(f"{shown}: raised {type(exc).__name__}: {exc} instead of MlflowException")
            else:
                problems.append(f"{shown}: accepted, expected an error naming {field_name!r}")
        check(not problems, "; ".join(problems))


def _reference_prompt(conformance: Harness, conversation: Sequence[Message]) -> tuple[Any, str]:
    """``((ids, text, tokenizer), "")`` rendered by the model's own chat template, or ``(None, why not)``."""
    from flavorkit.model.loading import MANIFEST_ARTIFACT

    roots = [Path(p) for k, p in conformance.packaged_artifacts().items() if k != MANIFEST_ARTIFACT]
    if isinstance(conformance.source, (str, os.PathLike)):
        roots.append(Path(conformance.source))
    folder = None
    for root in roots:
        for config in sorted(root.rglob("tokenizer_config.json")) if root.is_dir() else []:
            try:
                declared = "chat_template" in json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                declared = False
            if declared or any((config.parent / name).is_file() for name in _TEMPLATE_FILES):
                folder = config.parent
                break
        if folder is not None:
            break
    gguf = None
    if folder is None:  # a GGUF file carries its tokenizer and chat template in its metadata
        ggufs = [r for r in roots if r.is_file() and r.suffix == ".gguf"]
        ggufs += [f for r in roots if r.is_dir() for f in sorted(r.rglob("*.gguf"))]
        gguf = ggufs[0] if ggufs else None
    if folder is None and gguf is None:
        return None, (
            "the model declares no chat template the kit can render (no tokenizer_config.json with one, no GGUF file)"
        )
    where = folder if gguf is None else gguf
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, f"rendering the chat template of {where} needs transformers, which is not installed"
    try:
        if gguf is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        if not tokenizer.chat_template:
            return None, f"the tokenizer in {where} has no chat template"
    except Exception as exc:
        return None, f"the tokenizer in {where} does not load with transformers: {type(exc).__name__}: {exc}"
    try:
        text = tokenizer.apply_chat_template(
            [dict(m) for m in conversation], add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:
        return None, f"the model's chat template fails on a conversation with a system message: {exc}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return (list(ids), str(text), tokenizer), ""


def _reference_tokenizer(conformance: Harness) -> tuple[Any, str]:
    """``(tokenizer, "")``: the model's tokenizer loaded with transformers from its files, or ``(None, why not)``."""
    from flavorkit.model.loading import MANIFEST_ARTIFACT

    roots = [Path(p) for k, p in conformance.packaged_artifacts().items() if k != MANIFEST_ARTIFACT]
    folders = [c.parent for r in roots if r.is_dir() for c in sorted(r.rglob("tokenizer_config.json"))]
    ggufs = [r for r in roots if r.is_file() and r.suffix == ".gguf"]
    ggufs += [f for r in roots if r.is_dir() for f in sorted(r.rglob("*.gguf"))]
    if not folders and not ggufs:
        return None, "the model has no tokenizer files the kit can load (no tokenizer_config.json, no GGUF file)"
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None, "checking the tokenization needs transformers, which is not installed"
    try:
        if folders:
            return AutoTokenizer.from_pretrained(str(folders[0]), trust_remote_code=False), ""
        return AutoTokenizer.from_pretrained(str(ggufs[0].parent), gguf_file=ggufs[0].name), ""
    except Exception as exc:
        return None, f"the model's tokenizer does not load with transformers: {type(exc).__name__}: {exc}"


def _stream_texts(conformance: Harness, request: Mapping[str, Any]) -> Iterator[str]:
    for chunk in conformance.pyfunc().predict_stream(dict(request)):
        text = chunk["choices"][0]["delta"].get("content")
        if text:
            yield text
