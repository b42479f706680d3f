"""The conformance suite a backend author subclasses: one test per clause of the contract.

Internal: not part of the plugin SDK; the kit's public names are in :mod:`flavorkit.testing`.

Usage, in the plugin's own test suite::

    import pytest
    from flavorkit.testing import BackendConformance

    pytest_plugins = ["flavorkit.testing.plugin"]  # optional: clause table, --flavorkit-report


    class TestMyBackend(BackendConformance):
        backend = "my-backend"
        expected_failures = {"stop_strings": "issue #12: ..."}

        @pytest.fixture(scope="class")
        def model_source(self) -> str:
            return "tests/data/tiny-model"

Clauses whose capability the backend does not declare are skipped with the reason; the others
never skip. ``expected_failures`` turns the named clauses into strict xfails, so a fixed bug makes
the run fail until its entry is removed.
"""

from __future__ import annotations

from flavorkit.testing.clauses import CLAUSES
from flavorkit.testing.mixins import (
    BatchingClauses,
    ContractClauses,
    GenerationClauses,
    GuidedClauses,
    PackagingClauses,
    ProcessClauses,
    StreamingClauses,
)
from flavorkit.testing.mixins.base import ENTRY_POINT_BUDGET_S, HEAVY_MODULES

__all__ = ["ENTRY_POINT_BUDGET_S", "HEAVY_MODULES", "BackendConformance"]


class BackendConformance(
    ProcessClauses,
    PackagingClauses,
    ContractClauses,
    GenerationClauses,
    BatchingClauses,
    StreamingClauses,
    GuidedClauses,
):
    """Base class of a backend's conformance suite; subclass it as ``Test...`` in the plugin's tests.

    It combines the clauses of every area (:mod:`flavorkit.testing.mixins`). Set ``backend``
    and override the class-scoped ``model_source`` fixture; the other attributes are optional.
    """


# pytest runs the tests of a class in the order its own namespace lists them (inherited ones by
# area otherwise): list every clause here, in the order of CLAUSES, which the reports keep.
for _name in CLAUSES:
    setattr(BackendConformance, f"test_{_name}", getattr(BackendConformance, f"test_{_name}"))
del _name
