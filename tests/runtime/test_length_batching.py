"""Length-aware batching: which requests share a padded batch, and that batching never changes an answer.

The grouping decisions are asserted through :meth:`flavorkit.runtime.cost.CostModel.plan` with the
coefficients the backends ship, and through the backends' own grouping on real models; equality of
batched and single answers runs on the tiny fixture model (both backends) and on SmolLM2 (slow).
Speed itself is measured in benchmarks/, never here.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from flavorkit.runtime.cost import CostModel
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.types import GenerationRequest
from flavorkit_onnxgenai.runtime import CPU_COST as ONNX_CPU
from flavorkit_onnxgenai.runtime import GPU_COST as ONNX_GPU
from flavorkit_onnxgenai.runtime import MAX_BATCH
from helpers import load_engine


def _hf_costs() -> tuple[CostModel, CostModel]:
    from flavorkit_hf.engine import CPU_COST, GPU_COST

    return CPU_COST, GPU_COST


#: Prompt tokens of the six conversations of the mixed-length benchmark (SmolLM2's template).
MIXED = [42, 204, 480, 980, 1460, 2087]

#: Sentences for prompts of chosen lengths (about 20 SmolLM2 tokens each).
NOTES = (
    "The harbour town wakes before dawn, when the fishing boats slip out past the lighthouse.",
    "Bakers light their ovens, and the smell of rye bread drifts along the narrow streets.",
    "By mid-morning the market square fills with stalls of apples, cheese, rope and lamp oil.",
    "Children race to the school on the hill, where the bell has rung at eight for a hundred years.",
    "In the afternoon the wind turns, and the boats come back heavy with herring and cod.",
    "Old sailors sit on the harbour wall and argue about the weather, the council and the price of nets.",
    "At dusk the lamps are lit one by one, and the tavern by the quay begins to sing.",
)


def notes(sentences: int, max_tokens: int) -> dict[str, Any]:
    """A chat request summarising ``sentences`` sentences of notes (a short poem request for 0)."""
    if not sentences:
        text = "Write a short poem about a quiet harbour town at dawn."
    else:
        body = " ".join(NOTES[i % len(NOTES)] for i in range(sentences))
        text = f"Here are my notes about a town:\n{body}\nSummarise them in two sentences."
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def _check_partition(plan: list[list[int]], n: int, max_rows: int) -> None:
    assert sorted(i for g in plan for i in g) == list(range(n))
    assert all(g == sorted(g) and 1 <= len(g) <= max_rows for g in plan)
    assert [min(g) for g in plan] == sorted(min(g) for g in plan)


# -- the plan --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onnx-cpu", "transformers"])
def test_similar_prompts_share_one_batch(backend: str) -> None:
    cost = ONNX_CPU if backend == "onnx-cpu" else _hf_costs()[0]
    assert cost.plan([52, 30, 45, 34, 60, 41], [128] * 6, 16) == [[0, 1, 2, 3, 4, 5]]
    assert cost.plan([30, 34, 41, 45], [128] * 4, 2) == [[0, 1], [2, 3]]  # at most max_rows per batch


def test_widely_different_prompts_are_not_padded_together() -> None:
    hf_cpu, _ = _hf_costs()
    alone = [[0], [1], [2], [3], [4], [5]]
    for cost in (ONNX_CPU, hf_cpu):
        assert cost.plan(MIXED, [8] * 6, 16) == alone  # almost all prompt: nothing to share
        assert [5] in cost.plan(MIXED, [256] * 6, 16)  # the 2,087-token prompt is always decoded alone
    # onnxruntime-genai shares little of a step: only the two shortest prompts pay off together.
    assert ONNX_CPU.plan(MIXED, [64] * 6, 16) == alone
    assert ONNX_CPU.plan(MIXED, [256] * 6, 16) == [[0, 1], [2], [3], [4], [5]]
    # transformers spends ~60 ms per step whatever the batch: longer paddings pay off as steps grow.
    assert hf_cpu.plan(MIXED, [64] * 6, 16) == [[0, 1, 2], [3], [4], [5]]
    assert hf_cpu.plan(MIXED, [256] * 6, 16) == [[0, 1, 2], [3, 4], [5]]


def test_rows_of_very_different_max_tokens_are_decoded_apart_on_onnx() -> None:
    # og.Generator keeps finished rows in the batch: 8 tokens next to 512 pays for 512 steps.
    assert ONNX_CPU.plan([50, 50], [8, 512], 16) == [[0], [1]]
    assert ONNX_CPU.plan([50, 50], [512, 512], 16) == [[0, 1]]
    assert ONNX_CPU.plan([50, 52, 51, 49], [8, 512, 8, 512], 16) == [[0, 2], [1, 3]]


def test_rows_that_leave_the_batch_pay_less_for_different_max_tokens() -> None:
    hf_cpu, _ = _hf_costs()
    assert hf_cpu.rows_leave and not ONNX_CPU.rows_leave
    # A row that stops after 64 tokens costs nothing more once it leaves; in og it runs all 256 steps.
    assert hf_cpu.batch([50, 50], [64, 256]) < hf_cpu.batch([50, 50], [256, 256])
    assert ONNX_CPU.batch([50, 50], [64, 256]) == ONNX_CPU.batch([50, 50], [256, 256])


def test_every_chosen_batch_beats_its_rows_apart_by_the_model() -> None:
    rng = random.Random(5)
    for cost in (ONNX_CPU, _hf_costs()[0]):
        for _ in range(200):
            n = rng.randint(1, 24)
            lengths = [rng.choice([rng.randint(1, 64), rng.randint(1, 4000)]) for _ in range(n)]
            tokens = [rng.choice([1, 8, 64, 256, 1024]) for _ in range(n)]
            max_rows = rng.randint(1, 16)
            plan = cost.plan(lengths, tokens, max_rows)
            _check_partition(plan, n, max_rows)
            apart = 0.0
            for group in plan:
                alone = sum(cost.single(lengths[i], tokens[i]) for i in group)
                apart += alone
                if len(group) > 1:
                    together = cost.batch([lengths[i] for i in group], [tokens[i] for i in group])
                    assert (1 + cost.margin) * together <= alone
            total = sum(cost.batch([lengths[i] for i in g], [tokens[i] for i in g]) for g in plan)
            assert total <= apart


def test_fits_forbids_a_group() -> None:
    lengths, tokens = [100, 110, 120, 130], [100] * 4
    assert ONNX_CPU.plan(lengths, tokens, 16) == [[0, 1, 2, 3]]
    plan = ONNX_CPU.plan(lengths, tokens, 16, fits=lambda width, steps: width + steps <= 225)
    assert plan == [[0, 1, 2], [3]]


def test_plan_edge_cases() -> None:
    assert ONNX_CPU.plan([], [], 16) == []
    assert ONNX_CPU.plan([5], [3], 16) == [[0]]
    assert ONNX_CPU.plan([5, 5, 5], [3, 3, 3], 1) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="3 prompt lengths but 2 max_tokens"):
        ONNX_CPU.plan([1, 2, 3], [1, 2], 16)


def test_accelerators_batch_whatever_fits() -> None:
    assert ONNX_GPU.plan(MIXED, [64] * 6, MAX_BATCH) == [[0, 1, 2, 3, 4, 5]]
    assert _hf_costs()[1].plan(MIXED, [64] * 6, 4) == [[0, 1, 2, 3], [4, 5]]


# -- the backends' grouping on real models ---------------------------------------------------------


def _requests(lengths: list[int], max_tokens: list[int], **settings: Any) -> list[GenerationRequest]:
    pairs = zip(lengths, max_tokens, strict=True)
    return [GenerationRequest(prompt_ids=[7] * n, max_tokens=m, **settings) for n, m in pairs]


def test_onnx_groups_by_settings_then_cost(tiny_ort: Path) -> None:
    model = load_engine("onnx-cpu", tiny_ort, batching="auto")
    handle = model.handle
    assert handle.cost is ONNX_CPU
    greedy = _requests([10, 200, 12, 14], [16] * 4)
    assert handle.groups(greedy) == [[0, 2, 3], [1]]
    sampled = _requests([10, 12], [16, 16], temperature=0.8)
    assert handle.groups([*greedy, *sampled]) == [[0, 2, 3], [1], [4, 5]]
    assert handle.groups(_requests([10, 10], [8, 200])) == [[0], [1]]
    # The tiny model's context is 256 tokens: a batch must fit the widest prompt plus the largest budget.
    assert ONNX_CPU.plan([120, 130], [130, 120], MAX_BATCH) == [[0, 1]]
    assert handle.groups(_requests([120, 130], [130, 120])) == [[0], [1]]  # 130 + 130 > 256
    sequential = load_engine("onnx-cpu", tiny_ort, batching="sequential").handle
    assert sequential.groups(greedy) == [[0], [1], [2], [3]]
    assert sequential.groups(sampled) == [[0], [1]]
    # The default, 'exact': where a batch rounds differently from one row, greedy requests decode
    # alone and sampled ones are batched by their settings and the cost model ...
    exact = load_engine("onnx-cpu", tiny_ort).handle
    assert exact.batching == "exact"
    exact.invariant = False
    assert exact.groups([*greedy, *sampled]) == [[0], [1], [2], [3], [4, 5]]
    assert exact.groups([sampled[0], greedy[0], sampled[1]]) == [[0, 2], [1]]
    # ... and where the probe found batches bitwise equal to single rows, greedy ones batch as with 'auto'.
    exact.invariant = True
    assert exact.groups([*greedy, *sampled]) == [[0, 2, 3], [1], [4, 5]]


def test_the_invariance_probe_runs_once_and_only_when_greedy_rows_could_share_a_batch(tiny_ort: Path) -> None:
    import numpy as np

    handle = load_engine("onnx-cpu", tiny_ort).handle
    one = _requests([10], [16])
    handle.groups(one)
    handle.groups(_requests([10, 12], [16, 16], temperature=0.8))
    assert handle.invariant is None, "one greedy row, or sampled rows only: nothing to probe"
    verdict = handle.batches_exactly()
    # The verdict is what the probe's own comparison says: a long and a short row, alone and batched.
    ids = [int(t) for t in handle.tokenizer.encode("the river ran past the old mill and the baker")]
    alone = handle._probe_logits([ids], 3)[0]
    batched = handle._probe_logits([ids, ids[:3]], 3)[0]
    assert verdict == handle.invariant
    assert not verdict or np.array_equal(alone, batched)
    handle.invariant = not verdict  # cached: the probe does not run again
    assert handle.batches_exactly() is (not verdict)


def test_transformers_plan_uses_the_cost_model(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf, batching="padded", max_batch_size=2)
    handle = model.handle
    assert handle.cost is _hf_costs()[0]
    requests = _requests([10, 200, 12, 14], [16] * 4)
    assert handle.plan(requests, [0, 1, 2, 3]) == [[0, 2], [1], [3]]
    assert handle.plan(requests, [1, 3]) == [[1], [3]]


# -- equal answers ---------------------------------------------------------------------------------


def _tiny_mixed() -> list[dict[str, Any]]:
    # Short and long prompts (the tiny model has a 256-token context) with different budgets.
    texts = ["Hi", "Hello there", "word " * 40, "How are you?", "more words " * 25]
    return [
        {"messages": [{"role": "user", "content": t}], "max_tokens": m}
        for t, m in zip(texts, [12, 12, 20, 3, 16], strict=True)
    ]


def _equal_to_singles(model: LoadedModel, rows: list[dict[str, Any]]) -> list[list[int]]:
    """Assert that one predict of ``rows`` answers each row as a predict of its own; return the groups."""
    singles = [model.predict(r)[0] for r in rows]
    batch = model.predict(rows)
    for one, many in zip(singles, batch, strict=True):
        assert many["choices"] == one["choices"]
        assert many["usage"] == one["usage"]
    lengths = [len(model.backend.encode(model.handle, r["messages"])) for r in rows]
    return [[lengths[i] for i in g] for g in model.handle.cost.plan(lengths, [r["max_tokens"] for r in rows], 16)]


def test_onnx_mixed_lengths_equal_single_requests(tiny_ort: Path) -> None:
    model = load_engine("onnx-cpu", tiny_ort, batching="auto")  # batched: the tiny fp32 model shows no drift
    groups = _equal_to_singles(model, _tiny_mixed())
    assert len(groups) > 1 and any(len(g) > 1 for g in groups), groups  # split, and still batched


def test_transformers_mixed_lengths_equal_single_requests(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf)
    before = model.handle.stats["batches"]
    groups = _equal_to_singles(model, _tiny_mixed())
    assert len(groups) > 1 and any(len(g) > 1 for g in groups), groups
    assert model.handle.stats["batches"] > before


@pytest.mark.slow
def test_smollm2_onnx_mixed_lengths_equal_single_requests(smollm2_ort: Path) -> None:
    # The default 'exact' batching decodes each greedy row in a one-row generator. With 'auto' this
    # failed (issue 21): the int4 kernels round differently for several rows and flip near-ties.
    model = load_engine("onnx-cpu", smollm2_ort)
    rows = [notes(n, 24) for n in (0, 2, 8, 23, 48, 102)]
    _equal_to_singles(model, rows)
    assert model.handle.batching == "exact"


@pytest.mark.slow
def test_smollm2_transformers_mixed_lengths_equal_single_requests(smollm2_hf: Path) -> None:
    model = load_engine("transformers", smollm2_hf)
    rows = [notes(n, 16) for n in (0, 1, 2, 23)]
    groups = _equal_to_singles(model, rows)
    assert any(len(g) > 1 for g in groups) and len(groups) > 1, groups


def test_a_probe_that_fails_means_greedy_rows_decode_alone(tiny_ort: Path) -> None:
    handle = load_engine("onnx-cpu", tiny_ort).handle
    handle.close()  # its og.Model is gone: the probe's own generator cannot be built
    assert handle.batches_exactly() is False and handle.invariant is False
    assert handle.groups(_requests([10, 12], [16, 16])) == [[0], [1]]
