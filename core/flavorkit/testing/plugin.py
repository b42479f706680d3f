"""pytest plugin of the conformance kit: a clause table after the run and an optional JSON report.

Enable it explicitly; it is never loaded into unrelated pytest runs::

    pytest_plugins = ["flavorkit.testing.plugin"]     # in a conftest.py or test module
    # or on the command line:
    pytest -p flavorkit.testing.plugin --flavorkit-report report.json

The conformance classes themselves work without it (capabilities and ``expected_failures`` are
applied by :class:`~flavorkit.testing.BackendConformance`); the plugin adds the per-clause summary
and ``--flavorkit-report PATH`` (the format is in :mod:`flavorkit.testing.report`).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from flavorkit.testing.clauses import Clause, clause_of
from flavorkit.testing.harness import ClauseFailed, SetupFailed
from flavorkit.testing.report import ClauseResult, build_report, format_table, write_report

__all__ = ["ConformanceCollector"]

_XPASS = "[XPASS(strict)]"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--flavorkit-report``."""
    group = parser.getgroup("flavorkit", "flavorkit conformance kit")
    group.addoption(
        "--flavorkit-report",
        metavar="PATH",
        default=None,
        help="write the conformance results as JSON (format flavorkit-conformance-report) to PATH",
    )
    group.addoption(
        "--flavorkit-progress",
        metavar="PATH",
        default=None,
        help="append one JSON line per finished clause to PATH (done, total, clause, outcome, seconds)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the collector that records clause outcomes."""
    if not config.pluginmanager.has_plugin("flavorkit-conformance-collector"):
        config.pluginmanager.register(ConformanceCollector(config), "flavorkit-conformance-collector")


def _message(excinfo: pytest.ExceptionInfo[BaseException] | None) -> str:
    if excinfo is None:
        return ""
    exc = excinfo.value
    if isinstance(exc, (ClauseFailed, SetupFailed)):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    entries = [e for e in excinfo.traceback if "flavorkit/testing" not in str(e.path).replace("\\", "/")]
    if entries:
        text += f" (at {entries[-1].path}:{entries[-1].lineno + 1})"
    return text


class ConformanceCollector:
    """Records one :class:`ClauseResult` per conformance test and reports them at the end."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.results: dict[str, ClauseResult] = {}
        self.backends: dict[str, dict[str, Any]] = {}
        self.total = 0
        self.done = 0

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        """Turn each phase's report of a conformance test into the clause's outcome."""
        report = yield
        found: Clause | None = clause_of(getattr(item, "obj", None))
        cls = getattr(item, "cls", None)
        if found is None or cls is None:
            return report
        backend = str(getattr(cls, "backend", "") or cls.__name__)
        suite = cls.__name__
        result = self.results.get(item.nodeid)
        if result is None:
            result = ClauseResult(
                backend=backend,
                clause=found.name,
                outcome="passed",
                required=found.required,
                capability=found.capability.value if found.capability else None,
                without_capability=found.without.value if found.without else None,
                suite=suite,
                test=item.nodeid,
            )
            self.results[item.nodeid] = result
        result.duration_s += report.duration
        harness = getattr(item, "funcargs", {}).get("conformance")
        if harness is not None and report.when in ("setup", "call"):
            self.backends[suite] = {"suite": suite, **harness.summary()}
        self.backends.setdefault(suite, {"suite": suite, "name": backend})
        wasxfail = getattr(report, "wasxfail", None)
        if report.skipped and wasxfail is not None:
            result.outcome = "xfailed"
            failure = _message(call.excinfo)
            result.message = wasxfail + (f"; failed with: {failure}" if failure else "")
        elif report.skipped:
            result.outcome = "skipped"
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            result.message = reason.removeprefix("Skipped: ")
        elif report.failed and result.outcome != "failed":
            result.outcome = "failed"
            if call.excinfo is None and _XPASS in str(report.longrepr):
                listed = str(report.longrepr).replace(_XPASS, "").strip()
                result.message = f"the clause passed although expected_failures lists it ({listed}); remove the entry"
            else:
                prefix = {"setup": "error in setup: ", "teardown": "error in teardown: "}.get(report.when, "")
                result.message = prefix + _message(call.excinfo)
        return report

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Count the conformance tests, for the progress lines."""
        self.total = sum(1 for item in session.items if clause_of(getattr(item, "obj", None)) is not None)
        self.done = 0

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """Append the finished clause's line to ``--flavorkit-progress``, so a caller can show it live."""
        path = self.config.getoption("flavorkit_progress", default=None)
        result = self.results.get(nodeid)
        if not path or result is None:
            return
        self.done += 1
        line = {
            "done": self.done,
            "total": getattr(self, "total", 0),
            "clause": result.clause,
            "outcome": result.outcome,
            "seconds": round(result.duration_s, 2),
        }
        with open(path, "a", encoding="utf-8") as progress:
            progress.write(json.dumps(line) + "\n")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the JSON report when ``--flavorkit-report`` was given."""
        path = self.config.getoption("flavorkit_report", default=None)
        if path:
            write_report(self.report(), path)

    def report(self) -> dict[str, Any]:
        """The JSON report of everything recorded so far."""
        results = list(self.results.values())
        suites = dict.fromkeys(r.suite for r in results)
        return build_report(results, [self.backends.get(s, {"suite": s}) for s in suites])

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print one clause table per backend."""
        if not self.results:
            return
        report = self.report()
        for backend in report["backends"]:
            rows = [c for c in report["clauses"] if c["suite"] == backend["suite"]]
            terminalreporter.write_sep("=", f"flavorkit conformance: {backend.get('name')} ({backend['suite']})")
            terminalreporter.write_line(format_table(rows))
