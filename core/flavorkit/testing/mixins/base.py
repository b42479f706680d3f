"""The base of the conformance mixins: the suite's options, its fixtures and the clause gate.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pytest

from flavorkit.signatures import TASKS
from flavorkit.testing.clauses import CLAUSES, clause_of
from flavorkit.testing.harness import Harness

__all__ = ["ENTRY_POINT_BUDGET_S", "HEAVY_MODULES", "ConformanceBase"]

#: Top-level modules an entry point must not import: runtimes belong in ``load``, not at import.
HEAVY_MODULES: tuple[str, ...] = (
    "torch",
    "tensorflow",
    "jax",
    "jaxlib",
    "keras",
    "onnxruntime",
    "onnxruntime_genai",
    "transformers",
    "optimum",
    "accelerate",
    "vllm",
    "llama_cpp",
    "ctranslate2",
    "mlx",
    "tensorrt",
    "tensorrt_llm",
    "openvino",
    "paddle",
)

#: The default :attr:`ConformanceBase.entry_point_budget_s`: generous for a loaded two-core machine,
#: far below a runtime import (torch takes several seconds cold).
ENTRY_POINT_BUDGET_S = 2.0

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


class ConformanceBase:
    """What every conformance mixin shares: the suite's options, its fixtures and the clause gate.

    Subclass :class:`~flavorkit.testing.BackendConformance`, which combines every mixin; a mixin
    alone (say :class:`~flavorkit.testing.mixins.PackagingClauses`) runs only its area. Set
    :attr:`backend` and override the class-scoped ``model_source`` fixture; the other attributes
    are optional.
    """

    #: The backend id: the entry-point name in the ``flavorkit.backends`` group.
    backend: ClassVar[str] = ""
    #: Backend options used for packaging and loading (validated by the backend's option schema).
    options: ClassVar[Mapping[str, Any]] = {}
    #: Tasks whose signature the ``signature`` clause packages and predicts.
    tasks: ClassVar[Sequence[str]] = TASKS
    #: Known failures: clause name -> reason. Each runs as a strict xfail.
    expected_failures: ClassVar[Mapping[str, str]] = {}
    #: Modules the entry point must not import (``entry_point_light``).
    heavy_modules: ClassVar[Sequence[str]] = HEAVY_MODULES
    #: Seconds loading the entry point may take beyond importing flavorkit (``entry_point_light``).
    entry_point_budget_s: ClassVar[float] = ENTRY_POINT_BUDGET_S
    #: Package from a temporary copy of a local source and delete it, proving the model self-contained.
    isolate_source: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.expected_failures) - set(CLAUSES))
        if unknown:
            raise TypeError(
                f"{cls.__name__}.expected_failures names unknown clause(s) {', '.join(unknown)}; "
                f"known clauses: {', '.join(CLAUSES)}"
            )

    # -- fixtures -------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls) -> Any:
        """Override: a small model source the backend accepts (path, Hub id or object)."""
        raise NotImplementedError(
            f"{cls.__name__} must override the class-scoped `model_source` fixture with a small model source"
        )

    @pytest.fixture(scope="class")
    @classmethod
    def conformance(cls, model_source: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
        """The :class:`~flavorkit.testing.harness.Harness` shared by every clause of this class."""
        if not cls.backend:
            raise NotImplementedError(f"{cls.__name__} must set `backend` to the backend id")
        harness = Harness(
            cls.backend,
            model_source,
            tmp_path_factory.mktemp(f"conformance-{cls.backend}"),
            options=cls.options,
            isolate_source=cls.isolate_source,
        )
        yield harness
        harness.close()

    @pytest.fixture(autouse=True)
    def _flavorkit_clause_gate(self, request: pytest.FixtureRequest) -> None:
        """Apply ``expected_failures``; skip clauses whose capability the backend lacks (or, ``without``, declares)."""
        found = clause_of(request.function)
        if found is None:
            return
        reason = type(self).expected_failures.get(found.name)
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(reason=f"expected failure: {reason}", strict=True))
        if found.capability is not None:
            harness: Harness = request.getfixturevalue("conformance")
            if found.capability not in harness.capabilities():
                pytest.skip(f"backend {harness.backend_name!r} does not declare capability '{found.capability.value}'")
        if found.without is not None:
            harness = request.getfixturevalue("conformance")
            if found.without in harness.capabilities():
                pytest.skip(
                    f"backend {harness.backend_name!r} declares capability '{found.without.value}'; "
                    "this clause checks backends without it"
                )
