"""flavorkit's conformance kit for backend authors, and tiny models for tests.

Subclass :class:`BackendConformance` in a plugin's test suite (see ``docs/writing-a-backend.md``)
or run ``flavorkit check BACKEND --model SOURCE``. The clause list is :data:`CLAUSES`; the pytest
plugin (clause table, ``--flavorkit-report``) is :mod:`flavorkit.testing.plugin`, enabled
explicitly. :func:`get_backend` gives a test the registered backend (hooks behind the registry's checks),
and :mod:`flavorkit.testing.models` builds small real models. Attributes are imported on first use, so
importing this package does not need pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flavorkit.backend.registry import get_backend
    from flavorkit.testing.clauses import CLAUSES, Clause
    from flavorkit.testing.conformance import HEAVY_MODULES, BackendConformance
    from flavorkit.testing.harness import ClauseFailed, Generated, Harness
    from flavorkit.testing.report import REPORT_FORMAT, REPORT_VERSION

__all__ = [
    "CLAUSES",
    "HEAVY_MODULES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "BackendConformance",
    "Clause",
    "ClauseFailed",
    "Generated",
    "Harness",
    "get_backend",
]

_WHERE = {
    "CLAUSES": "flavorkit.testing.clauses",
    "Clause": "flavorkit.testing.clauses",
    "HEAVY_MODULES": "flavorkit.testing.conformance",
    "BackendConformance": "flavorkit.testing.conformance",
    "ClauseFailed": "flavorkit.testing.harness",
    "Generated": "flavorkit.testing.harness",
    "Harness": "flavorkit.testing.harness",
    "REPORT_FORMAT": "flavorkit.testing.report",
    "REPORT_VERSION": "flavorkit.testing.report",
    "get_backend": "flavorkit.backend.registry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'flavorkit.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
