"""Continuous batching in the Hugging Face engine: EngineSession on the tiny fixture model, both backends.

Every test decodes for real (transformers and optimum-onnx on the tiny Llama, random weights, so
texts are gibberish but every path is real). Output equality is always against the same request
decoded alone by ``generate``, delta by delta (text, token count, finish reason). Sharing of
forward passes is read from the engine's counters (``stats["forward"]`` and ``stats["rows"]``).
"""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flavorkit.runtime.cost import CostModel
from flavorkit.runtime.loaded import LoadedModel
from flavorkit.types import Delta, GenerationRequest, GenerationSession
from helpers import PROMPTS, load_engine
from stacks import optimum_param

Trace = list[tuple[str, int, str | None]]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_hf: Path) -> Path:
    """The tiny checkpoint exported by Optimum (cached by content in the flavorkit cache)."""
    from flavorkit_hf.export import export_checkpoint

    return export_checkpoint(tiny_hf)


@pytest.fixture(scope="module", params=["transformers", optimum_param()])
def engine(request: pytest.FixtureRequest, tiny_hf: Path) -> Iterator[LoadedModel]:
    """A loaded engine of each backend (shared by a module: tests read counter differences only)."""
    folder = tiny_hf if request.param == "transformers" else request.getfixturevalue("tiny_onnx")
    model = load_engine(request.param, folder)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tf(tiny_hf: Path) -> Iterator[LoadedModel]:
    model = load_engine("transformers", tiny_hf)
    yield model
    model.close()


def prompts(model: LoadedModel) -> list[list[int]]:
    return [model.backend.encode(model.handle, [{"role": "user", "content": p}]) for p in PROMPTS]


def alone(model: LoadedModel, request: GenerationRequest) -> Trace:
    """The deltas of ``request`` decoded by itself through ``generate``."""
    fresh = dataclasses.replace(request, cancelled=False)
    return [(d.text, d.tokens, d.finish_reason) for d in model.backend.generate(model.handle, [fresh])]


@dataclass
class Run:
    """What a session produced: deltas per id, the step of each id's first delta, counters per step."""

    traces: dict[int, Trace] = field(default_factory=dict)
    first_step: dict[int, int] = field(default_factory=dict)
    forwards: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    live: list[int] = field(default_factory=list)
    steps: int = 0

    def record(self, step: int, deltas: list[Delta]) -> None:
        for d in deltas:
            self.traces.setdefault(d.index, []).append((d.text, d.tokens, d.finish_reason))
            self.first_step.setdefault(d.index, step)


def drive(
    model: LoadedModel,
    session: Any,
    schedule: dict[int, list[GenerationRequest]],
    ids: dict[int, list[int]] | None = None,
    limit: int = 200,
) -> Run:
    """Step ``session`` until it returns ``[]``, adding ``schedule[k]`` just before step ``k``."""
    stats = model.handle.stats
    run = Run()
    for step in range(limit):
        if step in schedule:
            added = session.add(schedule[step])
            if ids is not None:
                ids[step] = added
        forward, rows = stats["forward"], stats["rows"]
        deltas = session.step()
        run.forwards.append(stats["forward"] - forward)
        run.rows.append(stats["rows"] - rows)
        run.live.append(session.live)
        if not deltas and not any(k > step for k in schedule):
            run.steps = step
            return run
        run.record(step, deltas)
    raise AssertionError(f"the session still had live rows after {limit} steps")


def greedy(ids: list[int], max_tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt_ids=ids, max_tokens=max_tokens)


# -- joining mid-flight ------------------------------------------------------------------------------


def test_requests_joining_mid_flight_share_forward_passes_and_equal_single_requests(engine: LoadedModel) -> None:
    p = prompts(engine)
    first, second, third = greedy(p[0], 20), [greedy(p[1], 12), greedy(p[2], 16)], [greedy(p[3], 9), greedy(p[4], 14)]
    ids: dict[int, list[int]] = {}
    session = engine.backend.generate_session(engine.handle)
    assert session is not None
    merges = engine.handle.stats["merges"]
    run = drive(engine, session, {0: [first], 3: second, 6: third}, ids)

    assert ids == {0: [0], 3: [1, 2], 6: [3, 4]}
    # Each joining request gets its first token in the very step after it was added.
    assert run.first_step == {0: 0, 1: 3, 2: 3, 3: 6, 4: 6}
    # Greedy outputs equal single requests delta for delta (text increments, counts, finish reasons).
    for request, i in zip([first, *second, *third], range(5), strict=True):
        assert run.traces[i] == alone(engine, request)
        assert sum(tokens for _, tokens, _ in run.traces[i]) == request.max_tokens
        assert run.traces[i][-1][2] == "length"
    # Forward passes per step: the prefill of the joiners (prefilled together, one pass) next to the
    # running batch; afterwards ONE pass computes every live row.
    assert run.forwards[:9] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert run.rows[:9] == [1, 1, 1, 3, 3, 3, 5, 5, 5]
    assert engine.handle.stats["merges"] - merges == 2
    # Rows leave as they finish: requests 1 (12 tokens from step 3) and 3 (9 from step 6) end at step 14,
    # request 2 at step 18, requests 0 and 4 at step 19.
    assert run.live[13:] == [5, 3, 3, 3, 3, 2, 0, 0]
    assert run.steps == 20 and run.forwards[20] == 0 and run.live[20] == 0


def test_step_is_empty_when_idle(engine: LoadedModel) -> None:
    session = engine.handle.session()
    forward = engine.handle.stats["forward"]
    assert session.step() == []
    assert engine.handle.stats["forward"] == forward
    assert session.add([greedy(prompts(engine)[1], 2)]) == [0]
    assert [d.tokens for d in session.step()] == [1]
    assert [(d.tokens, d.finish_reason) for d in session.step()] == [(1, "length")]
    assert session.step() == []
    assert session.add([greedy(prompts(engine)[1], 0)]) == [1]  # ids stay unique after an idle step
    assert session.step() == [Delta(1, "", 0, "length")]
    assert session.step() == []


def test_ids_are_unique_across_adds(tf: LoadedModel) -> None:
    session = tf.handle.session()
    p = prompts(tf)
    got = [session.add([greedy(p[0], 3)]), session.add([]), session.add([greedy(p[1], 3), greedy(p[2], 3)])]
    session.step()
    got.append(session.add([greedy(p[3], 3)]))
    assert got == [[0], [], [1, 2], [3]]
    session.close()


# -- leaving: finish, cancellation, capacity ---------------------------------------------------------


def test_cancelled_row_leaves_the_batch_and_gets_no_more_deltas(engine: LoadedModel) -> None:
    p = prompts(engine)
    requests = [greedy(p[0], 12), greedy(p[1], 12), greedy(p[2], 12)]
    session = engine.handle.session()
    session.add(requests)
    stats = engine.handle.stats
    seen: dict[int, int] = {0: 0, 1: 0, 2: 0}
    rows_per_step = []
    for step in range(40):
        rows = stats["rows"]
        deltas = session.step()
        rows_per_step.append(stats["rows"] - rows)
        if not deltas:
            break
        for d in deltas:
            seen[d.index] += d.tokens
        if step == 3:
            requests[1].cancelled = True
    assert seen == {0: 12, 1: 4, 2: 12}  # nothing after the cancellation
    # 3 rows per step (one prefill pass, then one decoding pass), 2 once the cancelled row left.
    assert rows_per_step == [3, 3, 3, 3, *[2] * 8, 0]
    # The rows that stayed are unaffected.
    assert session.live == 0


def test_cancelled_waiting_request_never_starts(tf: LoadedModel) -> None:
    p = prompts(tf)
    session = tf.handle.session()
    waiting = greedy(p[1], 5)
    session.add([greedy(p[0], 3), waiting])
    waiting.cancelled = True
    run = drive(tf, session, {})
    assert set(run.traces) == {0}
    assert run.rows == [1, 1, 1, 0]


def test_max_batch_size_caps_live_rows_and_waiting_requests_join_when_rows_free(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf, max_batch_size=2)
    p = prompts(model)
    requests = [greedy(p[0], 3), greedy(p[1], 5), greedy(p[2], 4), greedy(p[3], 6)]
    session = model.handle.session()
    session.add(requests)
    assert (session.live, session.waiting) == (0, 4)
    run = drive(model, session, {})
    assert max(run.live) == 2
    # Request 2 takes the row request 0 frees at step 2 (its 3rd token); request 3 the row of request 1.
    assert run.first_step == {0: 0, 1: 0, 2: 2, 3: 4}
    assert run.live == [2, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0]
    for i, request in enumerate(requests):
        assert run.traces[i] == alone(model, request)
    model.close()


def test_rows_leaving_cut_the_padding_nobody_needs(tf: LoadedModel) -> None:
    p = prompts(tf)
    long, short = max(p, key=len), min(p, key=len)
    session = tf.handle.session()
    session.add([greedy(long, 2), greedy(short, 6)])
    session.step()
    assert session.cohorts == [(2, len(long))]  # prefilled together, padded to the long prompt
    session.step()  # the long request ends here
    assert session.cohorts == [(1, len(short) + 1)]  # its padding went with it
    assert sum(d.tokens for _ in range(4) for d in session.step()) == 4


# -- exactness ---------------------------------------------------------------------------------------


def test_merged_rows_compute_the_single_request_logits(tf: LoadedModel) -> None:
    # The tiny model's random weights make greedy choices nearly insensitive to attention, so the
    # merge (masked left padding, positions) is checked on the logits themselves, read with a torch
    # forward hook on the real model. Row order after a merge: the running cohort's rows first.
    p = prompts(tf)
    seen: list[Any] = []
    hook = tf.handle.model.register_forward_hook(lambda module, args, out: seen.append(out.logits[:, -1].clone()))
    try:
        singles = []
        for prompt, n in ((p[0], 12), (p[3], 8)):
            seen.clear()
            alone(tf, greedy(prompt, n))
            singles.append([logits[0] for logits in seen])
        seen.clear()
        drive(tf, tf.handle.session(), {0: [greedy(p[0], 12)], 3: [greedy(p[3], 8)]})
    finally:
        hook.remove()
    # Passes: 3 of the first request alone, then its step and the joiner's prefill, then 7 merged.
    assert [len(logits) for logits in seen] == [1, 1, 1, 1, 1, *[2] * 7, 1]
    first, joiner = singles
    for k, merged in enumerate(seen[5:12]):
        assert float((merged[0] - first[4 + k]).abs().max()) < 1e-4
        assert float((merged[1] - joiner[1 + k]).abs().max()) < 1e-4
    assert all(bool((seen[k][0] == first[k]).all()) for k in range(4))  # alone, it is the very same computation


def test_row_leaving_at_a_near_tie_is_replayed_and_continues_alone(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf)
    handle = model.handle
    # Private knob, on purpose: a near tie cannot be produced on demand with random weights. Every
    # row of a batch "ties" at its 4th token, so it leaves with 3 tokens to replay.
    handle._near_tie = lambda row, logits: len(row.generated) == 3
    p = prompts(model)
    requests = [greedy(p[0], 10), greedy(p[1], 10), greedy(p[2], 8)]
    run = drive(model, handle.session(), {0: requests[:2], 1: requests[2:]})
    for i, request in enumerate(requests):
        assert run.traces[i] == alone(model, request)
    assert handle.stats["replays"] == 3 and handle.stats["replay_mismatch"] == 0
    # Nobody waits for a replayed row to finish: every step gives every live row its token. At step 3
    # rows 0 and 1 replay (prompt + 3 tokens each: 8 passes) beside the shared pass; at step 4 row 2
    # replays beside its last shared pass and the two replayed rows' own passes.
    assert [len(run.traces[i]) for i in range(3)] == [10, 10, 8]
    assert run.forwards[3] == 1 + 2 * 4 and run.forwards[4] == 1 + 4 + 2
    # From then on each replayed row is a cohort of its own, never merged again.
    assert run.forwards[5] == 3 and run.rows[5] == 3


def test_cohorts_the_cost_model_keeps_apart_step_together(tiny_hf: Path) -> None:
    model = load_engine("transformers", tiny_hf)
    # An engine whose attention is so costly that padding a short row to a long one never pays.
    model.handle.cost = CostModel(prompt_token=1.0, prompt_attention=0.0, step=1.0, row_step=0.0, context=1.0)
    p = prompts(model)
    long, short = max(p, key=len), min(p, key=len)
    requests = [greedy(long, 8), greedy(short, 8)]
    run = drive(model, model.handle.session(), {0: requests[:1], 2: requests[1:]})
    assert run.forwards[:6] == [1, 1, 2, 2, 2, 2]  # two cohorts, each advanced once per step
    assert run.first_step == {0: 0, 1: 2}
    for i, request in enumerate(requests):
        assert run.traces[i] == alone(model, request)
    model.close()


def test_merge_decision_with_the_shipped_coefficients() -> None:
    from flavorkit_hf.engine import CPU_COST, GPU_COST
    from flavorkit_hf.session import merge_saving

    # CPU: a pass shares ~59 ms, each padded position costs a row 0.0168 ms.
    assert merge_saving(CPU_COST, (1, 50), (1, 2000)) > 0
    assert merge_saving(CPU_COST, (4, 50), (1, 1000)) < 0
    assert merge_saving(CPU_COST, (7, 50), (1, 4000)) < 0
    assert merge_saving(CPU_COST, (7, 300), (1, 400)) > 0
    # GPU: only passes count, so cohorts always merge.
    assert merge_saving(GPU_COST, (7, 50), (1, 4000)) == 1.0


def test_seeded_sampling_reproduces_whatever_the_partners(engine: LoadedModel) -> None:
    p = prompts(engine)

    def sampled(seed: int) -> GenerationRequest:
        return GenerationRequest(prompt_ids=p[2], max_tokens=12, temperature=1.3, top_p=0.95, top_k=40, seed=seed)

    solo = drive(engine, engine.handle.session(), {0: [sampled(7)]})
    crowd = drive(engine, engine.handle.session(), {0: [greedy(p[0], 15), greedy(p[1], 6)], 2: [sampled(7)]})
    assert crowd.traces[2] == solo.traces[0] == alone(engine, sampled(7))
    other = drive(engine, engine.handle.session(), {0: [sampled(8)]})
    assert other.traces[0] != solo.traces[0]


def test_end_of_sequence_finishes_a_row_with_stop(tf: LoadedModel) -> None:
    handle = tf.handle
    p = prompts(tf)
    ids = handle.token_ids(greedy(p[1], 10))
    end = next(k for k in range(3, len(ids)) if ids[k] not in ids[:k])
    saved = handle.eos_ids
    # Make a token of prompt 1's answer an end-of-sequence token (a public attribute of the engine).
    handle.eos_ids = frozenset({ids[end]})
    try:
        request = greedy(p[1], 10)
        run = drive(tf, handle.session(), {0: [greedy(p[0], 10)], 1: [request]})
        assert run.traces[1] == alone(tf, request)
        assert run.traces[1][-1] == ("", 1, "stop")
        assert sum(t for _, t, _ in run.traces[1]) == end + 1
    finally:
        handle.eos_ids = saved


# -- modes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["transformers", optimum_param()])
def test_sequential_mode_decodes_one_request_at_a_time(backend: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue("tiny_hf" if backend == "transformers" else "tiny_onnx")
    sequential = load_engine(backend, folder, batching="sequential")
    try:
        session = sequential.backend.generate_session(sequential.handle)
        assert isinstance(session, GenerationSession)
        p = prompts(sequential)
        requests = [greedy(p[0], 5), greedy(p[1], 4)]
        run = drive(sequential, session, {0: requests})
        assert set(run.live) == {1, 0}, "never more than one live row"
        # the second takes the row the first frees, in the step where the first finishes
        assert run.first_step == {0: 0, 1: 4}
        for i, req in enumerate(requests):
            assert run.traces[i] == alone(sequential, req)
    finally:
        sequential.close()


def test_modes_that_do_not_batch(tiny_hf: Path) -> None:
    half = load_engine("transformers", tiny_hf, torch_dtype="bfloat16")
    p = prompts(half)
    requests = [greedy(p[0], 6), greedy(p[1], 6)]
    session = half.backend.generate_session(half.handle)
    assert session is not None
    run = drive(half, session, {0: requests[:1], 1: requests[1:]})
    # 16-bit drift cannot be bounded: "exact" never merges, each row keeps its own single-request pass.
    assert run.forwards[:6] == [1, 2, 2, 2, 2, 2] and run.rows[:6] == run.forwards[:6]
    assert half.handle.stats["merges"] == 0
    for i, request in enumerate(requests):
        assert run.traces[i] == alone(half, request)
    half.close()


# -- lifecycle ---------------------------------------------------------------------------------------


def test_close_frees_the_caches_and_ends_the_session(tf: LoadedModel) -> None:
    p = prompts(tf)
    session = tf.handle.session()
    session.add([greedy(p[0], 30), greedy(p[1], 30)])
    session.step()
    session.add([greedy(p[2], 30)])
    # Private attribute, on purpose: the only way to watch the KV cache memory being released.
    cache = weakref.ref(session._cohorts[0].past)
    assert cache() is not None
    session.close()
    gc.collect()
    assert cache() is None
    assert (session.live, session.waiting, session.step()) == (0, 0, [])
    with pytest.raises(RuntimeError, match="closed"):
        session.add([greedy(p[0], 3)])


def test_generate_session_through_the_registry(engine: LoadedModel) -> None:
    from flavorkit.backend.registry import get_backend

    backend = get_backend(engine.backend.name)
    session = backend.generate_session(engine.handle)
    assert isinstance(session, GenerationSession)
    session.close()


@pytest.mark.slow
def test_smollm2_late_joiners_equal_single_requests(smollm2_hf: Path) -> None:
    """On a real checkpoint greedy text depends on every attended position: a wrong merge shows."""
    model = load_engine("transformers", smollm2_hf)
    texts = [
        "Write a short poem about a quiet harbour town at dawn.",
        "Explain in three sentences why the sky is blue.",
        "List five uses of a paperclip.",
        "Summarise: packaging a model means writing down everything needed to run it again, "
        "the weights, the tokenizer, the runtime and its exact versions.",
    ]
    p = [model.backend.encode(model.handle, [{"role": "user", "content": t}]) for t in texts]
    requests = [greedy(p[0], 32), greedy(p[1], 24), greedy(p[2], 24), greedy(p[3], 20)]
    run = drive(model, model.handle.session(), {0: requests[:1], 5: requests[1:3], 11: requests[3:]})
    assert run.first_step == {0: 0, 1: 5, 2: 5, 3: 11}
    for i, request in enumerate(requests):
        assert run.traces[i] == alone(model, request)
    assert run.forwards[12:20] == [1] * 8  # every live row in one pass
    assert model.handle.stats["replay_mismatch"] == 0
    model.close()


# -- structure ---------------------------------------------------------------------------------------


def test_shared_decoding_has_no_import_circle_and_no_private_imports() -> None:
    """decoding.py is shared by engine and session: it imports neither, and the session not the engine."""
    import ast

    import flavorkit_hf

    folder = Path(flavorkit_hf.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flavorkit_hf"):
                found.add(node.module)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private names {private} from {node.module}"
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("flavorkit_hf")}
        imports[path.stem] = found
    assert not imports["decoding"] & {"flavorkit_hf.engine", "flavorkit_hf.session"}
    assert "flavorkit_hf.engine" not in imports["session"]
    assert {"flavorkit_hf.decoding"} <= imports["engine"] & imports["session"]
