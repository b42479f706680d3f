"""Entry points and processes: what loading the plugin costs, its hooks, a fresh interpreter, the GPU.

Internal: not part of the plugin SDK; a backend's tests subclass :class:`~flavorkit.testing.BackendConformance`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from flavorkit.testing._probes import exit_status, load_and_predict, probe_entry_point
from flavorkit.testing.clauses import clause
from flavorkit.testing.harness import PROBE_TOKENS, ClauseFailed, Harness, check, content
from flavorkit.testing.mixins.base import ConformanceBase

__all__ = ["ProcessClauses"]


class ProcessClauses(ConformanceBase):
    """Entry points and processes: what loading the plugin costs, its hooks, a fresh interpreter, the GPU."""

    @clause("entry_point_light")
    def test_entry_point_light(self, conformance: Harness) -> None:
        """Loading the entry point (what `flavorkit backends` does) imports no heavy runtime."""
        result = probe_entry_point(conformance.backend_name, type(self).heavy_modules)
        check(
            result["error"] is None,
            f"loading entry point {conformance.backend_name!r} ({result['object']}) in a fresh process failed: "
            f"{result['error']}",
        )
        heavy: dict[str, str] = result["heavy"]
        check(
            not heavy,
            f"loading entry point {conformance.backend_name!r} ({result['object']}) imported "
            + ", ".join(f"{m} (from {where})" for m, where in sorted(heavy.items()))
            + "; import runtimes inside the load hook, not at module import",
        )
        budget = type(self).entry_point_budget_s
        seconds = result["seconds"]
        tries = 1
        if seconds is not None and seconds > budget:  # a busy machine gets a second chance
            again = probe_entry_point(conformance.backend_name, type(self).heavy_modules)
            tries += 1
            if again["seconds"] is not None:
                seconds = min(seconds, again["seconds"])
        check(
            seconds is None or seconds <= budget,
            f"loading entry point {conformance.backend_name!r} ({result['object']}) took {seconds:.1f} s beyond "
            f"importing flavorkit itself (the least of {tries} fresh interpreters), over the {budget:.1f} s budget: "
            "every `flavorkit backends` and every packaging or loading loads all installed entry points, so each "
            "pays this delay; keep the module light and do slow work (imports, downloads, scans) in load()",
        )

    @clause("hook_spec")
    def test_hook_spec(self, conformance: Harness) -> None:
        """The plugin object registers cleanly and implements every required hook itself."""
        import importlib.metadata as md
        import inspect

        import pluggy
        from pydantic import BaseModel

        from flavorkit.backend.hookspec import PROJECT, REQUIRED_HOOKS, WrapperBackend
        from flavorkit.backend.registry import BACKEND_GROUP

        name = conformance.backend_name
        eps = [ep for ep in md.entry_points(group=BACKEND_GROUP) if ep.name == name]
        check(eps, f"no entry point named {name!r} in the {BACKEND_GROUP!r} group")
        obj = eps[0].load()
        plugin = obj() if inspect.isclass(obj) else obj
        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(WrapperBackend)
        try:
            pm.register(plugin, name=name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ClauseFailed(f"{eps[0].value} violates the hook spec: {exc}") from None
        hooks = [h for h in dir(WrapperBackend) if not h.startswith("_")]
        unmarked = [
            h for h in hooks if callable(getattr(plugin, h, None)) and pm.parse_hookimpl_opts(plugin, h) is None
        ]
        check(
            not unmarked,
            f"{eps[0].value} defines {', '.join(unmarked)} without @flavorkit.hookimpl, so flavorkit never calls it",
        )
        missing = [h for h in REQUIRED_HOOKS if not getattr(pm.hook, h).get_hookimpls()]
        check(not missing, f"{eps[0].value} does not implement required hook(s): {', '.join(missing)}")
        backend = conformance.backend()
        deps = backend.dependencies()
        from packaging.requirements import InvalidRequirement, Requirement

        for dep in deps:
            try:
                Requirement(dep)
            except InvalidRequirement as exc:
                raise ClauseFailed(f"dependencies() returned {dep!r}, not a PEP 508 requirement: {exc}") from None
        backend.capabilities()  # raises PluginSpecError on an unknown capability
        schema = backend.option_model()
        check(
            schema is None or (inspect.isclass(schema) and issubclass(schema, BaseModel)),
            f"option_schema() must return a pydantic model class or None, got {schema!r}",
        )

    @clause("fresh_process")
    def test_fresh_process(self, conformance: Harness) -> None:
        """A relocated copy of the packaged model loads and gives the same answer in a new interpreter."""
        probe = conformance.probe()
        request = conformance.chat(probe.messages, max_tokens=PROBE_TOKENS)
        here = content(conformance.predict(request))
        moved = conformance.workdir / "relocated" / "model"
        shutil.copytree(conformance.packaged(), moved)
        result = load_and_predict(str(moved), request)
        check(result["error"] is None, f"loading and predicting in a fresh process failed: {result['error']}")
        out = result["output"]
        check(isinstance(out, list) and len(out) == 1, f"predict in a fresh process returned {out!r:.200}")
        there = content(out[0])
        check(there == here, f"a fresh process answers {there!r}, this one {here!r}")
        code = result["returncode"]
        check(
            code == 0,
            f"the process exited with status {exit_status(code)} after loading the model and predicting {there!r}: "
            "it crashed at interpreter exit (a runtime destructor, an atexit handler or a thread left running), "
            f"which fails every script that uses the model; release runtimes in unload(). Its stderr ends: "
            f"{result['stderr_tail'][-600:]!r}",
        )

    @clause("gpu")
    def test_gpu(self, conformance: Harness) -> None:
        """A backend that declares 'gpu' is checked on a machine with a visible GPU."""
        check(
            _gpu_visible(),
            f"backend {conformance.backend_name!r} declares 'gpu' but no GPU is visible here "
            "(no nvidia-smi device, /dev/dxg or /dev/kfd); run the kit on a GPU machine",
        )


def _gpu_visible() -> bool:
    if any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/dxg", "/dev/kfd")):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout
