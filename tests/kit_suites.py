"""How the kit's tests build a first-party backend's suite: one base class, not a ``model_source`` fixture per class.

``test_conformance.py`` (the tiny model) and ``test_kit_smollm2.py`` (SmolLM2-135M-Instruct) both
run :class:`~flavorkit.testing.BackendConformance` on models that session fixtures build
(``tests/conftest.py``, ``tests/kit/conftest.py``). A suite names those fixtures in ``sources``
instead of overriding ``model_source`` itself, and the optimum-onnx suite skips where that
backend cannot run (``stacks.needs_optimum``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from flavorkit.testing import BackendConformance
from stacks import needs_optimum

__all__ = ["FirstPartySuite"]


class FirstPartySuite(BackendConformance):
    """The whole kit for one first-party backend on a model that session fixtures build: set backend, sources."""

    #: The session fixtures the model source needs, the source itself last; the ones before it build
    #: what packaging then finds in the conversion cache (``smollm2_ort`` before ``smollm2_hf``'s int4 build).
    sources: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "sources" in cls.__dict__:
            # Requested by name, so pytest builds them before the class and tests/conftest.py sees
            # them among each test's fixtures (it marks the SmolLM2 ones ``needs_model``).
            pytest.mark.usefixtures(*cls.sources)(cls)
        if cls.backend == "optimum-onnx":
            needs_optimum(cls)

    @pytest.fixture(scope="class")
    @classmethod
    def model_source(cls, request: pytest.FixtureRequest) -> str:
        """The path the last of ``sources`` built."""
        if not cls.sources:
            raise NotImplementedError(f"{cls.__name__} must name its model's fixtures in `sources`")
        return str(request.getfixturevalue(cls.sources[-1]))
