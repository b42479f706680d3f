"""The guided-decoding clauses against real backends: onnx-cpu subclasses that break the logits processor protocol.

The backends are subclasses of the real onnx-cpu backend, registered through a throwaway
distribution (a ``*.dist-info`` folder with ``entry_points.txt``) on ``PYTHONPATH``: one faithful,
two that declare ``guided_decoding`` yet do not apply the grammar. The kit checks them in a child
pytest process run by ``pytester``, on the tiny ORT model with a context long enough for tools.
Nothing of flavorkit is mocked. That onnx-cpu and transformers themselves pass these clauses is
shown by ``test_conformance.py``; that a backend without the capability passes ``guided_refused``
(and skips the others) by ``test_kit_catches_broken_backends.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flavorkit.testing import CLAUSES
from flavorkit.types import Capability
from plugin_fixtures import make_distribution

pytest_plugins = ["pytester"]

GUIDED_TOYS = '''
"""onnx-cpu subclasses: a faithful one, and two that break the guided-decoding protocol."""

from flavorkit.sdk import hookimpl
from flavorkit_onnxgenai.plugin import OnnxGenaiBackend


class Faithful(OnnxGenaiBackend):
    """Correct: onnx-cpu itself, under another name and distribution."""


class IgnoresGrammar(OnnxGenaiBackend):
    """Broken: declares guided_decoding and gives the guidance tokenizer, but decodes without the logits processors."""

    @hookimpl
    def generate(self, handle, requests):
        for request in requests:
            request.logits_processor = None
        return super().generate(handle, requests)


class Deaf:
    """A logits processor that masks but is never told the picked token."""

    def __init__(self, inner):
        self.inner = inner

    def process(self, logits):
        self.inner.process(logits)

    def accept(self, token):
        pass


class NeverAccepts(OnnxGenaiBackend):
    """Broken: masks each step's logits, but never calls accept, so every grammar stays at its start."""

    @hookimpl
    def generate(self, handle, requests):
        for request in requests:
            if request.logits_processor is not None:
                request.logits_processor = Deaf(request.logits_processor)
        return super().generate(handle, requests)


faithful = Faithful("cpu")
ignores_grammar = IgnoresGrammar("cpu")
never_accepts = NeverAccepts("cpu")
'''

SUITES = """
import pytest

from flavorkit.testing import BackendConformance

MODEL = {model!r}


class GuidedSuite(BackendConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls):
        return MODEL


class TestFaithful(GuidedSuite):
    backend = "onnx-faithful"


class TestIgnoresGrammar(GuidedSuite):
    backend = "onnx-ignores-grammar"


class TestNeverAccepts(GuidedSuite):
    backend = "onnx-never-accepts"
"""

GUIDED = [name for name, c in CLAUSES.items() if Capability.GUIDED_DECODING in (c.capability, c.without)]
#: What a backend that declares guided_decoding but does not apply the grammar fails: every clause
#: that generates under a grammar. Its tokenizer is the real one, and guided_refused is not for it.
BROKEN = {"guided_logits_processor", "guided_json_schema", "guided_mixed_batch", "guided_tool_choice"}


@pytest.fixture(scope="module")
def guided_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the onnx-cpu subclasses' distribution."""
    backends = {
        "onnx-faithful": "toyguided:faithful",
        "onnx-ignores-grammar": "toyguided:ignores_grammar",
        "onnx-never-accepts": "toyguided:never_accepts",
    }
    return make_distribution(
        tmp_path_factory.mktemp("site") / "guided", "toyguided", {"toyguided": GUIDED_TOYS}, backends
    )


_RUN: dict[str, Any] = {}


@pytest.fixture
def report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, guided_site: Path, tiny_ort_long: Path
) -> dict[str, Any]:
    """The JSON report of the guided clauses run over the three subclasses (run once, shared)."""
    if not _RUN:
        pytester.makepyfile(test_onnx_subclasses=SUITES.format(model=str(tiny_ort_long)))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guided_site), os.environ.get("PYTHONPATH", "")]))
        path = pytester.path / "report.json"
        result = pytester.runpytest_subprocess(
            "-p", "flavorkit.testing.plugin", f"--flavorkit-report={path}", "-p", "no:cacheprovider", "-k", "guided"
        )
        _RUN.update(json.loads(path.read_text()), _stdout=result.stdout.str(), _ret=int(result.ret))
    return _RUN


def outcomes(report: dict[str, Any], suite: str) -> dict[str, tuple[str, str]]:
    """clause -> (outcome, message) for one suite of the report."""
    return {c["clause"]: (c["outcome"], c["message"]) for c in report["clauses"] if c["suite"] == suite}


def test_a_faithful_subclass_passes_every_guided_clause(report: dict[str, Any]) -> None:
    got = outcomes(report, "TestFaithful")
    assert set(got) == set(GUIDED)
    for name, (outcome, message) in got.items():
        assert outcome == ("skipped" if name == "guided_refused" else "passed"), f"{name}: {outcome}: {message}"
    assert got["guided_refused"][1] == (
        "backend 'onnx-faithful' declares capability 'guided_decoding'; this clause checks backends without it"
    )


@pytest.mark.parametrize("suite", ["TestIgnoresGrammar", "TestNeverAccepts"])
def test_a_backend_that_does_not_apply_the_grammar_fails_the_validity_clauses(
    report: dict[str, Any], suite: str
) -> None:
    got = outcomes(report, suite)
    failed = {name for name, (outcome, _) in got.items() if outcome == "failed"}
    assert failed == BROKEN, {n: got[n] for n in failed ^ BROKEN}
    assert got["guided_tokenizer"][0] == "passed"
    assert got["guided_refused"][0] == "skipped"
    assert report["_ret"] == 1


def test_failure_messages_say_which_part_of_the_protocol_is_missing(report: dict[str, Any]) -> None:
    ignored = outcomes(report, "TestIgnoresGrammar")
    processor = ignored["guided_logits_processor"][1]
    assert processor.startswith("a greedy request alone: the request's logits processor was never called")
    assert "calls request.logits_processor.process(logits) on each step's logits" in processor
    schema = ignored["guided_json_schema"][1]
    assert "the answer to the nested object schema" in schema or "none of the 12 answers ended by itself" in schema
    deaf = outcomes(report, "TestNeverAccepts")
    calls = deaf["guided_logits_processor"][1]
    assert "the processor's calls were ['process', 'process'," in calls
    assert "call process once before each token is picked and accept once after" in calls
    # Its grammars never leave their start, so no answer can end: the kit says why that is a failure.
    assert deaf["guided_json_schema"][1].startswith("none of the 12 answers ended by itself within max_tokens=")
    assert "the grammar leaves only the end-of-sequence token" in deaf["guided_tool_choice"][1]
