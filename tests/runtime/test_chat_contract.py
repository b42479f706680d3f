"""The core's chat contract (runtime.LoadedModel) on a scripted pure-Python backend.

The backend is real: a plugin object registered in a pluggy manager by :class:`flavorkit.backend.registry.Backend`,
called through the same checked facade as every installed backend. Its "model" answers the last
message's content, cut into tokens at each ``|``, so a test decides exactly which increments the
core receives (a stop string split over increments, a held-back tail at the end, an overshoot of
``max_tokens``) and the backend records what the core asked of it (requests, messages, cancellation).
These are the parts of the contract that a random-weight model cannot reach deterministically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from flavorkit import Artifacts, Capability, Delta, GenerationRequest, RuntimeInfo, hookimpl
from flavorkit.backend.registry import Backend
from flavorkit.errors import (
    BackendError,
    BackendNotFound,
    BackendUnavailable,
    FlavorkitError,
    IntegrityError,
    InvalidRequest,
    ModelSourceError,
    PackagingError,
    PluginSpecError,
)
from flavorkit.runtime.loaded import CORE_DEFAULTS, LoadedModel
from flavorkit.schema import MAX_SEED

SEP = "\x1f"  # separates the encoded prompt's messages; the answer is the text after the last one


@pytest.fixture(autouse=True)
def _mlflow_store() -> None:
    """Replaces conftest's per-test MLflow store: nothing here logs to a tracking store (0.3 s a test)."""


@dataclass
class Handle:
    context_length: int = 512
    seen: list[GenerationRequest] = field(default_factory=list)
    messages: list[list[dict[str, str]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    produced: dict[int, list[str]] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)
    closed: int = 0
    unloaded: bool = False


class Scripted:
    """Answers the last message's content; ``|`` separates tokens; ends with a silent EOS token."""

    def __init__(self, caps: Sequence[Capability] = (Capability.STREAMING, Capability.BATCHING)) -> None:
        self.caps = list(caps)

    @hookimpl
    def dependencies(self) -> list[str]:
        return []

    @hookimpl
    def capabilities(self) -> list[Capability]:
        return self.caps

    @hookimpl
    def artifacts(self, source: Any, options: Any, workdir: str) -> Artifacts:
        return Artifacts(files={"weights": str(source)})

    @hookimpl
    def load(self, artifacts: Any, options: Any) -> Handle:
        return Handle()

    @hookimpl
    def describe(self, handle: Handle) -> RuntimeInfo:
        return RuntimeInfo(context_length=handle.context_length, model_name="scripted")

    @hookimpl
    def encode(self, handle: Handle, messages: Sequence[dict[str, str]]) -> list[int]:
        handle.messages.append([dict(m) for m in messages])
        return [ord(c) for c in "".join(SEP + m["content"] for m in messages)]

    @hookimpl
    def encode_text(self, handle: Handle, text: str) -> list[int]:
        handle.texts.append(text)
        return [ord(c) for c in SEP + text]

    @hookimpl
    def unload(self, handle: Handle) -> None:
        handle.unloaded = True

    @hookimpl
    def generate(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        handle.seen.extend(requests)
        return self.decode(handle, requests)

    def pieces(self, request: GenerationRequest) -> list[str]:
        return "".join(chr(i) for i in request.prompt_ids).split(SEP)[-1].split("|")

    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        """Round robin over the batch; a cancelled request is dropped before its next token."""
        scripts = [self.pieces(r) for r in requests]
        live = list(range(len(requests)))
        step = 0
        try:
            while live:
                for i in list(live):
                    req = requests[i]
                    if req.cancelled:
                        handle.dropped.add(i)
                        live.remove(i)
                        continue
                    done = handle.produced.setdefault(i, [])
                    if step < len(scripts[i]):
                        done.append(scripts[i][step])
                        last = step + 1 == req.max_tokens
                        yield Delta(i, scripts[i][step], 1, "length" if last else None)
                        if last:
                            live.remove(i)
                    else:
                        live.remove(i)
                        yield Delta(i, "", 1, "stop")
                step += 1
        finally:
            handle.closed += 1


class Overshooting(Scripted):
    """Ignores max_tokens: every script runs to its end."""

    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        for i, req in enumerate(requests):
            pieces = self.pieces(req)
            for piece in pieces:
                yield Delta(i, piece, 1)
            yield Delta(i, "", 1, "stop")


class NeverFinishes(Scripted):
    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        for i, req in enumerate(requests):
            for piece in self.pieces(req):
                yield Delta(i, piece, 1)


class WrongIndex(Scripted):
    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        yield Delta(len(requests), "x", 1, "stop")


class NegativeIndex(Scripted):
    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        yield Delta(-1, "x", 1, "stop")


def engine(plugin: Scripted | None = None, **kwargs: Any) -> LoadedModel:
    be = Backend("scripted", plugin or Scripted(), object_path="test_contract_runtime:Scripted")
    return LoadedModel(be, be.load({"weights": "x"}, {}), **kwargs)


def chat(text: str, **settings: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **settings}


def text_of(response: dict[str, Any], i: int = 0) -> str:
    return str(response["choices"][i]["message"]["content"])


# -- stop strings and the held-back tail ----------------------------------------------------------


def test_text_held_back_for_a_possible_stop_is_released_when_the_model_ends() -> None:
    model = engine()
    response = model.predict(chat("ab|X", stop=["XY"]))[0]
    assert text_of(response) == "abX"
    assert response["choices"][0]["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] == 3  # "ab", "X", the silent EOS


def test_text_held_back_is_released_when_max_tokens_ends_the_answer() -> None:
    response = engine().predict(chat("ab|X|Y", stop=["XY"], max_tokens=2))[0]
    assert text_of(response) == "abX"
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 2


def test_held_back_text_is_released_in_the_stream_too() -> None:
    chunks = list(engine().predict_stream(chat("ab|X", stop=["XY"])))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "ab"},
        {"content": "X"},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]


def test_a_stop_string_split_over_increments_is_cut_and_the_request_cancelled_while_others_run() -> None:
    model = engine()
    responses = model.predict([chat("a|S|T|b|c", stop=["ST"]), chat("1|2|3|4|5|6")])
    assert [text_of(r) for r in responses] == ["a", "123456"]
    assert [r["choices"][0]["finish_reason"] for r in responses] == ["stop", "stop"]
    # The core marked request 0 cancelled as soon as "ST" completed; the backend saw it on its next
    # step while request 1 was still decoding (the stream was not closed), and produced nothing more.
    assert model.handle.dropped == {0}
    assert model.handle.produced[0] == ["a", "S", "T"]
    assert model.handle.seen[0].cancelled is True
    # The usage counts the tokens the core consumed: a, S, T.
    assert responses[0]["usage"]["completion_tokens"] == 3


def test_every_finished_request_is_marked_cancelled_for_the_backend() -> None:
    model = engine()
    model.predict([chat("a|b", max_tokens=1), chat("1|2|3")])
    assert [r.cancelled for r in model.handle.seen] == [True, True]
    assert model.handle.closed == 1


def test_a_request_without_stop_strings_streams_text_as_it_comes() -> None:
    chunks = list(engine().predict_stream(chat("a|b|c")))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["a", "b", "c", None]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


# -- max_tokens, usage, n --------------------------------------------------------------------------


def test_usage_counts_the_prompt_once_whatever_n(caplog: pytest.LogCaptureFixture) -> None:
    model = engine()
    response = model.predict(chat("a|b", n=3))[0]
    prompt = len(SEP + "a|b")
    assert response["usage"] == {"prompt_tokens": prompt, "completion_tokens": 9, "total_tokens": prompt + 9}
    assert [c["index"] for c in response["choices"]] == [0, 1, 2]
    assert [text_of(response, i) for i in range(3)] == ["ab"] * 3


def test_a_backend_overshooting_max_tokens_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = engine(Overshooting())
    with caplog.at_level(logging.WARNING, logger="flavorkit.runtime.loaded"):
        response = model.predict(chat("a|b|c|d", max_tokens=2))[0]
    assert text_of(response) == "ab"
    assert response["choices"][0]["finish_reason"] == "length"
    assert response["usage"]["completion_tokens"] == 2
    assert [r.getMessage() for r in caplog.records] == [
        "backend 'scripted' produced more than max_tokens=2 tokens; output cut"
    ]


def test_deltas_after_a_request_is_capped_are_ignored_while_others_finish() -> None:
    model = engine(Overshooting())
    responses = model.predict([chat("a|b|c|d", max_tokens=2), chat("x|y")])
    assert [text_of(r) for r in responses] == ["ab", "xy"]
    assert [r["choices"][0]["finish_reason"] for r in responses] == ["length", "stop"]
    assert [r["usage"]["completion_tokens"] for r in responses] == [2, 3]


def test_the_whole_response_shape() -> None:
    response = engine(model_name="m").predict(chat("a|b", n=2))[0]
    assert isinstance(response.pop("created"), int)
    assert response.pop("id").startswith("chatcmpl-")
    assert response == {
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "ab"}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
    }


def test_the_whole_chunk_shape_and_an_empty_answer() -> None:
    model = engine(model_name="m")
    chunks = list(model.predict_stream(chat("|a")))  # an empty first increment is not a chunk of its own
    ids = {c.pop("id") for c in chunks}
    created = {c.pop("created") for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-") and len(next(iter(ids))) == 41
    assert len(created) == 1 and isinstance(next(iter(created)), int)
    head = {"object": "chat.completion.chunk", "model": "m"}
    assert chunks == [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}, "finish_reason": None}]},
        {
            **head,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        },
    ]
    # An answer that is only the end of sequence still opens with the role (and an empty content).
    (only,) = list(model.predict_stream(chat("")))
    assert only["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]
    assert only["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_the_default_max_tokens_is_clamped_to_the_context() -> None:
    model = engine()
    model.handle.context_length = 20
    model.info = model.backend.describe(model.handle)
    model.predict(chat("abc"))
    assert model.handle.seen[0].max_tokens == 20 - len(SEP + "abc")
    with pytest.raises(InvalidRequest) as exc:
        model.predict(chat("abc", max_tokens=17))
    assert str(exc.value) == (
        "invalid request: field 'max_tokens': prompt (4 tokens) + max_tokens (17) exceeds the context of "
        "20 tokens (allowed: at most 16 for this prompt)"
    )
    model.predict(chat("abc", max_tokens=16))
    assert model.handle.seen[-1].max_tokens == 16


def test_a_prompt_filling_the_context_is_refused_naming_the_prompt_field() -> None:
    model = engine(task="text-generation")
    model.handle.context_length = 4
    model.info = model.backend.describe(model.handle)
    with pytest.raises(InvalidRequest) as exc:
        model.predict({"prompt": "abc"})
    assert exc.value.field == "prompt"
    assert exc.value.allowed == "a prompt of at most 3 tokens"
    assert model.handle.seen == []


def test_seeds_of_n_choices_follow_the_request_seed_and_wrap() -> None:
    model = engine(Scripted([Capability.SAMPLING]))
    model.predict(chat("a", n=3, seed=MAX_SEED - 1, temperature=0.5))
    assert [r.seed for r in model.handle.seen] == [MAX_SEED - 1, MAX_SEED, 0]
    model.predict(chat("a", n=2, temperature=0.5))
    assert [r.seed for r in model.handle.seen[3:]] == [None, None]


# -- streaming -------------------------------------------------------------------------------------


def test_streaming_with_n_gives_a_role_on_each_choice_first_chunk_and_usage_on_the_last() -> None:
    model = engine()
    request = chat("a|b|c", n=2, max_tokens=10)
    chunks = list(model.predict_stream(request))
    answer = model.predict(request)[0]
    by_choice: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == "scripted"
        (choice,) = chunk["choices"]
        by_choice[choice["index"]].append(choice)
    for index, choices in by_choice.items():
        assert choices[0]["delta"]["role"] == "assistant", f"choice {index} starts with the role"
        assert all("role" not in c["delta"] for c in choices[1:])
        assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["stop"]
        assert "".join(c["delta"].get("content", "") for c in choices) == text_of(answer, index) == "abc"
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert [("usage" in c) for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["usage"] == answer["usage"]
    assert chunks[-1]["usage"]["prompt_tokens"] == len(SEP + "a|b|c")


def test_predict_stream_takes_exactly_one_request() -> None:
    model = engine()
    with pytest.raises(InvalidRequest) as exc:
        model.predict_stream([chat("a"), chat("b")])
    assert exc.value.field == "inputs"
    assert "exactly one request, got 2" in exc.value.detail
    assert model.handle.seen == []


def test_an_empty_batch_and_an_unknown_input_type_are_refused() -> None:
    model = engine()
    with pytest.raises(InvalidRequest) as exc:
        model.predict([])
    assert str(exc.value) == (
        "invalid request: field 'inputs': no requests given (allowed: a request object or a non-empty list)"
    )
    with pytest.raises(InvalidRequest) as exc:
        model.predict(42)
    assert str(exc.value) == (
        "invalid request: field 'inputs': unsupported input type int "
        "(allowed: a dict, a list of dicts or a pandas DataFrame)"
    )


def test_dataframes_and_arrays_of_requests_are_rows() -> None:
    import numpy as np
    import pandas as pd

    model = engine()
    rows = [chat("a|b"), chat("c")]
    expected = ["ab", "c"]
    assert [text_of(r) for r in model.predict(pd.DataFrame(rows))] == expected
    assert [text_of(r) for r in model.predict(np.array(rows, dtype=object))] == expected
    assert [text_of(r) for r in model.predict(tuple(rows))] == expected


def test_a_bad_row_in_a_batch_is_named_by_its_index_and_nothing_is_generated() -> None:
    model = engine()
    with pytest.raises(InvalidRequest) as exc:
        model.predict([chat("a"), chat("b", top_p=3.0)])
    assert exc.value.field == "inputs[1].top_p"
    assert model.handle.seen == []
    with pytest.raises(InvalidRequest) as single:
        model.predict(chat("b", top_p=3.0))
    assert single.value.field == "top_p"
    # The batch error keeps the single error's message and allowed values.
    assert (exc.value.detail, exc.value.allowed) == (single.value.detail, single.value.allowed)
    assert single.value.allowed == "a number greater than 0 and at most 1"
    assert "less than or equal to 1" in single.value.detail


# -- defaults --------------------------------------------------------------------------------------


def test_core_defaults_apply_when_neither_request_nor_package_sets_them() -> None:
    assert CORE_DEFAULTS == {"max_tokens": 256, "temperature": 1.0, "top_p": 1.0, "n": 1}
    model = engine(Scripted([Capability.SAMPLING]))
    response = model.predict(chat("a"))[0]
    (req,) = model.handle.seen
    assert (req.temperature, req.top_p, req.top_k, req.seed, req.max_tokens, req.stop) == (
        1.0,
        1.0,
        None,
        None,
        256,
        (),
    )
    assert len(response["choices"]) == 1


def test_a_greedy_only_backend_defaults_to_temperature_zero_and_refuses_sampling() -> None:
    model = engine()
    model.predict(chat("a"))
    assert model.handle.seen[0].temperature == 0.0
    with pytest.raises(InvalidRequest) as exc:
        model.predict(chat("a", temperature=0.7))
    assert str(exc.value) == (
        "invalid request: field 'temperature': backend 'scripted' supports greedy decoding only (allowed: 0)"
    )
    # A package default above 0 is refused per request too: the backend cannot honour it.
    with pytest.raises(InvalidRequest) as exc:
        engine(defaults={"temperature": 0.5}).predict(chat("a"))
    assert exc.value.field == "temperature"


def test_package_defaults_override_core_defaults_and_requests_override_both() -> None:
    model = engine(
        Scripted([Capability.SAMPLING]),
        defaults={"temperature": 0.3, "top_p": 0.9, "top_k": 5, "max_tokens": 7, "stop": ["zz"], "seed": 11},
    )
    model.predict(chat("a"))
    model.predict(chat("a", temperature=0.0, top_p=0.5, top_k=2, max_tokens=3, stop="yy", seed=4))
    first, second = model.handle.seen
    assert (first.temperature, first.top_p, first.top_k, first.max_tokens, first.stop, first.seed) == (
        0.3,
        0.9,
        5,
        7,
        ("zz",),
        11,
    )
    assert (second.temperature, second.top_p, second.top_k, second.max_tokens, second.stop, second.seed) == (
        0.0,
        0.5,
        2,
        3,
        ("yy",),
        4,
    )


def test_model_name_comes_from_the_package_or_the_backend() -> None:
    assert engine().predict(chat("a"))[0]["model"] == "scripted"
    named = engine(model_name="my-model")
    response = named.predict(chat("a"))[0]
    assert response["model"] == "my-model"
    assert response["object"] == "chat.completion"
    assert response["id"].startswith("chatcmpl-") and len(response["id"]) == len("chatcmpl-") + 32
    assert next(iter(named.predict_stream(chat("a"))))["model"] == "my-model"


def test_an_unknown_task_is_refused() -> None:
    with pytest.raises(InvalidRequest) as exc:
        engine(task="llm/v1/completions")
    assert str(exc.value) == (
        "invalid request: field 'task': unknown task 'llm/v1/completions' (allowed: llm/v1/chat, text-generation)"
    )


def test_text_generation_always_makes_one_completion() -> None:
    model = engine(task="text-generation", defaults={"n": 3})
    assert model.predict({"prompt": "a"}) == ["a"]
    assert len(model.handle.seen) == 1


def test_a_chat_prompt_filling_the_context_names_messages() -> None:
    model = engine()
    model.handle.context_length = 4
    model.info = model.backend.describe(model.handle)
    with pytest.raises(InvalidRequest) as exc:
        model.predict(chat("abcd"))
    assert str(exc.value) == (
        "invalid request: field 'messages': the prompt is 5 tokens but the model's context is 4 tokens "
        "(allowed: a prompt of at most 3 tokens)"
    )


def test_close_unloads_the_handle() -> None:
    model = engine()
    model.close()
    assert model.handle.unloaded is True


# -- messages and text-generation ------------------------------------------------------------------


def test_messages_reach_the_backend_as_role_and_content_only() -> None:
    model = engine()
    model.predict(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "hi", "name": "alice"},
            ]
        }
    )
    assert model.handle.messages == [[{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]], (
        "name is accepted for OpenAI compatibility but never reaches encode"
    )


def test_text_generation_tokenizes_the_prompt_as_plain_text_without_the_template() -> None:
    model = engine(task="text-generation")
    assert model.raw_prompts
    assert model.predict({"prompt": "a|b"}) == ["ab"]
    assert model.predict([{"prompt": "x"}, {"prompt": "y|z", "max_tokens": 1}]) == ["x", "y"]
    assert list(model.predict_stream({"prompt": "p|q"})) == ["p", "q"]
    assert model.handle.texts == ["", "a|b", "x", "y|z", "p|q"], "the load-time probe, then each prompt as given"
    assert model.handle.messages == [], "encode (the chat template) is never called"
    assert list(model.handle.seen[0].prompt_ids) == [ord(c) for c in SEP + "a|b"]


def test_a_model_packaged_with_the_chat_template_format_wraps_the_prompt_in_one_user_message() -> None:
    model = engine(task="text-generation", prompt_format="chat_template")  # as every model packaged before spec 4
    assert not model.raw_prompts
    assert model.predict({"prompt": "a|b"}) == ["ab"]
    assert model.predict([{"prompt": "x"}, {"prompt": "y|z", "max_tokens": 1}]) == ["x", "y"]
    assert model.handle.messages == [
        [{"role": "user", "content": "a|b"}],
        [{"role": "user", "content": "x"}],
        [{"role": "user", "content": "y|z"}],
    ]
    assert list(model.predict_stream({"prompt": "p|q"})) == ["p", "q"]
    assert model.handle.texts == [], "encode_text is never called"


class WithoutEncodeText(Scripted):
    """A backend written for spec 3: no encode_text hook."""

    encode_text = None  # type: ignore[assignment]


def test_a_raw_text_generation_model_on_a_backend_without_encode_text_is_refused_at_load_naming_the_hook() -> None:
    with pytest.raises(BackendError) as exc:
        engine(WithoutEncodeText(), task="text-generation")
    assert "does not implement the encode_text hook" in str(exc.value)
    assert "prompt_format='chat_template'" in str(exc.value)
    model = engine(WithoutEncodeText(), task="text-generation", prompt_format="chat_template")
    assert model.predict({"prompt": "a|b"}) == ["ab"]
    assert engine(WithoutEncodeText()).predict(chat("a"))[0]["choices"][0]["message"]["content"] == "a"


def test_an_empty_raw_prompt_that_gives_no_token_is_refused_naming_the_prompt() -> None:
    class NoBos(Scripted):
        @hookimpl
        def encode_text(self, handle: Handle, text: str) -> list[int]:
            return [ord(c) for c in text]

    model = engine(NoBos(), task="text-generation")
    with pytest.raises(InvalidRequest) as exc:
        model.predict({"prompt": ""})
    assert exc.value.field == "prompt" and "empty" in exc.value.detail
    assert model.handle.seen == []


def test_a_chat_model_is_never_raw() -> None:
    with pytest.raises(InvalidRequest) as exc:
        engine(prompt_format="raw")
    assert exc.value.field == "prompt_format"


# -- guard rails: a backend breaking the contract --------------------------------------------------


def test_a_delta_for_a_request_outside_the_batch_is_a_backend_error() -> None:
    for plugin, index in ((WrongIndex(), 1), (NegativeIndex(), -1)):
        with pytest.raises(BackendError) as exc:
            engine(plugin).predict(chat("a"))
        assert str(exc.value) == (
            f"backend 'scripted' yielded a delta for request {index}, but the batch has 1 request(s)"
        )


def test_a_request_that_never_finishes_is_a_backend_error() -> None:
    with pytest.raises(BackendError) as exc:
        engine(NeverFinishes()).predict([chat("a|b"), chat("c")])
    assert str(exc.value) == (
        "backend 'scripted' stopped without finishing 2 request(s); "
        "every request must end with a Delta carrying finish_reason"
    )


class Chatty(Scripted):
    """Keeps yielding deltas for requests that already finished, up to 100 of them."""

    def decode(self, handle: Handle, requests: Sequence[GenerationRequest]) -> Iterator[Delta]:
        handle.produced[-1] = []
        for i in range(len(requests)):
            yield Delta(i, "ok", 1, "stop")
        for _ in range(100):
            handle.produced[-1].append("junk")
            yield Delta(0, "junk", 1)


def test_the_core_stops_reading_once_every_request_finished() -> None:
    model = engine(Chatty())
    assert [text_of(r) for r in model.predict([chat("a"), chat("b")])] == ["ok", "ok"]
    assert model.handle.produced[-1] == [], "not one delta was asked for after the last finish"


class _Bad(Scripted):
    pass


def _variant(hook: str, value: Any) -> Scripted:
    """A Scripted backend whose ``hook`` returns ``value``."""
    if hook == "generate":

        @hookimpl
        def impl(self: Any, handle: Any, requests: Any) -> Any:
            return value

    elif hook in {"describe", "unload"}:

        @hookimpl
        def impl(self: Any, handle: Any) -> Any:
            return value

    elif hook == "encode":

        @hookimpl
        def impl(self: Any, handle: Any, messages: Any) -> Any:
            return value

    elif hook == "load":

        @hookimpl
        def impl(self: Any, artifacts: Any, options: Any) -> Any:
            return value

    elif hook == "artifacts":

        @hookimpl
        def impl(self: Any, source: Any, options: Any, workdir: Any) -> Any:
            return value

    else:

        @hookimpl
        def impl(self: Any) -> Any:
            return value

    impl.__name__ = hook
    return type(f"Bad_{hook}", (Scripted,), {hook: impl})()


BAD_RETURNS = [
    ("dependencies", "frobnitz>=1", "hook dependencies() must return a list of requirement strings, got str"),
    ("dependencies", ["ok", 3], "hook dependencies() must return a list of requirement strings, got list"),
    ("artifacts", {"weights": "x"}, "hook artifacts() must return flavorkit.Artifacts, got dict"),
    ("load", None, "hook load() must return a handle (not None), got NoneType"),
    ("describe", {"context_length": 5}, "hook describe() must return flavorkit.RuntimeInfo, got dict"),
    ("encode", None, "hook encode() must return a list of token ids, got NoneType"),
    ("generate", None, "hook generate() must return an iterator of flavorkit.Delta, got NoneType"),
    ("generate", 5, "hook generate() must return an iterator of flavorkit.Delta, got int"),
    ("generate", ["text"], "hook generate() must return flavorkit.Delta items, got str"),
    ("capabilities", ["telepathy"], "declares unknown capability 'telepathy'"),
]


@pytest.mark.parametrize(
    ("hook", "value", "message"), BAD_RETURNS, ids=[f"{h}-{i}" for i, (h, _, _) in enumerate(BAD_RETURNS)]
)
def test_a_hook_returning_the_wrong_type_is_a_plugin_spec_error(hook: str, value: Any, message: str) -> None:
    plugin = _variant(hook, value)
    be = Backend("scripted", plugin, object_path="test_contract_runtime:Scripted")
    with pytest.raises(PluginSpecError) as exc:
        if hook == "dependencies":
            be.dependencies()
        elif hook == "capabilities":
            be.capabilities()
        elif hook == "artifacts":
            be.artifacts("src", {}, "/tmp")
        elif hook == "load":
            be.load({}, {})
        elif hook == "describe":
            be.describe(Handle())
        elif hook == "encode":
            be.encode(Handle(), [{"role": "user", "content": "a"}])
        else:
            list(be.generate(Handle(), [GenerationRequest(prompt_ids=[1], max_tokens=1)]))
    assert "backend 'scripted'" in str(exc.value)
    assert message in str(exc.value)


def test_artifacts_without_files_are_a_plugin_spec_error() -> None:
    be = Backend("scripted", _variant("artifacts", Artifacts(files={})), object_path="x:y")
    with pytest.raises(PluginSpecError) as exc:
        be.artifacts("src", {}, "/tmp")
    assert str(exc.value) == "backend 'scripted': artifacts() returned no files"


def test_the_backend_generator_is_closed_when_the_core_stops_reading() -> None:
    model = engine()
    stream = model.predict_stream(chat("a|b|c|d"))
    first = next(stream)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    stream.close()  # type: ignore[attr-defined]
    assert model.handle.closed == 1


ERROR_BASES = [
    (BackendNotFound, LookupError),
    (BackendUnavailable, ImportError),
    (InvalidRequest, ValueError),
    (ModelSourceError, FileNotFoundError),
    (BackendError, RuntimeError),
    (PluginSpecError, FlavorkitError),
    (PackagingError, FlavorkitError),
    (IntegrityError, FlavorkitError),
]


@pytest.mark.parametrize(("cls", "base"), ERROR_BASES, ids=[c.__name__ for c, _ in ERROR_BASES])
def test_error_classes_derive_from_flavorkit_error_and_the_closest_builtin(cls: type, base: type) -> None:
    assert issubclass(cls, FlavorkitError)
    assert issubclass(cls, base)


def test_error_messages_carry_their_fields() -> None:
    err = InvalidRequest("top_p", "must be positive", allowed="a number greater than 0")
    assert (err.field, err.detail, err.allowed) == ("top_p", "must be positive", "a number greater than 0")
    assert str(err) == "invalid request: field 'top_p': must be positive (allowed: a number greater than 0)"
    assert str(InvalidRequest("n", "too many")) == "invalid request: field 'n': too many"
    unavailable = BackendUnavailable("x", "y is missing", "pip install y")
    assert str(unavailable) == "backend 'x' is not available: y is missing. Fix it with: pip install y"
    assert unavailable.install_hint == "pip install y"
    integrity = IntegrityError(["a: missing", "b: not in the manifest"])
    assert integrity.problems == ["a: missing", "b: not in the manifest"]
    assert str(integrity) == "the packaged model failed the integrity check: a: missing; b: not in the manifest"
    source = ModelSourceError("models/x", "no config.json")
    assert source.source == "models/x" and str(source) == "model source models/x: no config.json"
    missing = BackendNotFound("nope", ["b", "a"], broken=["z"])
    assert missing.available == ["b", "a"]
    assert str(missing).startswith("unknown backend 'nope'. Installed backends: a, b. Plugins that failed to load: z")


# -- the pyfunc boundary ---------------------------------------------------------------------------


def test_predict_stream_of_the_python_model_refuses_two_requests_at_the_call(tiny_pyfunc: Any) -> None:
    from mlflow.exceptions import MlflowException

    python_model = tiny_pyfunc.unwrap_python_model()
    two = [chat("a"), chat("b")]
    with pytest.raises(MlflowException) as exc:
        python_model.predict_stream(None, two)  # raises before any iteration
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "field 'inputs'" in exc.value.message and "exactly one request, got 2" in exc.value.message
    with pytest.raises(MlflowException) as exc:
        python_model.predict_stream(None, chat("a", max_tokens=0))
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "field 'max_tokens'" in exc.value.message


def test_predict_stream_through_pyfunc_with_two_requests(tiny_pyfunc: Any) -> None:
    from mlflow.exceptions import MlflowException

    # MLflow itself refuses a list before flavorkit sees it, with its own code and message; this pins
    # that behaviour so a change in MLflow shows up here (flavorkit's check is the test above).
    with pytest.raises(MlflowException) as exc:
        list(tiny_pyfunc.predict_stream([chat("a"), chat("b")]))
    assert exc.value.error_code == "INTERNAL_ERROR"
    assert "'predict_stream' requires single input" in exc.value.message
    # A single bad request does reach flavorkit and is answered with its field.
    with pytest.raises(MlflowException) as exc:
        list(tiny_pyfunc.predict_stream(chat("a", top_p=2.0)))
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "field 'top_p'" in exc.value.message
