"""Self-tests of the conformance kit: deliberately broken toy backends fail exactly the clause they break.

The toy backends are real pure-Python backends (a deterministic character-level "model"),
registered through a throwaway distribution (a ``*.dist-info`` folder with ``entry_points.txt``) on
``PYTHONPATH``, and checked by the kit in a child pytest process run by ``pytester``. Nothing of
flavorkit is mocked.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from flavorkit.testing import CLAUSES, BackendConformance
from flavorkit.testing.report import REPORT_FORMAT, REPORT_VERSION
from flavorkit.types import Capability
from plugin_fixtures import make_distribution

pytest_plugins = ["pytester"]

TOYKIT = r'''
"""Toy backends: a deterministic character-level model; each broken variant breaks one promise."""

import atexit
import json
import math
import os
import random
import threading
import zlib
from pathlib import Path

from flavorkit import Artifacts, Capability, Delta, RuntimeInfo, hookimpl

ALPHABET = "abcdefghijklmnopqrstuvwxyz ,."
EOS = 0  # token 0 ends a sequence; every other token id is a Unicode code point


class Handle:
    def __init__(self, folder):
        config = json.loads((folder / "toy.json").read_text())
        self.context_length = int(config["context_length"])
        self.name = config["name"]
        tokenizer = folder / "tokenizer_config.json"  # declares the special tokens, as in a real model folder
        self.eos_text = json.loads(tokenizer.read_text())["eos_token"] if tokenizer.exists() else ""


def scores(context, shift=0):
    """Pseudo-logits over ALPHABET, a pure function of the last tokens and the position (moved by shift)."""
    seed = zlib.crc32(",".join(map(str, context[-6:])).encode()) ^ (len(context) + shift)
    rng = random.Random(seed)
    return [rng.random() for _ in ALPHABET]


def next_token(context, produced, request, rng, shift=0, drift=0.0):
    logits = scores(context, shift)
    if produced >= 20 and logits[0] > 0.85:
        return EOS
    if drift:  # other rounding: every score moves by at most `drift`, which reorders near ties only
        logits = [x + drift * math.sin(len(context) * 7.0 + i) for i, x in enumerate(logits)]
    order = sorted(range(len(ALPHABET)), key=lambda i: -logits[i])
    if request.temperature == 0.0:
        return ord(ALPHABET[order[0]])
    keep = order[: request.top_k] if request.top_k else order
    weights = [math.exp(logits[i] * 4 / request.temperature) for i in keep]
    total = sum(weights)
    cut, mass = [], 0.0
    for i, w in zip(keep, weights):
        cut.append((i, w))
        mass += w / total
        if mass >= request.top_p:
            break
    pick = rng.choices([i for i, _ in cut], weights=[w for _, w in cut])[0]
    return ord(ALPHABET[pick])


class ToyBackend:
    """Correct: streams, batches (round robin), samples, honours seeds; its streams are independent."""

    @hookimpl
    def dependencies(self):
        return []

    @hookimpl
    def capabilities(self):
        return [
            Capability.STREAMING,
            Capability.BATCHING,
            Capability.SAMPLING,
            Capability.SEEDED_SAMPLING,
            Capability.CONTINUOUS_BATCHING,
            Capability.BATCH_INVARIANT,
        ]

    @hookimpl
    def artifacts(self, source, options, workdir):
        config = json.loads((Path(source) / "toy.json").read_text())
        return Artifacts(files={"weights": str(source)}, requirements=[], metadata={"name": config["name"]})

    @hookimpl
    def load(self, artifacts, options):
        return Handle(Path(artifacts["weights"]))

    @hookimpl
    def describe(self, handle):
        return RuntimeInfo(context_length=handle.context_length, model_name=handle.name)

    @hookimpl
    def encode(self, handle, messages):
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        return [ord(c) for c in text]

    @hookimpl
    def encode_text(self, handle, text):
        return [ord(c) for c in text]

    @hookimpl
    def generate(self, handle, requests):
        return self.decode(handle, requests)

    # -- the model; broken variants override one piece ------------------------------------------

    def limit(self, request, handle):
        return min(request.max_tokens, handle.context_length - len(request.prompt_ids))

    def delta(self, index, text, so_far, finish):
        return Delta(index, text, 1, finish)

    def rng(self, request):
        return random.Random(request.seed) if request.seed is not None else random.Random()

    def stop_text(self, handle):
        return ""

    def shifts(self, requests):
        return [0] * len(requests)

    def drifts(self, requests):
        return [0.0] * len(requests)

    def decode(self, handle, requests):
        contexts = [list(r.prompt_ids) for r in requests]
        texts = [""] * len(requests)
        rngs = [self.rng(r) for r in requests]
        shifts = self.shifts(requests)
        drifts = self.drifts(requests)
        live = list(range(len(requests)))
        while live:
            for i in list(live):
                request = requests[i]
                if request.cancelled:
                    live.remove(i)
                    continue
                produced = len(contexts[i]) - len(request.prompt_ids)
                token = next_token(contexts[i], produced, request, rngs[i], shifts[i], drifts[i])
                if token == EOS:
                    live.remove(i)
                    yield Delta(i, self.stop_text(handle), 1, "stop")
                    continue
                contexts[i].append(token)
                texts[i] += chr(token)
                finish = "length" if produced + 1 >= self.limit(request, handle) else None
                if finish:
                    live.remove(i)
                yield self.delta(i, chr(token), texts[i], finish)


class MinimalBackend:
    """Correct and minimal: only the required hooks (so: streaming, greedy, no declared batching)."""

    _toy = ToyBackend()

    @hookimpl
    def dependencies(self):
        return []

    @hookimpl
    def artifacts(self, source, options, workdir):
        return self._toy.artifacts(source, options, workdir)

    @hookimpl
    def load(self, artifacts, options):
        return self._toy.load(artifacts, options)

    @hookimpl
    def describe(self, handle):
        return self._toy.describe(handle)

    @hookimpl
    def encode(self, handle, messages):
        return self._toy.encode(handle, messages)

    @hookimpl
    def encode_text(self, handle, text):
        return self._toy.encode_text(handle, text)

    @hookimpl
    def generate(self, handle, requests):
        for i, request in enumerate(requests):
            for d in self._toy.decode(handle, [request]):
                yield Delta(i, d.text, d.tokens, d.finish_reason)


class IgnoresMaxTokens(ToyBackend):
    """Broken: decodes up to the context (capped at 48 tokens), whatever max_tokens says."""

    def limit(self, request, handle):
        return min(48, handle.context_length - len(request.prompt_ids))


class EchoesInFinalDelta(ToyBackend):
    """Broken: the last delta repeats the whole answer instead of only the new text."""

    def delta(self, index, text, so_far, finish):
        return Delta(index, so_far if finish else text, 1, finish)


class MisreportsUsage(ToyBackend):
    """Broken: counts no tokens until the last delta, which claims one."""

    def delta(self, index, text, so_far, finish):
        return Delta(index, text, 1 if finish else 0, finish)


class FixedSeed(ToyBackend):
    """Broken: every seeded request uses one fixed seed, whatever its own is."""

    def rng(self, request):
        return random.Random(1234) if request.seed is not None else random.Random()


class SharedBatchRng(ToyBackend):
    """Broken: one random generator per generate call, seeded from its first request and shared by the batch."""

    def decode(self, handle, requests):
        first = requests[0].seed if requests else None
        self.shared = random.Random(first) if first is not None else random.Random()
        yield from super().decode(handle, requests)

    def rng(self, request):
        return self.shared


class DirtyAfterClose(ToyBackend):
    """Broken: a stream closed while a request still decodes leaves state that shifts the next call's answers."""

    def decode(self, handle, requests):
        self.shift, handle.leftover = getattr(handle, "leftover", 0), 0
        ended = set()
        try:
            for d in super().decode(handle, requests):
                if d.finish_reason:
                    ended.add(d.index)
                yield d
        finally:  # the cleanup a correct backend does here is missing: it leaves state for the next call
            if any(i not in ended and not r.cancelled for i, r in enumerate(requests)):
                handle.leftover = 1

    def shifts(self, requests):
        return [self.shift] * len(requests)


class ThreadBound(ToyBackend):
    """Broken: works only on the thread that loaded the model, like a runtime with thread-local state."""

    @hookimpl
    def load(self, artifacts, options):
        handle = super().load(artifacts, options)
        handle.thread = threading.get_ident()
        return handle

    def decode(self, handle, requests):
        if threading.get_ident() != handle.thread:
            raise RuntimeError("this model was loaded on another thread")
        yield from super().decode(handle, requests)


class SpecialTokenAsText(ToyBackend):
    """Broken: decodes the end-of-sequence token as text, so every answer that ends by itself ends in it."""

    def stop_text(self, handle):
        return handle.eos_text


class PadsToBucket(ToyBackend):
    """Broken: pads a batch to the 128-token bucket of its longest prompt, and the padding leaks into answers."""

    def shifts(self, requests):
        top = max(-(-len(r.prompt_ids) // 128) * 128 for r in requests)
        return [top - len(r.prompt_ids) for r in requests]


class DriftsInBatches(ToyBackend):
    """Broken: declares batch_invariant, but with 4 rows or more its kernel rounds long prompts' scores differently.

    A real runtime does this when a matmul takes another path for several rows. Here the scores
    (uniform in [0, 1]) move by at most 0.01, which reorders only the two best when they nearly tie
    (about one step in three). Short prompts and batches of up to 3 rows (what batch_matches_single
    and cancellation try) decode exactly as alone.
    """

    def drifts(self, requests):
        return [0.01 if len(requests) >= 4 and len(r.prompt_ids) >= 60 else 0.0 for r in requests]


class CrashesAtExit(ToyBackend):
    """Broken: once a model is loaded, the interpreter aborts at exit (status 134), like a runtime's destructor."""

    @hookimpl
    def load(self, artifacts, options):
        atexit.register(os.abort)
        return super().load(artifacts, options)


class DropsSystem(ToyBackend):
    """Broken: the chat template leaves out system messages."""

    @hookimpl
    def encode(self, handle, messages):
        return super().encode(handle, [m for m in messages if m["role"] != "system"])


class TemplatedToy(ToyBackend):
    """Correct: encodes with the model folder's own tokenizer and chat template (a Hugging Face folder)."""

    @hookimpl
    def load(self, artifacts, options):
        from transformers import AutoTokenizer

        handle = super().load(artifacts, options)
        handle.tokenizer = AutoTokenizer.from_pretrained(artifacts["weights"])
        return handle

    def render(self, handle, messages):
        return handle.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    @hookimpl
    def encode(self, handle, messages):
        return handle.tokenizer(self.render(handle, messages), add_special_tokens=False)["input_ids"]

    @hookimpl
    def encode_text(self, handle, text):
        return handle.tokenizer(text)["input_ids"]


class OwnTemplate(TemplatedToy):
    """Broken: keeps every message, but in a prompt format of its own instead of the model's template."""

    def render(self, handle, messages):
        return "".join(f"[{m['role'].upper()}] {m['content']}\n" for m in messages) + "[ASSISTANT] "


good = ToyBackend()
minimal = MinimalBackend()
no_max_tokens = IgnoresMaxTokens()
echo_stream = EchoesInFinalDelta()
bad_usage = MisreportsUsage()
fixed_seed = FixedSeed()
shared_rng = SharedBatchRng()
dirty_after_close = DirtyAfterClose()
thread_bound = ThreadBound()
special_text = SpecialTokenAsText()
pads_to_bucket = PadsToBucket()
drifts_in_batches = DriftsInBatches()
crash_at_exit = CrashesAtExit()
drops_system = DropsSystem()
templated = TemplatedToy()
own_template = OwnTemplate()
'''

TOYKIT_HEAVY = '''
"""Broken: imports torch when the entry point is loaded, although only load() needs a runtime."""

import torch  # noqa: F401

from toykit import ToyBackend

backend = ToyBackend()
'''

TOYKIT_SLOW = '''
"""Broken: the module takes 4 s to import, so every `flavorkit backends` takes 4 s longer."""

import time

from toykit import ToyBackend

time.sleep(4)  # stands in for an eager scan or a heavy import at module level

backend = ToyBackend()
'''

TOYS = {
    "toy-good": "toykit:good",
    "toy-minimal": "toykit:minimal",
    "toy-no-max-tokens": "toykit:no_max_tokens",
    "toy-echo-stream": "toykit:echo_stream",
    "toy-bad-usage": "toykit:bad_usage",
    "toy-fixed-seed": "toykit:fixed_seed",
    "toy-shared-rng": "toykit:shared_rng",
    "toy-dirty-after-close": "toykit:dirty_after_close",
    "toy-thread-bound": "toykit:thread_bound",
    "toy-templated": "toykit:templated",
    "toy-own-template": "toykit:own_template",
    "toy-special-text": "toykit:special_text",
    "toy-pads-to-bucket": "toykit:pads_to_bucket",
    "toy-drops-system": "toykit:drops_system",
    "toy-drifts-in-batches": "toykit:drifts_in_batches",
}

#: The one clause each broken toy must fail (and it must pass every other clause).
BROKEN = {
    "toy-no-max-tokens": "max_tokens",
    "toy-echo-stream": "stream_matches_predict",
    "toy-bad-usage": "usage",
    "toy-fixed-seed": "seeded_sampling",
    "toy-shared-rng": "seeded_sampling",
    "toy-dirty-after-close": "cancellation",
    "toy-thread-bound": "greedy_deterministic",
    "toy-special-text": "special_tokens",
    "toy-pads-to-bucket": "batch_matches_single",
    "toy-drops-system": "chat_template",
    "toy-drifts-in-batches": "batch_invariant",
    "toy-own-template": "chat_template",
    "toy-heavy": "entry_point_light",
    "toy-slow": "entry_point_light",
    "toy-crash-at-exit": "fresh_process",
}

SUITES = """
import pytest

from flavorkit.testing import BackendConformance

MODEL = {model!r}


class ToySuite(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls):
        return MODEL
{classes}
"""

#: Clauses that run only when a capability is declared, and the capabilities of each toy.
GPU_ONLY = {"gpu"}
#: The toys declare no guided decoding: these clauses skip, and guided_refused runs (and passes).
GUIDED_ONLY = {name for name, c in CLAUSES.items() if c.capability is Capability.GUIDED_DECODING}
#: Clauses the toy model cannot pass in full: it has no chat template to render a reference with.
NO_REFERENCE = {"chat_template"}
MINIMAL_SKIPS = {
    "batching_interleaved",
    "batch_invariant",
    "sampling",
    "seeded_sampling",
    "gpu",
    "continuous_batching",
    *GUIDED_ONLY,
}


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy "weights": a folder with the model's config."""
    folder = tmp_path_factory.mktemp("toy-model") / "toy-v1"
    folder.mkdir()
    (folder / "toy.json").write_text(json.dumps({"name": "toy-v1", "context_length": 512}))
    special = {"content": "<|im_end|>", "lstrip": False, "normalized": False, "rstrip": False, "special": True}
    tokenizer = {"eos_token": "<|im_end|>", "added_tokens_decoder": {"0": special}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.fixture(scope="module")
def templated_model(tmp_path_factory: pytest.TempPathFactory, tiny_hf: Path) -> Path:
    """A toy model folder holding a real tokenizer and chat template (the tiny checkpoint's), no weights."""
    folder = tmp_path_factory.mktemp("templated-model") / "toy-templated"
    folder.mkdir()
    for file in tiny_hf.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(file, folder / file.name)
    (folder / "toy.json").write_text(json.dumps({"name": "toy-templated", "context_length": 512}))
    return folder


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the toy backends' distribution."""
    return make_distribution(tmp_path_factory.mktemp("site") / "toys", "toykit", {"toykit": TOYKIT}, TOYS)


@pytest.fixture(scope="module")
def heavy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second distribution with the toys that would slow or break the other runs.

    The torch-importing toy, the slow-importing one (the registry loads every entry point) and the
    one that aborts the interpreter at exit.
    """
    return make_distribution(
        tmp_path_factory.mktemp("site") / "heavy",
        "toykit-heavy",
        {"toykit": TOYKIT, "toykit_heavy": TOYKIT_HEAVY, "toykit_slow": TOYKIT_SLOW},
        {
            "toy-heavy": "toykit_heavy:backend",
            "toy-slow": "toykit_slow:backend",
            "toy-crash-at-exit": "toykit:crash_at_exit",
        },
    )


_RUNS: dict[str, dict[str, Any]] = {}


def run_kit(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    site: Path,
    model: Path,
    classes: Mapping[str, tuple[str, Mapping[str, str]]],
    *extra: str,
) -> dict[str, Any]:
    """Run the kit in a child pytest on the given suites (name -> (backend, expected_failures)), once per key."""
    if key in _RUNS:
        return _RUNS[key]
    body = "".join(
        f"\n\nclass {name}(ToySuite):\n    backend = {backend!r}\n    expected_failures = {dict(xfail)!r}\n"
        for name, (backend, xfail) in classes.items()
    )
    pytester.makepyfile(**{f"test_{key}": SUITES.format(model=str(model), classes=body)})
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    report = pytester.path / "report.json"
    result = pytester.runpytest_subprocess(
        "-p", "flavorkit.testing.plugin", f"--flavorkit-report={report}", "-p", "no:cacheprovider", *extra
    )
    data = json.loads(report.read_text())
    data["_stdout"] = result.stdout.str()
    data["_ret"] = int(result.ret)
    _RUNS[key] = data
    return data


def outcomes(report: Mapping[str, Any], suite: str) -> dict[str, tuple[str, str]]:
    """clause -> (outcome, message) for one suite of a report."""
    return {c["clause"]: (c["outcome"], c["message"]) for c in report["clauses"] if c["suite"] == suite}


TOY_SUITES: dict[str, tuple[str, Mapping[str, str]]] = {
    "TestGood": ("toy-good", {}),
    "TestMinimal": ("toy-minimal", {}),
    "TestNoMaxTokens": ("toy-no-max-tokens", {}),
    "TestEchoStream": ("toy-echo-stream", {}),
    "TestBadUsage": ("toy-bad-usage", {}),
    "TestFixedSeed": ("toy-fixed-seed", {}),
    "TestSharedRng": ("toy-shared-rng", {}),
    "TestDirtyAfterClose": ("toy-dirty-after-close", {}),
    "TestThreadBound": ("toy-thread-bound", {}),
    "TestSpecialText": ("toy-special-text", {}),
    "TestPadsToBucket": ("toy-pads-to-bucket", {}),
    "TestDropsSystem": ("toy-drops-system", {}),
    "TestDriftsInBatches": ("toy-drifts-in-batches", {}),
    "TestKnownBug": ("toy-no-max-tokens", {"max_tokens": "toy bug 1: max_tokens is ignored"}),
    "TestStaleEntry": ("toy-good", {"usage": "toy bug 2, fixed since"}),
}
#: The expected_failures suites run only the clauses they are about.
SELECT = "not (TestKnownBug or TestStaleEntry) or test_max_tokens or test_usage"


@pytest.fixture
def toys(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, toy_site: Path, toy_model: Path) -> dict[str, Any]:
    """The report of the kit run over all pure toy suites (run once, shared)."""
    return run_kit(pytester, monkeypatch, "toys", toy_site, toy_model, TOY_SUITES, "-k", SELECT)


@pytest.fixture
def heavy(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, heavy_site: Path, toy_model: Path
) -> dict[str, Any]:
    """The report of the kit run over the toys of ``heavy_site``."""
    suites = {
        "TestHeavy": ("toy-heavy", {}),
        "TestSlow": ("toy-slow", {}),
        "TestCrashAtExit": ("toy-crash-at-exit", {}),
    }
    return run_kit(pytester, monkeypatch, "heavy", heavy_site, toy_model, suites)


@pytest.fixture
def templated(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, toy_site: Path, templated_model: Path
) -> dict[str, Any]:
    """The report of the kit run over the toys that encode with a real tokenizer and chat template."""
    suites = {"TestTemplated": ("toy-templated", {}), "TestOwnTemplate": ("toy-own-template", {})}
    select = "TestOwnTemplate or test_chat_template or test_usage"
    return run_kit(pytester, monkeypatch, "templated", toy_site, templated_model, suites, "-k", select)


def test_chat_template_compares_with_the_models_own_template(templated: dict[str, Any]) -> None:
    good = outcomes(templated, "TestTemplated")
    assert good == {"chat_template": ("passed", ""), "usage": ("passed", "")}, good
    got = outcomes(templated, "TestOwnTemplate")
    failed = {name for name, (outcome, _) in got.items() if outcome == "failed"}
    assert failed == {BROKEN["toy-own-template"]}, {n: got[n] for n in failed}
    assert all(outcome in ("passed", "skipped") for name, (outcome, _) in got.items() if name not in failed)
    message = got["chat_template"][1]
    assert "differs from the model's own chat template: encode() decodes to '[SYSTEM] You are" in message
    assert "the template renders '<|im_start|>system\\nYou are" in message


def test_correct_backend_passes_every_clause(toys: dict[str, Any]) -> None:
    got = outcomes(toys, "TestGood")
    assert set(got) == set(CLAUSES)
    for name, (outcome, message) in got.items():
        expected = "skipped" if name in GPU_ONLY | GUIDED_ONLY | NO_REFERENCE else "passed"
        assert outcome == expected, f"{name}: {outcome}: {message}"
    assert "does not declare capability 'gpu'" in got["gpu"][1]
    assert got["guided_json_schema"][1] == "backend 'toy-good' does not declare capability 'guided_decoding'"
    assert got["guided_refused"] == ("passed", "")
    # The toy's tokenizer_config.json declares special tokens but no chat template: the kit checks
    # that every message reaches the prompt and says why it could not compare with a reference.
    assert got["chat_template"][1].endswith(
        "every message reaches the prompt, but the model declares no chat template the kit can render "
        "(no tokenizer_config.json with one, no GGUF file)"
    )


def test_minimal_backend_passes_required_clauses_and_skips_the_rest(toys: dict[str, Any]) -> None:
    got = outcomes(toys, "TestMinimal")
    for name, (outcome, message) in got.items():
        if name in NO_REFERENCE:
            assert outcome == "skipped" and "every message reaches the prompt" in message, f"{name}: {message}"
        elif name in MINIMAL_SKIPS:
            assert outcome == "skipped", f"{name}: {outcome}: {message}"
            assert f"does not declare capability '{CLAUSES[name].capability.value}'" in message  # type: ignore[union-attr]
        else:
            assert outcome == "passed", f"{name}: {outcome}: {message}"
    required = [c.name for c in CLAUSES.values() if c.required]
    assert all(got[name][0] == "passed" for name in required if name not in NO_REFERENCE)


@pytest.mark.parametrize(
    ("suite", "backend"),
    [
        ("TestNoMaxTokens", "toy-no-max-tokens"),
        ("TestEchoStream", "toy-echo-stream"),
        ("TestBadUsage", "toy-bad-usage"),
        ("TestFixedSeed", "toy-fixed-seed"),
        ("TestSharedRng", "toy-shared-rng"),
        ("TestDirtyAfterClose", "toy-dirty-after-close"),
        ("TestThreadBound", "toy-thread-bound"),
        ("TestSpecialText", "toy-special-text"),
        ("TestPadsToBucket", "toy-pads-to-bucket"),
        ("TestDropsSystem", "toy-drops-system"),
        ("TestDriftsInBatches", "toy-drifts-in-batches"),
    ],
)
def test_broken_backend_fails_exactly_its_clause(toys: dict[str, Any], suite: str, backend: str) -> None:
    got = outcomes(toys, suite)
    failed = {name for name, (outcome, _) in got.items() if outcome == "failed"}
    # Token counts are also how the core finds a stream's decoding steps: a backend that reports
    # none until the end cannot be joined or cancelled between steps, and the kit says so.
    # Padding that leaks into answers makes them depend on the batch, which batch_invariant checks too.
    also = {"continuous_batching"} if backend == "toy-bad-usage" else set()
    if backend == "toy-pads-to-bucket":
        also = {"batch_invariant"}
    assert failed == {BROKEN[backend]} | also, {n: got[n] for n in failed}
    assert all(outcome in ("passed", "skipped") for name, (outcome, _) in got.items() if name not in failed)
    assert got["gpu"][0] == "skipped"


def test_failure_messages_say_what_broke(toys: dict[str, Any]) -> None:
    assert "max_tokens=1 but generate() yielded" in outcomes(toys, "TestNoMaxTokens")["max_tokens"][1]
    assert "not how the streamed" in outcomes(toys, "TestEchoStream")["stream_matches_predict"][1]
    assert "reported only 1 token" in outcomes(toys, "TestBadUsage")["usage"][1]
    assert "the seed has no effect" in outcomes(toys, "TestFixedSeed")["seeded_sampling"][1]
    shared = outcomes(toys, "TestSharedRng")["seeded_sampling"][1]
    assert "choice 0 of n=2 with seed=99 gave" in shared and "seed each request of a batch from its own" in shared
    dirty = outcomes(toys, "TestDirtyAfterClose")["cancellation"][1]
    assert "after a generate() stream was closed after its first delta" in dirty and "finally block" in dirty
    bound = outcomes(toys, "TestThreadBound")["greedy_deterministic"][1]
    assert "3 threads predicting the same greedy request at once got" in bound
    assert "this model was loaded on another thread" in bound and "keep no per-thread state" in bound
    dropped = outcomes(toys, "TestDropsSystem")["chat_template"][1]
    assert "the chat template drops the system message" in dropped
    padded = outcomes(toys, "TestPadsToBucket")["batch_matches_single"][1]
    assert "padding or prompt length leaks into the answers" in padded
    # The drift shows only in batches of 4 or more: the short-prompt batch clauses pass it, the batch
    # of 2 identical long rows too, and the batch of 4 names the row, the shape and both answers.
    drifts = outcomes(toys, "TestDriftsInBatches")
    assert drifts["batch_matches_single"] == ("passed", "") and drifts["cancellation"] == ("passed", "")
    assert drifts["batch_invariant"] == (
        "failed",
        "request 0 of a batch of 4 through generate() (prompts of [209, 69, 251, 47] tokens, max_tokens "
        "[24, 24, 24, 24]) gives 'u.kqfxxbd zntg,f,vznr' (22 tokens, finish_reason='stop'), alone "
        "'u.kqwsjfjdmrrxatzhuhnod' (24 tokens, finish_reason='stop'): the backend declares 'batch_invariant', "
        "so a greedy answer must not depend on the rest of its batch",
    )
    special = outcomes(toys, "TestSpecialText")["special_tokens"][1]
    assert (
        "special token text in the answer" in special and "'<|im_end|>' (tokenizer_config.json: eos_token)" in special
    )
    stdout = toys["_stdout"]
    assert "flavorkit conformance: toy-bad-usage (TestBadUsage)" in stdout
    assert toys["_ret"] == 1


def test_heavy_import_fails_only_entry_point_light(heavy: dict[str, Any]) -> None:
    got = outcomes(heavy, "TestHeavy")
    failed = {name for name, (outcome, _) in got.items() if outcome == "failed"}
    assert failed == {"entry_point_light"}, {n: got[n] for n in failed}
    message = got["entry_point_light"][1]
    assert "imported torch (from " in message
    assert "toykit_heavy.py:4" in message


@pytest.mark.parametrize(("suite", "backend"), [("TestSlow", "toy-slow"), ("TestCrashAtExit", "toy-crash-at-exit")])
def test_heavy_site_toy_fails_exactly_its_clause(heavy: dict[str, Any], suite: str, backend: str) -> None:
    got = outcomes(heavy, suite)
    failed = {name for name, (outcome, _) in got.items() if outcome == "failed"}
    assert failed == {BROKEN[backend]}, {n: got[n] for n in failed}
    assert all(outcome in ("passed", "skipped") for name, (outcome, _) in got.items() if name not in failed)


def test_slow_entry_point_message_names_the_delay(heavy: dict[str, Any]) -> None:
    message = outcomes(heavy, "TestSlow")["entry_point_light"][1]
    assert re.search(
        r"took \d+\.\d s beyond importing flavorkit itself \(the least of 2 fresh interpreters\), "
        r"over the 2\.0 s budget",
        message,
    ), message


def test_crash_at_exit_message_names_the_status(heavy: dict[str, Any]) -> None:
    message = outcomes(heavy, "TestCrashAtExit")["fresh_process"][1]
    assert "the process exited with status 134 (SIGABRT) after loading the model and predicting" in message


def test_expected_failure_is_a_strict_xfail(toys: dict[str, Any]) -> None:
    known = outcomes(toys, "TestKnownBug")
    assert set(known) == {"max_tokens", "usage"}
    assert known["max_tokens"][0] == "xfailed"
    assert "toy bug 1" in known["max_tokens"][1] and "max_tokens=1 but generate() yielded" in known["max_tokens"][1]
    assert known["usage"][0] == "passed"
    stale = outcomes(toys, "TestStaleEntry")
    assert stale["usage"][0] == "failed"
    assert "expected_failures lists it" in stale["usage"][1] and "toy bug 2" in stale["usage"][1]
    assert stale["max_tokens"][0] == "passed"


def test_report_format(toys: dict[str, Any], toy_model: Path) -> None:
    assert toys["format"] == REPORT_FORMAT and toys["version"] == REPORT_VERSION == 1
    assert toys["ok"] is False
    assert sum(toys["summary"].values()) == len(toys["clauses"])
    keys = {"backend", "clause", "outcome", "required", "capability", "without_capability", "suite", "message"}
    assert all(set(c) == keys | {"duration_s", "test"} for c in toys["clauses"])
    refused = next(c for c in toys["clauses"] if c["suite"] == "TestGood" and c["clause"] == "guided_refused")
    assert (refused["required"], refused["capability"], refused["without_capability"]) == (
        False,
        None,
        "guided_decoding",
    )
    good = next(b for b in toys["backends"] if b["suite"] == "TestGood")
    assert good["name"] == "toy-good" and good["distribution"] == "toykit" and good["object"] == "toykit:good"
    assert good["capabilities"] == [
        "batch_invariant",
        "batching",
        "continuous_batching",
        "sampling",
        "seeded_sampling",
        "streaming",
    ]
    assert good["model"] == str(toy_model)


def test_cli_check_prints_the_table_and_fails(toy_site: Path, toy_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toy_site), os.environ.get("PYTHONPATH", "")])}
    report = tmp_path / "out" / "report.json"
    cmd = [sys.executable, "-m", "flavorkit.cli", "check", "toy-echo-stream", "--model", str(toy_model)]
    proc = subprocess.run([*cmd, "--json", str(report)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.split()[:2] == ["stream_matches_predict", "failed"] for line in lines if line.strip())
    assert any(line.split()[:2] == ["max_tokens", "passed"] for line in lines if line.strip())
    assert any(line.startswith("gpu") and "skipped" in line and "capability 'gpu'" in line for line in lines)
    assert "26 passed, 1 failed, 7 skipped, 0 xfailed" in proc.stdout, proc.stdout
    data = json.loads(report.read_text())
    assert data["format"] == REPORT_FORMAT and data["ok"] is False
    assert [c["clause"] for c in data["clauses"]] == list(CLAUSES)


def test_cli_check_unknown_backend(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "flavorkit.cli", "check", "no-such-backend", "--model", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "unknown backend 'no-such-backend'" in proc.stderr


def test_expected_failures_must_name_known_clauses() -> None:
    with pytest.raises(TypeError, match="unknown clause"):
        type("TestTypo", (BackendConformance,), {"backend": "x", "expected_failures": {"max_token": "typo"}})


def test_kit_is_not_auto_loaded_into_pytest() -> None:
    plugins = [ep.value for ep in md.entry_points(group="pytest11")]
    assert not [p for p in plugins if p.startswith("flavorkit")]


# -- the guide's backend ---------------------------------------------------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md"


def guide_files() -> dict[str, str]:
    """The guide's code blocks whose first line names a file (``# path``), by path."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), flags=re.S | re.M)
    files = {}
    for block in blocks:
        named = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", block.partition("\n")[0])
        if named:
            files[named.group(1)] = block
    return files


@pytest.fixture(scope="module")
def guide_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The guide's reverse backend, installed from its code blocks as a throwaway distribution."""
    import tomllib

    files = guide_files()
    project = tomllib.loads(files["pyproject.toml"])["project"]
    root = tmp_path_factory.mktemp("guide-site")
    package = root / "flavorkit_reverse"
    package.mkdir()
    (package / "__init__.py").write_text(files["src/flavorkit_reverse/__init__.py"])
    return make_distribution(root, project["name"], {}, project["entry-points"]["flavorkit.backends"])


@pytest.fixture(scope="module")
def reverse_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model folder step 4 of the guide creates."""
    line = next(ln for ln in GUIDE.read_text().splitlines() if "> reverse-model/reverse.json" in ln)
    folder = tmp_path_factory.mktemp("guide") / "reverse-model"
    folder.mkdir()
    (folder / "reverse.json").write_text(line.split("'")[1])
    return folder


def test_guide_backend_packages_and_answers_as_shown(guide_site: Path, reverse_model: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import flavorkit, mlflow
        flavorkit.package(model=sys.argv[1], backend="reverse", path=sys.argv[2])
        model = mlflow.pyfunc.load_model(sys.argv[2])
        request = {"messages": [{"role": "user", "content": "Hello world"}], "max_tokens": 5}
        print("RESULT " + json.dumps(model.predict(request)[0]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guide_site), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", script, str(reverse_model), str(tmp_path / "packaged-reverse")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert answer["choices"][0]["message"]["content"] == "dlrow"
    assert answer["choices"][0]["finish_reason"] == "length"
    shown = re.search(r"'usage': (\{.*?\})", GUIDE.read_text())
    assert shown is not None and answer["usage"] == ast.literal_eval(shown.group(1))  # as printed in the guide
    assert answer["model"] == "reverse-model"


def test_guide_backend_passes_flavorkit_check(guide_site: Path, reverse_model: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guide_site), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "flavorkit.cli", "check", "reverse", "--model", str(reverse_model)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    guide = GUIDE.read_text()
    summary = re.search(r"^\d+ passed, 0 failed, \d+ skipped, 0 xfailed$", guide, flags=re.M)
    assert summary is not None and summary.group(0) in proc.stdout
    assert "capabilities: batching, streaming" in proc.stdout


def test_guide_conformance_test_module_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, guide_site: Path
) -> None:
    module = guide_files()["tests/kit/test_conformance.py"]
    pytester.makepyfile(test_conformance=module)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guide_site), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=23, skipped=11)
    result.stdout.fnmatch_lines(["*flavorkit conformance: reverse (TestReverse)*", "23 passed, 0 failed, 11 skipped*"])
