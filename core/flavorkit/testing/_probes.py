"""Checks that must run in a fresh interpreter: what an entry point imports, and loading a packaged model.

Each probe runs ``python -c <script>`` with the parent's ``sys.path`` (so throwaway distributions
and source checkouts the test session sees are seen too) and prints one JSON line prefixed with
:data:`MARKER`; anything else the child prints (warnings, progress bars) is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MARKER", "ProbeError", "child_env", "exit_status", "load_and_predict", "probe_entry_point"]

MARKER = "FLAVORKIT-PROBE "

_ENTRY_POINT_SCRIPT = r"""
import importlib, importlib.abc, json, sys, time, traceback

name, heavy = sys.argv[1], set(json.loads(sys.argv[2]))
# flavorkit itself (and its SDK) is imported before the clock starts: only the plugin's own cost counts.
for module in ("flavorkit", "flavorkit.backend.registry", "flavorkit.sdk"):
    try:
        importlib.import_module(module)
    except Exception:  # a missing SDK module is counted against the plugin, not hidden
        pass
heavy -= set(sys.modules)  # imported at startup (sitecustomize) or by flavorkit itself: not the plugin's doing
seen = {}

class _Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in heavy and top not in seen:
            frames = [
                f for f in traceback.extract_stack()[:-1]
                if "importlib" not in f.filename and not f.filename.startswith("<")
            ]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            seen[top] = where
        return None

sys.meta_path.insert(0, _Spy())
result = {"error": None, "object": None, "seconds": None}
try:
    import importlib.metadata as md
    import inspect
    from flavorkit.backend.registry import BACKEND_GROUP, Backend
    eps = [ep for ep in md.entry_points(group=BACKEND_GROUP) if ep.name == name]
    if not eps:
        raise LookupError(f"no entry point named {name!r} in group {BACKEND_GROUP!r}")
    result["object"] = eps[0].value
    start = time.perf_counter()
    obj = eps[0].load()
    backend = Backend(name, obj() if inspect.isclass(obj) else obj, object_path=eps[0].value)
    # What `flavorkit backends` calls to list a backend.
    backend.dependencies()
    backend.capabilities()
    backend.option_model()
    result["seconds"] = time.perf_counter() - start
except BaseException as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
result["heavy"] = seen
print(__MARKER__ + json.dumps(result), flush=True)
"""

_PREDICT_SCRIPT = r"""
import json, sys
result = {"error": None, "output": None}
try:
    import mlflow
    model = mlflow.pyfunc.load_model(sys.argv[1])
    result["output"] = model.predict(json.loads(sys.argv[2]))
except BaseException as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
print(__MARKER__ + json.dumps(result, default=str), flush=True)
"""


class ProbeError(RuntimeError):
    """A probe process crashed or printed no result."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child interpreter: this one's, with ``sys.path`` as ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.exists(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def _run(script: str, args: Sequence[str], timeout: float) -> dict[str, Any]:
    code = script.replace("__MARKER__", repr(MARKER))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"the child process did not finish within {timeout:.0f} s") from exc
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            result["returncode"] = proc.returncode
            result["stderr_tail"] = tail
            return result
    raise ProbeError(f"the child process exited with {proc.returncode} and printed no result:\n{tail}")


def exit_status(returncode: int) -> str:
    """A child's exit status as a shell reports it: ``134 (SIGABRT)`` for a process killed by signal 6."""
    if returncode >= 0:
        return str(returncode)
    import signal

    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"{128 - returncode} ({name})"


def probe_entry_point(name: str, heavy: Sequence[str], *, timeout: float = 120.0) -> dict[str, Any]:
    """Load backend ``name`` from its entry point in a fresh interpreter; report the heavy modules imported.

    Returns ``{"error": str | None, "object": str | None, "heavy": {module: "file:line"},
    "seconds": float | None, ...}``, where the location is the import statement that first pulled
    the module in, and ``seconds`` is the wall time from loading the entry point to listing the
    backend (flavorkit itself is imported before the clock starts).
    """
    return _run(_ENTRY_POINT_SCRIPT, [name, json.dumps(sorted(heavy))], timeout)


def load_and_predict(model_dir: str, request: Mapping[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """``mlflow.pyfunc.load_model(model_dir).predict(request)`` in a fresh interpreter.

    Returns ``{"error": str | None, "output": <predict's JSON-able result>, "returncode": int,
    "stderr_tail": str}``; ``returncode`` is the child's exit status (negative: killed by that signal).
    """
    return _run(_PREDICT_SCRIPT, [model_dir, json.dumps(dict(request))], timeout)
