"""The conformance report: per-clause outcomes, the printed table and the versioned JSON format.

Internal: not part of the plugin SDK; the kit's public names are in :mod:`flavorkit.testing`.

JSON format ``flavorkit-conformance-report``, version 1 (stable: fields are only ever added; a
change that removes or redefines a field bumps ``version``)::

    {
      "format": "flavorkit-conformance-report",
      "version": 1,
      "flavorkit_version": "0.1.0",        # the kit that produced the report
      "spec_version": 3,                   # the hook spec it checked
      "created": "2026-01-31T12:00:00Z",   # UTC
      "ok": true,                          # no clause failed
      "summary": {"passed": 18, "failed": 0, "skipped": 5, "xfailed": 0},
      "backends": [                        # one per conformance class that ran
        {"suite": "TestOnnx", "name": "onnx-cpu", "distribution": "flavorkit", "version": "0.1.0",
         "object": "flavorkit_onnxgenai.plugin:cpu", "capabilities": ["batching", ...],
         "model": "/path/to/model"}
      ],
      "clauses": [                         # one per clause and backend, in run order
        {"backend": "onnx-cpu", "clause": "max_tokens", "outcome": "passed",
         "required": true, "capability": null, "without_capability": null, "suite": "TestOnnx",
         "message": "", "duration_s": 0.12, "test": "test_x.py::TestOnnx::test_max_tokens"}
      ]
    }

``capability`` names the capability a clause needs (it is skipped for backends that do not
declare it); ``without_capability`` (added with the guided-decoding clauses of spec version 3) the
one whose absence it checks (it is skipped for backends that declare it: ``guided_refused``, for
``guided_decoding``). ``required`` is true when neither gates the clause.

``outcome`` is one of ``passed``, ``failed``, ``skipped`` (a capability the backend does not
declare; ``message`` gives the reason) and ``xfailed`` (listed in ``expected_failures`` and still
failing; ``message`` gives the listed reason and the failure). A clause listed in
``expected_failures`` that passes is ``failed``: the entry must be removed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "OUTCOMES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "ClauseResult",
    "build_report",
    "format_table",
    "write_report",
]

REPORT_FORMAT = "flavorkit-conformance-report"
REPORT_VERSION = 1
Outcome = Literal["passed", "failed", "skipped", "xfailed"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "skipped", "xfailed")


@dataclass
class ClauseResult:
    """The outcome of one clause for one backend."""

    backend: str
    clause: str
    outcome: Outcome
    required: bool
    capability: str | None = None
    without_capability: str | None = None
    suite: str = ""
    message: str = ""
    duration_s: float = 0.0
    test: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of this result (see the module docstring)."""
        data = asdict(self)
        data["duration_s"] = round(self.duration_s, 3)
        return data


def summarize(results: Iterable[ClauseResult]) -> dict[str, int]:
    """Count results per outcome (every outcome is present, possibly 0)."""
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        counts[r.outcome] += 1
    return counts


def build_report(results: Sequence[ClauseResult], backends: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The JSON report for ``results`` (see the module docstring for the format)."""
    from flavorkit import __version__
    from flavorkit.backend.hookspec import SPEC_VERSION

    summary = summarize(results)
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "flavorkit_version": __version__,
        "spec_version": SPEC_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ok": summary["failed"] == 0,
        "summary": summary,
        "backends": [dict(b) for b in backends],
        "clauses": [r.as_dict() for r in results],
    }


def write_report(report: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``report`` as indented JSON, creating the parent folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _one_line(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def format_table(clauses: Sequence[Mapping[str, Any]], *, width: int = 100) -> str:
    """A plain-text table of clause, outcome and a one-line detail, then the totals line."""
    rows = [(str(c["clause"]), str(c["outcome"]), _one_line(str(c.get("message") or ""), width)) for c in clauses]
    headers = ("clause", "outcome", "detail")
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for c in clauses:
        counts[str(c["outcome"])] = counts.get(str(c["outcome"]), 0) + 1
    lines.append("")
    lines.append(", ".join(f"{counts[o]} {o}" for o in OUTCOMES))
    return "\n".join(line.rstrip() for line in lines)
