"""predict / predict_stream through mlflow.pyfunc on the tiny onnx-cpu model: the chat contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from helpers import chat, content

PROMPTS = ["Hello", "What is the capital of Spain? Tell me more, please.", "x", "Write a haiku about the sea."]


def test_single_dict_list_and_dataframe_give_the_same_answer(tiny_pyfunc: Any, tiny_ort: Path) -> None:
    req = chat("Hello", max_tokens=12)
    as_dict = tiny_pyfunc.predict(req)
    as_list = tiny_pyfunc.predict([req])
    as_frame = tiny_pyfunc.predict(pd.DataFrame([req]))
    assert len(as_dict) == len(as_list) == len(as_frame) == 1
    assert content(as_dict[0]) == content(as_list[0]) == content(as_frame[0])
    response = as_dict[0]
    assert response["object"] == "chat.completion"
    assert response["id"].startswith("chatcmpl-") and isinstance(response["created"], int)
    assert response["model"] == tiny_ort.name, "the source folder's name by default"
    assert response["choices"][0]["message"]["role"] == "assistant"
    assert set(response["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_batch_returns_one_result_per_row_in_order_each_equal_to_its_single(tiny_pyfunc: Any) -> None:
    rows = [chat(p, max_tokens=6 + 3 * i) for i, p in enumerate(PROMPTS)]
    rows[2]["n"] = 2  # heterogeneous rows: only one sets n
    batch = tiny_pyfunc.predict(rows)
    singles = [tiny_pyfunc.predict(r)[0] for r in rows]
    assert [content(b) for b in batch] == [content(s) for s in singles]
    assert [b["usage"] for b in batch] == [s["usage"] for s in singles]
    assert [len(b["choices"]) for b in batch] == [1, 1, 2, 1]
    # Each row's own max_tokens applies inside the batch, per choice.
    for i, b in enumerate(batch):
        for choice in b["choices"]:
            assert choice["finish_reason"] in {"stop", "length"}
        assert b["usage"]["completion_tokens"] <= (6 + 3 * i) * len(b["choices"])


def test_a_dataframe_batch_with_missing_cells(tiny_pyfunc: Any) -> None:
    frame = pd.DataFrame([chat("Hello", max_tokens=4), chat("x")])
    out = tiny_pyfunc.predict(frame)
    assert [o["object"] for o in out] == ["chat.completion", "chat.completion"]
    assert out[0]["usage"]["completion_tokens"] <= 4
    assert content(out[1]) == content(tiny_pyfunc.predict(chat("x"))[0]), "the missing cell takes the default"


def test_max_tokens_is_a_hard_limit_with_finish_reason_length(tiny_pyfunc: Any) -> None:
    for limit in (1, 2, 7):
        response = tiny_pyfunc.predict(chat("Write a haiku about the sea.", max_tokens=limit))[0]
        usage = response["usage"]
        # Greedy on this prompt the model never ends within 7 tokens: every answer is cut.
        assert usage["completion_tokens"] == limit
        assert response["choices"][0]["finish_reason"] == "length"
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_prompt_tokens_match_the_model_tokenizer(tiny_pyfunc: Any, tiny_hf: Path) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "café 日本 🙂"}]
    response = tiny_pyfunc.predict({"messages": messages, "max_tokens": 2})[0]
    expected = AutoTokenizer.from_pretrained(tiny_hf).apply_chat_template(messages, add_generation_prompt=True)
    assert response["usage"]["prompt_tokens"] == len(expected)


def test_stop_strings_cut_the_output_and_never_appear(tiny_pyfunc: Any) -> None:
    full = content(tiny_pyfunc.predict(chat("Hello", max_tokens=30))[0])
    assert len(full) > 12, full
    stop = full[8:11]
    expected = full[: full.find(stop)]
    for form in (stop, [stop], ["never-there", stop]):
        response = tiny_pyfunc.predict(chat("Hello", max_tokens=30, stop=form))[0]
        assert content(response) == expected
        assert stop not in content(response)
        assert response["choices"][0]["finish_reason"] == "stop"
        assert response["usage"]["completion_tokens"] < 30, "generation stopped early once the stop string matched"


def test_stop_from_packaged_defaults(tiny_ort: Path, tmp_path: Path, tiny_pyfunc: Any) -> None:
    import mlflow

    import flavorkit

    full = content(tiny_pyfunc.predict(chat("Hello", max_tokens=30))[0])
    stop = full[5:8]
    info = flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=tmp_path / "m", generation={"temperature": 0, "stop": [stop]}
    )
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert content(model.predict(chat("Hello", max_tokens=30))[0]) == full[: full.find(stop)]
    # A request's own stop replaces the default.
    assert content(model.predict(chat("Hello", max_tokens=30, stop=["zzzz"]))[0]) == full


def test_seeds_of_n_choices_stay_in_range(tiny_pyfunc: Any) -> None:
    top = 2**31 - 1
    response = tiny_pyfunc.predict(chat("Hello", max_tokens=6, temperature=1.5, n=2, seed=top))[0]
    again = tiny_pyfunc.predict(chat("Hello", max_tokens=6, temperature=1.5, n=2, seed=top))[0]
    assert [c["message"] for c in response["choices"]] == [c["message"] for c in again["choices"]]


def test_n_gives_n_choices(tiny_pyfunc: Any) -> None:
    response = tiny_pyfunc.predict(chat("Hello", max_tokens=5, n=3))[0]
    assert [c["index"] for c in response["choices"]] == [0, 1, 2]
    assert len({content(response, i) for i in range(3)}) == 1, "greedy choices are identical"
    single = tiny_pyfunc.predict(chat("Hello", max_tokens=5))[0]
    assert content(response) == content(single)
    assert response["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"], "the prompt is counted once"
    assert response["usage"]["completion_tokens"] == 3 * single["usage"]["completion_tokens"]


def test_sampling_is_seeded_and_honours_top_p_and_top_k(tiny_pyfunc: Any) -> None:
    greedy = content(tiny_pyfunc.predict(chat("Hello", max_tokens=20))[0])
    a = tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, seed=7))[0]
    b = tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, seed=7))[0]
    c = tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, seed=8))[0]
    assert content(a) == content(b), "the same seed repeats"
    assert content(a) != content(c), "another seed differs"
    assert content(a) != greedy
    assert content(tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, top_k=1))[0]) == greedy
    assert content(tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, top_p=1e-6))[0]) == greedy
    # A top_k beyond the vocabulary (600 tokens here) keeps every token, like no top_k at all.
    assert content(tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, seed=7, top_k=10**6))[0]) == (
        content(a)
    )
    many = tiny_pyfunc.predict(chat("Hello", max_tokens=20, temperature=1.5, n=3, seed=3))[0]
    assert len({content(many, i) for i in range(3)}) == 3, "sampled choices differ"


def test_streaming_chunks_follow_openai_and_join_to_predict(tiny_pyfunc: Any) -> None:
    req = chat("Write a haiku about the sea.", max_tokens=15)
    chunks = list(tiny_pyfunc.predict_stream(req))
    assert len(chunks) > 2, "text arrives in several chunks"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    full = tiny_pyfunc.predict(req)[0]
    assert joined == content(full)
    assert last["usage"] == full["usage"]


def test_streaming_takes_one_request(tiny_pyfunc: Any) -> None:
    # MLflow refuses a list itself (its own code); flavorkit's check is in test_contract_runtime.py.
    with pytest.raises(MlflowException) as exc:
        list(tiny_pyfunc.predict_stream([chat("a"), chat("b")]))
    assert exc.value.error_code == "INTERNAL_ERROR"
    assert "'predict_stream' requires single input" in exc.value.message
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.unwrap_python_model().predict_stream(None, [chat("a"), chat("b")])
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "field 'inputs'" in exc.value.message


def test_stream_field_is_accepted_by_predict(tiny_pyfunc: Any) -> None:
    out = tiny_pyfunc.predict(chat("Hello", max_tokens=4, stream=True))
    assert out[0]["object"] == "chat.completion"


BAD = [
    ({"messages": []}, "messages"),
    (chat("hi", max_tokens=0), "max_tokens"),
    (chat("hi", max_tokens=-2), "max_tokens"),
    (chat("hi", max_tokens="ten"), "max_tokens"),
    (chat("hi", max_tokens=2.5), "max_tokens"),
    (chat("hi", temperature=-0.5), "temperature"),
    (chat("hi", top_p=0.0), "top_p"),
    (chat("hi", top_p=1.5), "top_p"),
    (chat("hi", n=0), "n"),
    (chat("hi", stop=7), "stop"),
    (chat("hi", stop=["ok", 7]), "stop"),
    ({"messages": [{"content": "no role"}]}, "role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
    ({"messages": [{"role": "user", "content": ["a", "b"]}]}, "content"),
]


@pytest.mark.parametrize(("request_", "field"), BAD, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD)])
def test_invalid_requests_raise_invalid_parameter_value_naming_the_field(
    tiny_pyfunc: Any, request_: dict[str, Any], field: str
) -> None:
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.predict(request_)
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert field in exc.value.message
    # Nothing is lost: the model still answers a valid request afterwards.
    assert tiny_pyfunc.predict(chat("Hello", max_tokens=2))[0]["usage"]["completion_tokens"] <= 2


def test_a_bad_row_in_a_batch_is_named_and_nothing_is_generated(tiny_pyfunc: Any) -> None:
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.predict([chat("ok", max_tokens=2), chat("bad", top_p=3.0)])
    assert "inputs[1].top_p" in exc.value.message


def test_prompt_longer_than_the_context(tiny_pyfunc: Any) -> None:
    long_text = "capital of Spain " * 200  # the tiny model's context is 256 tokens
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.predict(chat(long_text))
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "'messages'" in exc.value.message and "context is 256 tokens" in exc.value.message


def test_explicit_max_tokens_beyond_the_context_is_rejected_and_default_is_clamped(tiny_pyfunc: Any) -> None:
    prompt = "capital of Spain " * 40
    prompt_tokens = tiny_pyfunc.predict(chat(prompt, max_tokens=1))[0]["usage"]["prompt_tokens"]
    room = 256 - prompt_tokens
    assert 0 < room < 200
    with pytest.raises(MlflowException) as exc:
        tiny_pyfunc.predict(chat(prompt, max_tokens=room + 1))
    assert "'max_tokens'" in exc.value.message and f"at most {room}" in exc.value.message
    # Without an explicit max_tokens the default (256) is clamped to what fits.
    response = tiny_pyfunc.predict(chat(prompt))[0]
    assert response["usage"]["total_tokens"] <= 256


def test_unsupported_input_types(tiny_pyfunc: Any) -> None:
    # Through pyfunc, MLflow's schema enforcement answers first (with the same error code).
    for value in ("just a string", json.dumps(chat("hi")), 42):
        with pytest.raises(MlflowException) as exc:
            tiny_pyfunc.predict(value)
        assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "Failed to enforce schema" in exc.value.message
    # flavorkit's own check, reached when the model is called without MLflow's enforcement.
    python_model = tiny_pyfunc.unwrap_python_model()
    for value, field in (("just a string", "request"), (42, "inputs")):
        with pytest.raises(MlflowException) as exc:
            python_model.predict(None, value)
        assert exc.value.error_code == "INVALID_PARAMETER_VALUE"
        assert f"invalid request: field {field!r}" in exc.value.message
