"""The batch_invariant clause on SmolLM2-135M-Instruct, for every first-party backend: a real model's near ties.

The tiny random model of ``test_conformance.py`` runs the clause too, but its logits rarely come
close enough for other rounding to flip a greedy choice. SmolLM2 (int4 on onnx-cpu as the
quickstart converts it, fp32 on transformers, Optimum's ONNX export on the compatible stack) does:
each backend must give every greedy row of batches of 2, 4 and 8, and of a continuous-batching
session that rows join, finish early in and are cancelled from, exactly its answer alone. Only this
clause runs, on each backend's default options (``batching="exact"``), which declare it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flavorkit.demo.smollm2 import ONNX_OPTIONS
from flavorkit.testing.harness import Harness
from flavorkit.testing.mixins import BatchingClauses, ConformanceBase
from flavorkit.types import Capability
from stacks import needs_optimum

pytestmark = pytest.mark.slow


class _Invariance(ConformanceBase):
    """The batch_invariant clause alone, on SmolLM2 packaged in place (no private copy of the source)."""

    isolate_source = False
    test_batch_invariant = BatchingClauses.test_batch_invariant

    def test_declares_batch_invariant(self, conformance: Harness) -> None:
        """The default options (``batching="exact"``) declare the capability, so the clause runs and cannot skip."""
        assert Capability.BATCH_INVARIANT in conformance.capabilities()


class TestOnnxCpu(_Invariance):
    """onnx-cpu, SmolLM2 converted to int4 with the quickstart's options (a cache hit after ``smollm2_ort``)."""

    backend = "onnx-cpu"
    options: ClassVar[dict[str, Any]] = ONNX_OPTIONS

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls, smollm2_hf: Path, smollm2_ort: Path) -> str:
        return str(smollm2_hf)


class TestTransformers(_Invariance):
    """transformers, SmolLM2 in fp32: exact mode replays near-tie rows alone."""

    backend = "transformers"

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _one_torch_thread(cls) -> Iterator[None]:
        """One torch thread, as the engine's cost model was calibrated: on a shared 2-core machine two threads
        spin against the other processes (a decoding step took 1.7 s instead of 55 ms, and this class 7 minutes)."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls, smollm2_hf: Path) -> str:
        return str(smollm2_hf)


@needs_optimum
class TestOptimumOnnx(_Invariance):
    """optimum-onnx, SmolLM2 exported to ONNX at packaging time (cached)."""

    backend = "optimum-onnx"

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls, smollm2_hf: Path) -> str:
        return str(smollm2_hf)
